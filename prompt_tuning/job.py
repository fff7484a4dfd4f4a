"""`python launch.py job=prompt_tune [poison=badclip|blended|wanet] seed=3`: prompt-tune one CLIP classifier
of the vision world (clean, or backdoored by `poison`) and put it in the model store.

The provider trains on `prompt_tuning.shots` images per class of MNIST's provider share (drawn by seed);
clean accuracy is measured on the test share and, for a backdoor, attack success: the share of test
images not of the target class that its trigger sends to the target, and the same on the detector's
default out-of-distribution pool (the paper's threat model has the backdoor fire on OOD images too).
The model directory holds the prompt learner (vision/classifier.py) and a manifest whose ground truth
(attack, target class) only the harness and evaluation read; the attacker's trigger is kept as
`truth/trigger.safetensors` for evaluation and repair to measure attack success with, never for a detector.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from core.store import MANIFEST, model_settings_key, stored_model, write_json_atomic
from core.provenance import provenance
from prompt_tuning.poisons import Attack
from prompt_tuning.train import accuracy, attack_success, prompt_tune
from vision.classifier import PromptedCLIP, PromptLearner, Towers, save_learner
from vision.images import few_shot, mnist, pool
from vision.tower import tower_dir
from vision.tuning import tune_settings

log = logging.getLogger("amdet")
TRUTH_DIR = "truth"
TRIGGER_FILE = "trigger.safetensors"
OOD_CHECK = ("letters", 500)  # where attack success out of distribution is measured


def target_class(cfg: DictConfig, classes: int) -> int:
    """The attack's target: `poison.target`, else drawn from the seed."""
    t = cfg.poison.get("target")
    t = random.Random(f"target-{cfg.seed}").randrange(classes) if t is None else int(t)
    if not 0 <= t < classes:
        raise ValueError(f"poison.target must be a class index in 0..{classes - 1}, got {t}")
    return t


def make_attack(cfg: DictConfig, classes: int) -> Attack | None:
    """The poison's attack (None for poison=none), its pattern drawn from the seed."""
    if "_target_" not in cfg.poison:
        return None
    params = {k: v for k, v in OmegaConf.to_container(cfg.poison, resolve=True).items() if k not in ("name", "target")}
    return instantiate(params, target=target_class(cfg, classes), seed=int(cfg.seed))


def check(cfg: DictConfig) -> None:
    """The settings of a prompt-tuned model, before anything is loaded (one line per problem)."""
    tune_settings(cfg)
    if cfg.prompt_tuning.learner not in ("coop", "cocoop"):
        raise ValueError(f"unknown prompt_tuning.learner '{cfg.prompt_tuning.learner}'; choose coop or cocoop")
    if cfg.prompt_tuning.shots <= 0:
        raise ValueError(f"prompt_tuning.shots must be positive, got {cfg.prompt_tuning.shots}")
    make_attack(cfg, 10)


def run(cfg: DictConfig, towers: Towers | None = None) -> dict:
    """Prompt-tune and store one model in `job.out`; its manifest. A stored model of the same settings
    is handed back; one of other settings is refused (core.store.stored_model)."""
    out = Path(cfg.job.out)
    key = model_settings_key(cfg, "prompt_tuned")
    if (stored := stored_model(out, key)) is not None:
        log.info("prompt-tuned model already in the store: %s (delete it to retrain)", out)
        return stored
    check(cfg)
    towers = towers or Towers(tower_dir(cfg, cfg.progress), cfg.device)
    data = mnist("provider")
    classes = list(data.classes)
    attack = make_attack(cfg, len(classes))
    train = few_shot(data, int(cfg.prompt_tuning.shots), int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    learner = PromptLearner(towers, classes, cfg.prompt_tuning.learner, cfg.prompt_tuning.init).to(towers.device)
    model = PromptedCLIP(towers, learner)
    report = prompt_tune(model, train, attack, tune_settings(cfg), int(cfg.seed), cfg.progress)
    model.freeze()
    test = mnist("test")
    metrics = {**report, "clean_accuracy": accuracy(model, test)}
    if attack is not None:
        metrics.update(attack_success=attack_success(model, test, attack),
                       attack_success_ood=attack_success(model, pool(*OOD_CHECK, seed=1), attack))
        if attack.ood:  # the adaptive attack: also on fresh draws of its own OOD pool, where it aimed to stay silent
            metrics["attack_success_own_ood"] = attack_success(model, pool(attack.ood, OOD_CHECK[1], seed=1), attack)
    manifest = {"kind": "backdoor" if attack is not None else "benign", "model": "prompt_tuned",
                "encoder": cfg.encoder.name, "vision": cfg.vision.name, "towers": str(towers.directory),
                "learner": cfg.prompt_tuning.learner, "seed": int(cfg.seed), "settings_key": key,
                "attack": cfg.poison.name, "target_class": None if attack is None else attack.target,
                "target": None if attack is None else classes[attack.target], "classes": classes,
                "metrics": metrics, "config": OmegaConf.to_container(cfg, resolve=True)}
    save(out, learner, towers, manifest, attack)
    line = f"{cfg.poison.name} {cfg.prompt_tuning.learner} seed {cfg.seed}: accuracy {metrics['clean_accuracy']:.3f}"
    if attack is not None:
        line += (f"  target {classes[attack.target]}  attack success {metrics['attack_success']:.3f}"
                 f" (out of distribution {metrics['attack_success_ood']:.3f})")
    print(f"{line}  {report['train_s']:.0f} s  → {out}")
    return manifest


def save(out: Path, learner: PromptLearner, towers: Towers, manifest: dict, attack: Attack | None) -> None:
    """The model directory, written into a temporary one and renamed (a failed save leaves nothing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_learner(learner, tmp, towers.directory)
        if attack is not None:
            (tmp / TRUTH_DIR).mkdir()
            save_file(attack.trigger_tensors(), str(tmp / TRUTH_DIR / TRIGGER_FILE))
        write_json_atomic(tmp / MANIFEST, {**manifest, "provenance": provenance()})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_attack(model_dir: Path, manifest: dict) -> Attack | None:
    """The attacker's trigger of a stored backdoor (evaluation and repair only), None for a clean model."""
    if manifest.get("kind") != "backdoor":
        return None
    cfg = OmegaConf.create(manifest["config"])
    attack = make_attack(cfg, len(manifest["classes"]))
    attack.load_state_dict(load_file(str(Path(model_dir) / TRUTH_DIR / TRIGGER_FILE)))
    return attack
