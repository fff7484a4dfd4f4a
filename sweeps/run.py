"""Run an experiment: its calibration cells, the profile fitted on them, the scored cells, then the
report; the cells go through one executor (this process, `experiment.workers` local processes, or
submitit) and one loop that counts what each phase did. Finished cells are
skipped, so a rerun (or `python -m sweeps resume SWEEP_DIR`) only computes what is missing; a failing
cell is recorded and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from amdet.calibrate import fit_profile, write_profile
from amdet.job import DETECTOR as AMDET
from analyze.report import report as make_report
from core import detectors
from core.provenance import compute_mismatch
from core.threads import positive_threads
from core.store import write_json_atomic
from sweeps.cell import finished, finished_record, record_path
from sweeps.claim import wait_for
from sweeps.grid import Cell, compose_config, plan
from sweeps.local import in_process, in_workers, worker_count
from sweeps.submit import check_packing, is_submitit, remote
from sweeps.tracking import log_sweep
from sweeps.validate import validate

log = logging.getLogger("amdet")
SWEEP_FILE = "sweep.json"  # what a sweep directory was launched with: enough to resume it


class MixedCompute(ValueError):
    """A finished cell computed on another device type or in another precision than the current config."""


def check_all(cells: list[Cell], configs: dict | None = None) -> dict:
    """Compose and validate every cell before the first one starts (a bad override fails at once), and
    refuse a sweep whose finished cells were made with other settings (StaleResult names the first) or
    computed on another device type or precision (MixedCompute, unless experiment.allow_mixed_compute).
    Returns the composed configs by cell settings; pass them back to re-check without composing again."""
    configs = {} if configs is None else configs
    for cell in cells:
        key = cell.settings
        if key not in configs:
            configs[key] = compose_config(list(cell.overrides))
            validate(configs[key])
            worker_count(configs[key])  # how the sweep runs: local workers, threads, Slurm packing
            positive_threads(configs[key].get("threads"))
            check_packing(configs[key])
        seed = [o.split("=", 1)[1] for o in cell.overrides if o.startswith("seed=")]
        cfg = configs[key].copy()
        if seed:
            cfg.seed = int(seed[-1])
        for name in cell.detectors:
            done = finished_record(cell.directory, name, cfg)
            # one table's cells computed on a CPU and a GPU (or in fp32 and bf16) differ beyond float noise
            mismatch = compute_mismatch(done.get("compute"), cfg) if done else None
            if mismatch and not cfg.experiment.get("allow_mixed_compute"):
                what, was, now = mismatch
                raise MixedCompute(
                    f"{record_path(cell.directory, name)} was computed with {what} {was!r} but the current config "
                    f"computes with {now!r}; set {what.split()[0]}={was} to continue the sweep as it was computed, move "
                    "the cell away to recompute it, or set experiment.allow_mixed_compute=true to mix them"
                )
    return configs


def record_sweep(sweep_dir: Path, overrides: list[str], scored: list[Cell], calibration: list[Cell]) -> None:
    write_json_atomic(sweep_dir / SWEEP_FILE, {"overrides": list(overrides), "cells": len(scored),
                                               "calibration_cells": len(calibration)})


def executor(cfg, sweep_dir: Path, progress: bool, desc: str) -> Callable[[list[Cell]], Iterable[dict]]:
    """How the cells run: through submitit when the launcher is submitit_local or slurm, else here,
    in this process or in `experiment.workers` local processes. Each yields one status per cell."""
    if is_submitit(cfg.hydra.launcher):
        return lambda todo: remote(todo, cfg, sweep_dir, desc)
    workers = worker_count(cfg)
    if workers > 1:
        return lambda todo: in_workers(todo, workers, cfg.get("threads"), progress, desc)
    return lambda todo: in_process(todo, progress, desc)


def run_phase(cells: list[Cell], cfg, sweep_dir: Path, progress: bool, desc: str) -> dict:
    """Run the phase's unfinished cells with the chosen executor; the summary counts the cells computed
    here, those already done, those another launcher computed, and the failures (cell id, reason).
    Cells that another launcher is computing are waited for, so a phase ends with all its cells done
    or failed; those it left unfinished are run here."""
    execute = executor(cfg, sweep_dir, progress, desc)
    todo = [c for c in cells if not finished(c.directory, names=c.detectors)]
    summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "computed": 0, "elsewhere": 0, "failed": []}
    while todo:
        claimed = []
        for status in execute(todo):
            if status["status"] == "ok":
                summary["computed"] += 1
            elif status["status"] == "claimed":
                claimed.append(status["cell"])
            else:
                summary["failed"].append({"cell": status["cell"], "reason": status["reason"]})
                log.error("cell %s failed: %s", status["cell"], status["reason"])
        if not claimed:
            break
        busy = [c for c in todo if c.id in set(claimed)]
        print(f"{desc}: {len(busy)} cells are being computed by another launcher; waiting for them")
        wait_for([c.directory for c in busy])
        todo = [c for c in busy if not finished(c.directory, names=c.detectors)]
        summary["elsewhere"] += len(busy) - len(todo)
    return summary


def fit_profiles(cfg, calibration: list[Cell]) -> list[Path]:
    """Fit one threshold profile per encoder from the calibration cells' observed scans."""
    results = [r for r in (finished_record(c.directory, AMDET) for c in calibration) if r]
    by_encoder: dict[tuple, list[dict]] = {}
    for r in results:
        by_encoder.setdefault((r["model"]["family"], r["model"]["hidden_size"]), []).append(r)
    written = []
    for group in by_encoder.values():
        profile = fit_profile(group, cfg)
        written.append(write_profile(Path(cfg.paths.profiles_dir) / f"{profile['profile']}.yaml", profile))
    return written


def run_experiment(overrides: list[str], progress: bool = True, report: bool = True) -> dict:
    cfg, scored, calibration = plan(overrides)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    configs = check_all(calibration + scored)
    record_sweep(sweep_dir, overrides, scored, calibration)
    t0 = time.perf_counter()
    summary = {"sweep_dir": str(sweep_dir)}
    if calibration and AMDET in detectors.names(cfg):  # the profiles are AMDET's thresholds
        summary["calibration"] = run_phase(calibration, cfg, sweep_dir, progress, "calibration cells")
        summary["profiles"] = [str(p) for p in fit_profiles(cfg, calibration)]
        check_all(scored, configs)  # a refit that changed a profile makes the cells scored with the old one stale
    summary["scored"] = run_phase(scored, cfg, sweep_dir, progress, "cells")
    summary["time_s"] = round(time.perf_counter() - t0, 1)
    if report:
        summary["report"] = make_report(sweep_dir, sweep_dir / "report")
        log_sweep(cfg, sweep_dir, summary["report"], sorted((sweep_dir / "report").rglob("*.png")))
    write_json_atomic(sweep_dir / "summary.json", {k: v for k, v in summary.items() if k != "report"})
    return summary


def resume(sweep_dir: Path, progress: bool = True) -> dict:
    """Rerun a sweep from its directory alone: only the cells without a finished result are computed."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a sweep directory written by `python -m sweeps run`")
    overrides = json.loads(path.read_text())["overrides"]
    return run_experiment(overrides, progress)

