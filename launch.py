"""amdet-bench entry point: `python launch.py job=<name> [overrides]` (Hydra).

Each job is one function `run(cfg) -> dict` in the package that owns its concept; this file only
composes the config and dispatches. It imports nothing that loads torch: the job, and core.runtime
which sets threads and precision for it, are named by module path and imported once the config has
composed, so that a bad override or an unknown job fails in a second.
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

sweeps.naming.register()  # the configs' resolvers (the `cell_dir` that names cell directories, ...)

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
RUNTIME = "core.runtime"  # run_job: threads and precision, then the job

log = logging.getLogger("amdet")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    name = cfg.job.name
    if name not in JOBS:
        log.error("unknown job '%s'; choose one of: %s (job=<name>)", name, ", ".join(JOBS))
        sys.exit(2)
    try:
        return importlib.import_module(RUNTIME).run_job(cfg, JOBS[name])
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        log.error("%s", exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records this job as failed (with the message) and the sweep goes on
        sys.exit(2)


if __name__ == "__main__":
    main()
