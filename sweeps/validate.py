"""Check a cell's whole config before anything runs: a bad value fails in one line naming its key.
A cell's settings only; how a sweep runs (workers, Slurm packing) is checked by its executors."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from amdet.job import scan_config, thresholds_defaults
from attacks.job import hparams as attack_hparams
from attacks.objective import similarity_fn
from attacks.targets import check_paradigm
from attacks.triggers import check_trigger_config
from benign_ft.job import hparams as benign_hparams
from core import detectors
from core.precision import precision_of
from core.snapshot import check_every_s
from prompt_tuning.job import check as prompt_tuning_check
from sweeps import kinds



def validate(cfg: DictConfig) -> None:
    """Raise ValueError for the first bad setting of a cell (attack, benign run, scan)."""
    kind = kinds.of(cfg)  # registered, with a _target_
    for name in detectors.listed(cfg):  # each one registered, with a _target_, and able to see the kind's models
        if detectors.view_for(cfg, name, kind.model, tuple(kind.shows)) is None:
            raise ValueError(f"detector '{name}' cannot scan the {kind.model} models cell.kind={cfg.cell.kind} makes "
                             f"(its models: {list(detectors.models(cfg, name))}; those can be shown as "
                             f"{list(kind.shows)}); list only detectors for them in cell.detectors")
    if kind.model == "prompt_tuned":
        prompt_tuning_check(cfg)
    a = cfg.attack
    check_paradigm(a.paradigm)
    similarity_fn(a.similarity)
    check_trigger_config(a.triggers.level, a.triggers.length, a.triggers.count, a.triggers.position)
    if a.adaptive_mu < 0:
        raise ValueError(f"attack.adaptive_mu must be ≥ 0, got {a.adaptive_mu}")
    attack_hparams(cfg)
    benign_hparams(cfg)
    if cfg.benign.steps <= 0:
        raise ValueError(f"benign.steps must be positive, got {cfg.benign.steps}")
    if cfg.scan.prompts < 10:
        raise ValueError(f"scan.prompts must be at least 10, got {cfg.scan.prompts}")
    scan_config(cfg.scan, thresholds_defaults(cfg.scan))
    for key in ("prompts", "seed"):
        if OmegaConf.select(cfg, f"scan.{key}") is None:
            raise ValueError(f"scan.{key} must be set")
    check_every_s(cfg.snapshots.every_s)
    if not isinstance(cfg.experiment.get("allow_mixed_compute", False), bool):
        raise ValueError(f"experiment.allow_mixed_compute must be true or false, got {cfg.experiment.allow_mixed_compute}")
    precision_of(cfg)  # a known device and precision, and tf32 only on CUDA
