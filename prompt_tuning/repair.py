"""Repair a backdoored prompt-tuned model with the trigger a detector reconstructed (CLIP-Inspector's
use of its trigger), against three controls, and measure each.

The defender holds a small labelled clean set (MNIST's defender share, `repair.shots` per class). Each
arm fine-tunes a copy of the prompt learner (CoCoOp-style, the model's own recipe at `repair.lr`,
`repair.epochs`) on those images plus copies perturbed by the arm's pattern that keep their true labels:
- `trigger`: the flagged class's reconstructed trigger (the repair);
- `clean`: no perturbed copies (clean-only fine-tuning);
- `noise`: uniform noise in [−eps, eps], eps the trigger's ℓ∞ size (drawn afresh per batch);
- `other`: the reconstructed trigger of another class (the next class after the flagged one).
Attack success is then measured with the attacker's own trigger (ground truth: evaluation's side,
never a detector's) on the test share, with clean accuracy.

`python launch.py job=repair repair.model=MODEL_DIR repair.detection=DETECTION_DIR` (a detector's
record directory holding result.json and triggers.safetensors); also run in a sweep's cells, after
the detectors, for the detectors in `repair.detectors` that flag a backdoored model.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from safetensors.torch import load_file

from core.records import read_record
from core.store import read_manifest, write_json_atomic
from prompt_tuning.job import load_attack
from prompt_tuning.poisons import Attack
from prompt_tuning.train import accuracy, attack_success
from vision.classifier import PromptedCLIP, Towers, learner_config, load_classifier
from vision.images import Images, few_shot, mnist
from vision.tuning import TuneSettings, tune

ARMS = ("trigger", "clean", "noise", "other")
REPORT = "repair.json"


class PerturbedCopies:
    """tune()'s hooks for a repair arm: every batch with its copies perturbed by `pattern`, true labels kept."""

    def __init__(self, pattern, g: torch.Generator):
        self.pattern, self.g = pattern, g

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, self.pattern(x, self.g)]), torch.cat([y, y])

    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        pass


def fine_tune(model: PromptedCLIP, data: Images, pattern, epochs: int, batch_size: int, lr: float, seed: int) -> PromptedCLIP:
    """A copy of `model` whose learner is fine-tuned (CoOp's recipe, vision/tuning.py) on `data` plus
    copies perturbed by `pattern` (a function of the batch; None: clean only), all with their true labels."""
    repaired = PromptedCLIP(model.towers, copy.deepcopy(model.learner))
    repaired.learner.requires_grad_(True).train()
    repaired._fixed = None
    g = torch.Generator().manual_seed(seed)
    hooks = PerturbedCopies(pattern, g) if pattern is not None else None
    tune(repaired, data, TuneSettings(epochs=epochs, batch_size=batch_size, lr=lr), g, hooks)
    return repaired.freeze()


def additive(delta: torch.Tensor):
    return lambda x, g: (x + delta).clamp(0, 1)


def noise(eps: float):
    return lambda x, g: (x + (torch.rand(1, *x.shape[1:], generator=g) * 2 - 1) * eps).clamp(0, 1)


def repair(model: PromptedCLIP, triggers: torch.Tensor, flagged: int, attack: Attack, rcfg: DictConfig, seed: int) -> dict:
    """Every arm's clean accuracy and attack success after fine-tuning, and the model's before."""
    t0 = time.perf_counter()
    defender = few_shot(mnist("defender"), int(rcfg.shots), seed)
    test = mnist("test")
    delta = triggers[flagged][None]
    other = triggers[(flagged + 1) % len(triggers)][None]
    patterns = {"trigger": additive(delta), "clean": None, "noise": noise(float(delta.abs().max())),
                "other": additive(other)}
    result = {"before": {"accuracy": accuracy(model, test), "attack_success": attack_success(model, test, attack)},
              "flagged": flagged, "target_class": attack.target, "defender_images": len(defender)}
    for arm in rcfg.arms:
        if arm not in patterns:
            raise ValueError(f"unknown repair arm '{arm}'; choose from {', '.join(ARMS)}")
        fixed = fine_tune(model, defender, patterns[arm], int(rcfg.epochs), int(rcfg.batch_size), float(rcfg.lr), seed)
        result[arm] = {"accuracy": accuracy(fixed, test), "attack_success": attack_success(fixed, test, attack)}
    result["repair_s"] = round(time.perf_counter() - t0, 2)
    return result


def repair_detection(model_dir: Path, model: PromptedCLIP, detection: dict, detection_dir: Path, rcfg: DictConfig,
                     seed: int) -> dict | None:
    """The repair test of one detection of a stored backdoor: None when the model is clean, the
    detector did not flag it, or it reconstructed no trigger."""
    manifest = read_manifest(model_dir)
    files = detection.get("files") or {}
    if manifest.get("kind") != "backdoor" or detection.get("verdict") != "backdoor" or "triggers" not in files:
        return None
    triggers = load_file(str(Path(detection_dir) / files["triggers"]))["triggers"]
    return repair(model, triggers, int(detection["predicted_target"]), load_attack(model_dir, manifest), rcfg, seed)


def run(cfg: DictConfig) -> dict:
    """job=repair: one model, one detection; writes repair.json into the run directory."""
    rcfg = cfg.repair
    if not rcfg.get("model") or not rcfg.get("detection"):
        raise ValueError("job=repair needs repair.model=MODEL_DIR (a prompt-tuned model) and repair.detection=DIR "
                         "(a detector's record directory with result.json and triggers.safetensors)")
    model_dir, detection_dir = Path(rcfg.model), Path(rcfg.detection)
    towers = Towers(learner_config(model_dir)["towers"], cfg.device)
    model = load_classifier(model_dir, towers)
    detection = read_record(detection_dir / "result.json")
    result = repair_detection(model_dir, model, detection, detection_dir, rcfg, int(cfg.seed))
    if result is None:
        raise ValueError(f"nothing to repair: {model_dir} is not a backdoored model flagged by the detection in "
                         f"{detection_dir} with a reconstructed trigger")
    out = Path(HydraConfig.get().runtime.output_dir) / REPORT
    write_json_atomic(out, result)
    print(format_result(result))
    print(f"report: {out}")
    return result


def format_result(r: dict) -> str:
    rows = [("before", r["before"])] + [(a, r[a]) for a in ARMS if a in r]
    lines = [f"{'arm':<8} {'accuracy':>9} {'attack success':>15}"]
    lines += [f"{name:<8} {v['accuracy']:>9.3f} {v['attack_success']:>15.3f}" for name, v in rows]
    return "\n".join(lines)
