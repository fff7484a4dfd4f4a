"""Run an experiment's cells on this machine, in this process or in `experiment.workers` processes:
calibration cells, the profile fitted on them, the scored cells, then the report. Finished cells are
skipped, so a rerun (or `python -m sweeps resume SWEEP_DIR`) only computes what is missing; a failing
cell is recorded and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from core.errors import one_line
from core.provenance import compute_mismatch
from core.store import write_json_atomic
from sweeps.cell import compute_claimed, finished
from sweeps.claim import Claimed, wait_for
from sweeps.grid import Cell, compose_config, plan
from sweeps.validate import validate

log = logging.getLogger("amdet")
SWEEP_FILE = "sweep.json"  # what a sweep directory was launched with: enough to resume it


class MixedCompute(ValueError):
    """A finished cell computed on another device type or in another precision than the current config."""


def check_all(cells: list[Cell]) -> None:
    """Compose and validate every cell before the first one starts (a bad override fails at once), and
    refuse a sweep whose finished cells were made with other settings (StaleResult names the first) or
    computed on another device type or precision (MixedCompute, unless experiment.allow_mixed_compute)."""
    configs = {}
    for cell in cells:
        key = cell.settings
        if key not in configs:
            configs[key] = compose_config(list(cell.overrides))
            validate(configs[key])
        seed = [o.split("=", 1)[1] for o in cell.overrides if o.startswith("seed=")]
        cfg = configs[key].copy()
        if seed:
            cfg.seed = int(seed[-1])
        done = finished(cell.directory, cfg)
        # one table's cells computed on a CPU and a GPU (or in fp32 and bf16) differ beyond float noise
        mismatch = compute_mismatch(done.get("compute"), cfg) if done else None
        if mismatch and not cfg.experiment.get("allow_mixed_compute"):
            what, was, now = mismatch
            raise MixedCompute(
                f"{cell.directory / 'result.json'} was computed with {what} {was!r} but the current config computes "
                f"with {now!r}; set {what.split()[0]}={was} to continue the sweep as it was computed, move the cell "
                "away to recompute it, or set experiment.allow_mixed_compute=true to mix them"
            )


def record_sweep(sweep_dir: Path, overrides: list[str], scored: list[Cell], calibration: list[Cell]) -> None:
    write_json_atomic(sweep_dir / SWEEP_FILE, {"overrides": list(overrides), "cells": len(scored),
                                               "calibration_cells": len(calibration)})


def run_cells(cells: list[Cell], progress: bool, desc: str) -> dict:
    """Run each cell not yet done; returns counts, the failures (cell id, reason) and the cells another
    live process holds the claim of."""
    anchors, failures, claimed, computed = {}, [], [], 0
    todo = [c for c in cells if not finished(c.directory)]
    bar = tqdm(todo, desc=desc, disable=not progress, unit="cell")
    for cell in bar:
        bar.set_postfix_str(cell.id[-60:])
        cfg = cell.config()
        try:
            compute_claimed(cell.directory, cfg, cell.id, anchor=anchor_for(cfg, anchors))
            computed += 1
        except Claimed:
            claimed.append(cell.id)
        except Exception as exc:  # noqa: BLE001 — recorded in the cell's result.json; the sweep goes on
            failures.append({"cell": cell.id, "reason": one_line(exc)})
            log.error("cell %s failed: %s", cell.id, failures[-1]["reason"])
    return {"cells": len(cells), "skipped": len(cells) - len(todo), "computed": computed, "failed": failures,
            "claimed": claimed}


def anchor_for(cfg, anchors: dict):
    """The frozen base of the cell's encoder, loaded once into `anchors` for all its cells."""
    key = (cfg.encoder.name, cfg.device)
    if key not in anchors:
        from core.loading import base_source, load_encoder

        anchors[key] = load_encoder(base_source(cfg.encoder, cfg.progress), cfg.device)
    return anchors[key]


def run_phase(cells: list[Cell], cfg, sweep_dir: Path, progress: bool, desc: str) -> dict:
    """Here, in this process or in local worker processes; or through submitit when the launcher is
    submitit_local or slurm. Cells that another launcher is computing are waited for (a phase ends
    with all its cells done or failed); those it left unfinished are run here."""
    from sweeps.parallel import run_cells_parallel, worker_count
    from sweeps.submit import is_submitit, run_remote

    def execute(todo: list[Cell]) -> dict:
        if is_submitit(cfg.hydra.launcher):
            return run_remote(todo, cfg, sweep_dir, desc)
        workers = worker_count(cfg)
        if workers > 1:
            return run_cells_parallel(todo, workers, cfg.get("threads"), progress, desc)
        return run_cells(todo, progress, desc)

    summary = {**execute(cells), "elsewhere": 0}
    while summary["claimed"]:
        busy = [c for c in cells if c.id in set(summary["claimed"])]
        print(f"{desc}: {len(busy)} cells are being computed by another launcher; waiting for them")
        wait_for([c.directory for c in busy])
        again = [c for c in busy if not finished(c.directory)]
        summary["elsewhere"] += len(busy) - len(again)
        more = execute(again) if again else {"computed": 0, "failed": [], "claimed": []}
        summary.update(computed=summary["computed"] + more["computed"], failed=summary["failed"] + more["failed"],
                       claimed=more["claimed"])
    del summary["claimed"]
    return summary


def fit_profiles(cfg, calibration: list[Cell]) -> list[Path]:
    """Fit one threshold profile per encoder from the calibration cells' observed scans."""
    from amdet.calibrate import fit_profile, write_profile

    results = [r for r in (finished(c.directory) for c in calibration) if r]
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
    check_all(calibration + scored)
    record_sweep(sweep_dir, overrides, scored, calibration)
    t0 = time.perf_counter()
    summary = {"sweep_dir": str(sweep_dir)}
    if calibration:
        summary["calibration"] = run_phase(calibration, cfg, sweep_dir, progress, "calibration cells")
        summary["profiles"] = [str(p) for p in fit_profiles(cfg, calibration)]
    summary["scored"] = run_phase(scored, cfg, sweep_dir, progress, "cells")
    summary["time_s"] = round(time.perf_counter() - t0, 1)
    if report:
        from analyze.report import report as make_report

        from sweeps.tracking import log_sweep

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

