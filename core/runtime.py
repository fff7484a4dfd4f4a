"""One job in this process, as launch.py composed it: torch's thread count and the config's precision
set, then the job's function `run(cfg) -> dict`, named "module:function" (launch.py's JOBS)."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from core.precision import computing_in
from core.threads import set_threads


def run_job(cfg: DictConfig, target: str) -> dict | None:
    module, func = target.split(":")
    set_threads(cfg)
    with computing_in(cfg):  # fp32, tf32 or bf16 autocast (the config's `precision`)
        return getattr(importlib.import_module(module), func)(cfg)
