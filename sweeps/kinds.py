"""Model kinds: what a cell makes, chosen by `cell.kind` from `cell.kinds` (conf/cell/default.yaml),
where each kind names its class by `_target_`. A kind has one interface:

    model                                   what it makes, for detectors' `models` lists: text_encoder | prompt_tuned
    shows                                   the kinds of model its models can be shown as, to detectors of other threat models
    settings                                the config groups its models (and so its records) depend on
    anchor_source(cfg) -> str               where the clean reference loads from (the base encoder, the frozen towers)
    load_anchor(source, cfg)                that reference, loaded once per process and shared by its cells
    make(cfg, out, anchor) -> Path          make the model (or find it in the store); its directory
    load(model_dir, cfg, anchor)            the model as its detectors receive it (context.model)
    coordinates(cfg) -> dict                the kind's own coordinates of the cell (a trigger's, an attack's)
    view(cfg, as_model, model_dir, source, model, anchor)   what a detector of `as_model` models receives

Views let each threat model's detectors look at the other's models: a text encoder is shown to an
image-side detector as the zero-shot classifier it makes with the vision world's image tower, a
prompt-tuned classifier to a text-encoder detector as its (frozen, untouched) text tower.

Built in: `backdoor` (an attack of `attack`) and `benign` (a fine-tune of `benign`) text encoders, and
`prompt_tuned` (a CoOp / CoCoOp classifier of the vision world, clean or backdoored by `poison`). A new
kind is a class and one line in `cell.kinds`, not an `if` in the cell.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from attacks.job import run as attack
from attacks.targets import PARADIGMS
from attacks.triggers import MAX_LENGTH
from benign_ft.job import checkpoint_dirs, run as benign
from core.bases import base_source
from core.loading import load_encoder
from core.provenance import config_hash
from core.store import model_settings_key
from prompt_tuning.job import run as prompt_tune
from vision.classifier import Towers, load_classifier, zero_shot_classifier
from vision.tower import tower_dir

RUNS_DIR = "benign_runs"  # beside a sweep's cells: the benign fine-tuning runs their checkpoints come from


def of(cfg: DictConfig):
    """The kind `cell.kind` names, instantiated from `cell.kinds`."""
    registered = cfg.cell.get("kinds") or {}
    if cfg.cell.kind not in registered:
        raise ValueError(f"unknown cell.kind '{cfg.cell.kind}'; choose one of {', '.join(registered)} "
                         "(or register one in cell.kinds with a _target_)")
    return instantiate(registered[cfg.cell.kind])


def drop_stale_weights(model_dir: Path, weights: str = "model.safetensors") -> None:
    if model_dir.exists() and not (model_dir / weights).exists():
        shutil.rmtree(model_dir)  # weights dropped by an earlier attempt: made again


class TextEncoderKind:
    """A text encoder made from the base of `encoder`, scanned against that base."""

    model = "text_encoder"
    shows = ("text_encoder", "prompt_tuned")
    settings = ("encoder", "training", "prompts", "pools", "attack", "benign", "cell", "seed")

    def anchor_source(self, cfg: DictConfig) -> str:
        return base_source(cfg.encoder, cfg.progress)

    def load_anchor(self, source: str, cfg: DictConfig):
        return load_encoder(source, cfg.device)

    def load(self, model_dir: Path, cfg: DictConfig, anchor):
        return load_encoder(model_dir, cfg.device)

    def view(self, cfg: DictConfig, as_model: str, model_dir: Path, source: str, model, anchor):
        """Itself to a text-encoder detector; to an image-side one, the zero-shot classifier ("a photo of a
        {class}.") of the vision world's towers (built against this cell's base) with this text tower."""
        if as_model == "text_encoder":
            return model_dir, source, model, anchor
        towers = Towers(tower_dir(cfg, cfg.progress), cfg.device)
        towers.text = model
        return model_dir, str(towers.directory), zero_shot_classifier(towers), towers


class Backdoor(TextEncoderKind):
    """A backdoored encoder, trained by the attack in `attack` into <out>/model."""

    def make(self, cfg: DictConfig, out: Path, anchor) -> Path:
        model_dir = out / "model"
        drop_stale_weights(model_dir)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.job.out = str(model_dir)
        attack(cfg, anchor=anchor)
        return model_dir

    def coordinates(self, cfg: DictConfig) -> dict:
        a = cfg.attack
        return {"paradigm": a.paradigm, "trigger_level": a.triggers.level, "trigger_length": int(a.triggers.length),
                "trigger_count": int(a.triggers.count), "similarity": a.similarity, "adaptive_mu": float(a.adaptive_mu)}


class Benign(TextEncoderKind):
    """A benign fine-tune, as the paper makes them: a checkpoint of a run shared by the sweep's benign
    cells of one seed (<sweep>/benign_runs/<run>/step*, benign.mode=checkpoints), or with
    benign.mode=independent a run of its own in <out>/model. It fills a (paradigm, trigger length,
    seed) slot of the grid: a negative of that row."""

    def make(self, cfg: DictConfig, out: Path, anchor) -> Path:
        cfg = cfg.copy()
        if cfg.benign.mode == "checkpoints":
            with open_dict(cfg):
                cfg.job.out = str(out.parent / RUNS_DIR / run_name(cfg))
            step = checkpoint_step(cfg)
            model_dir = checkpoint_dirs(cfg, {step})[step]
            with FileLock(f"{cfg.job.out}.lock"):  # one job trains a run at a time; the others wait and reuse it
                drop_stale_weights(model_dir)
                benign(cfg, anchor=anchor, steps={step})
            return model_dir
        model_dir = out / "model"
        drop_stale_weights(model_dir)
        with open_dict(cfg):
            cfg.job.out = str(model_dir)
            cfg.seed = independent_seed(cfg)  # its own run, distinct for every grid slot
        benign(cfg, anchor=anchor)
        return model_dir

    def coordinates(self, cfg: DictConfig) -> dict:
        return {"paradigm": cfg.attack.paradigm, "trigger_level": None, "trigger_length": None, "trigger_count": None,
                "similarity": None, "adaptive_mu": None}


class PromptTuned:
    """A prompt-tuned CLIP classifier of the vision world (`vision`, `prompt_tuning`), clean for
    poison=none, else backdoored by the poison's attack; trained into <out>/model and scanned against the
    frozen two-tower checkpoint it applies to."""

    model = "prompt_tuned"
    shows = ("prompt_tuned", "text_encoder")
    settings = ("encoder", "vision", "prompt_tuning", "poison", "cell", "seed")

    def anchor_source(self, cfg: DictConfig) -> str:
        return str(tower_dir(cfg, cfg.progress))

    def load_anchor(self, source: str, cfg: DictConfig) -> Towers:
        return Towers(source, cfg.device)

    def make(self, cfg: DictConfig, out: Path, anchor: Towers) -> Path:
        model_dir = out / "model"
        drop_stale_weights(model_dir, weights="learner.safetensors")
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.job.out = str(model_dir)
        prompt_tune(cfg, towers=anchor)
        return model_dir

    def load(self, model_dir: Path, cfg: DictConfig, anchor: Towers):
        return load_classifier(model_dir, anchor)

    def view(self, cfg: DictConfig, as_model: str, model_dir: Path, source: str, model, anchor: Towers):
        """Itself to an image-side detector; to a text-encoder detector, its text tower (the frozen
        towers' text half, untouched by prompt tuning) against the base of `encoder`."""
        if as_model == "prompt_tuned":
            return model_dir, source, model, anchor
        base = base_source(cfg.encoder, cfg.progress)
        return Path(source), base, anchor.text, load_encoder(base, cfg.device)

    def coordinates(self, cfg: DictConfig) -> dict:
        return {"paradigm": "prompt_tuning", "attack": cfg.poison.name, "learner": cfg.prompt_tuning.learner,
                "trigger_level": None, "trigger_length": None, "trigger_count": None, "similarity": None,
                "adaptive_mu": None}


def independent_seed(cfg: DictConfig) -> int:
    """An independent benign cell's fine-tuning seed, distinct for every grid slot (paradigm, trigger
    length, seed) it fills, so that a grid's benign models are all different."""
    slot = {"paradigm": cfg.attack.paradigm, "length": cfg.attack.triggers.length, "seed": cfg.seed}
    return int(config_hash(slot, 8), 16) % 2**31


def checkpoint_step(cfg: DictConfig) -> int:
    """The step of the shared run whose checkpoint fills a benign cell's grid slot: slot k (paradigm-major,
    then trigger length) takes checkpoint k + 1, so each (paradigm, length) of one seed gets its own
    checkpoint and a grid asks a run for its checkpoints in increasing order."""
    slot = PARADIGMS.index(cfg.attack.paradigm) * MAX_LENGTH + int(cfg.attack.triggers.length) - 1
    return (slot + 1) * int(cfg.benign.checkpoint_every)


def run_name(cfg: DictConfig) -> str:
    """The shared run's directory name: the encoder and the settings key of the run."""
    return f"{cfg.encoder.name}-seed{cfg.seed}-{model_settings_key(cfg, 'benign')[:10]}"

