"""Run a sweep's cells in several processes on this machine (`experiment.workers`).

The tiny encoders cannot keep many cores busy from one process: a 77-token forward of a 96-wide
model scales about 1.5× from one thread to two. On 2 cores the embedded study's 20 cells took 519 s
in two workers of one thread each, against 610 s one after the other with two threads. Each worker
process loads its own anchor once and takes the next unfinished cell when it is free, so long and
short cells balance. A cell's result depends on its config and on the thread count it computed
with (provenance records it), not on which worker ran it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm.auto import tqdm

from sweeps.claim import Claimed
from sweeps.grid import Cell

log = logging.getLogger("amdet")
_anchors: dict = {}  # per worker process: one frozen base per (encoder, device)
_threads = None  # per worker process: the one thread count it computes with


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(cfg) -> int:
    """`experiment.workers`: a positive number, or `auto`: on CPU one per usable core and per 2 GB of
    memory (an embedded cell peaks at 1.2 GB), on a GPU one."""
    workers = cfg.experiment.get("workers")
    if workers is None:
        return 1
    if workers == "auto":
        if str(cfg.device).startswith("cuda"):
            return 1
        memory_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        return max(1, min(usable_cores(), int(memory_gb // 2)))
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"experiment.workers must be a positive number of processes or 'auto', got {workers}")
    return workers


def _start_worker(threads: int) -> None:
    # set once, before anything runs: a worker set to 1 thread and then to 2 gave a cell another score
    # (in the 5th decimal) than a process that was at 2 from the start
    global _threads
    import torch

    _threads = threads
    torch.set_num_threads(threads)


def _run_one(cell: Cell) -> dict:
    from omegaconf import open_dict

    from core.errors import one_line
    from sweeps.cell import compute_claimed
    from sweeps.run import anchor_for

    try:
        cfg = cell.config()
        with open_dict(cfg):
            cfg.threads = _threads  # run_cell sets the same count again (not SLURM_CPUS_PER_TASK's)
        compute_claimed(cell.directory, cfg, cell.id, anchor=anchor_for(cfg, _anchors))
        return {"cell": cell.id, "status": "ok"}
    except Claimed:
        return {"cell": cell.id, "status": "claimed"}
    except Exception as exc:  # noqa: BLE001 — recorded in the cell's result.json; the sweep goes on
        return {"cell": cell.id, "status": "error", "reason": one_line(exc)}


def build_bases(cells: list[Cell], progress: bool) -> None:
    """Build (or find) every tiny base the cells need here, before the workers start: with all of
    this process's threads, as a sweep in one process builds it, rather than in one worker at
    cores / N threads while the others wait on its lock."""
    from omegaconf import OmegaConf

    from core.loading import base_source

    encoders = {}
    for cell in {c.settings: c for c in cells}.values():
        encoder = cell.config().encoder
        encoders.setdefault(OmegaConf.to_yaml(encoder), encoder)
    for encoder in encoders.values():
        base_source(encoder, progress)


def run_cells_parallel(cells: list[Cell], workers: int, threads: int | None, progress: bool, desc: str) -> dict:
    """As `sweeps.run.run_cells`, with `workers` processes of `threads` threads each (default: cores //
    workers). A worker that dies (killed, out of memory) leaves error results for the cells it had
    not finished."""
    from sweeps.cell import finished
    from sweeps.submit import record_dead

    todo = [c for c in cells if not finished(c.directory)]
    failures, claimed, computed = [], [], 0
    if todo:
        build_bases(todo, progress)
        workers = min(workers, len(todo))
        threads = threads or max(1, usable_cores() // workers)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_one, cell): cell for cell in todo}
            bar = tqdm(as_completed(futures), total=len(todo), desc=f"{desc} ({workers} workers)", unit="cell",
                       disable=not progress)
            for future in bar:
                cell = futures[future]
                try:
                    status = future.result()
                except Exception as exc:  # noqa: BLE001 — the worker process died mid-cell
                    reason = f"worker process died: {type(exc).__name__}: {exc}"
                    record_dead(cell, reason)
                    status = {"cell": cell.id, "status": "error", "reason": reason}
                if status["status"] == "ok":
                    computed += 1
                elif status["status"] == "claimed":
                    claimed.append(status["cell"])
                else:
                    failures.append({"cell": status["cell"], "reason": status["reason"]})
                    log.error("cell %s failed: %s", cell.id, status["reason"])
    return {"cells": len(cells), "skipped": len(cells) - len(todo), "computed": computed, "failed": failures,
            "claimed": claimed}
