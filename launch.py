"""amdet-bench entry point: `python launch.py job=<name> [overrides]` (Hydra).

Each job is one function `run(cfg) -> dict` in the package that owns its concept; this file only
composes the config and dispatches.
"""

from __future__ import annotations

import importlib
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import sweeps.naming
from core.precision import computing_in
from core.threads import set_threads

sweeps.naming.register()  # the `cell_dir` resolver that names cell directories in the configs

JOBS = {
    "bases": "core.jobs:build_bases",
    "attack": "attacks.job:run",
    "prompt_tune": "prompt_tuning.job:run",
    "repair": "prompt_tuning.repair:run",
    "benign": "benign_ft.job:run",
    "scan": "evaluation.job:run",  # AMDET's scan, then its evaluation against the ground truth
    "calibrate": "amdet.calibrate:run",
    "cell": "sweeps.cell:run",
    "study": "sweeps.study:run",
}

log = logging.getLogger("amdet")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    name = cfg.job.name
    if name not in JOBS:
        log.error("unknown job '%s'; choose one of: %s (job=<name>)", name, ", ".join(JOBS))
        sys.exit(2)
    module, func = JOBS[name].split(":")
    try:
        set_threads(cfg)
        with computing_in(cfg):  # fp32, tf32 or bf16 autocast (the config's `precision`)
            return getattr(importlib.import_module(module), func)(cfg)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        log.error("%s", exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records this job as failed (with the message) and the sweep goes on
        sys.exit(2)


if __name__ == "__main__":
    main()
