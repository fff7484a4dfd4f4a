"""Executors on this machine: the cells one after the other in this process, or in
`experiment.workers` processes. Each yields one status per cell (sweeps.cell.attempt).

The tiny encoders cannot keep many cores busy from one process: a 77-token forward of a 96-wide
model scales about 1.5× from one thread to two. On 2 cores the embedded study's 20 cells took 519 s
in two workers of one thread each, against 610 s one after the other with two threads. Each worker
process loads its own anchor once and takes the next unfinished cell when it is free, so long and
short cells balance. A cell's result depends on its config and on the thread count it computed
with (provenance records it), not on which worker ran it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from omegaconf import OmegaConf, open_dict
from tqdm.auto import tqdm

from sweeps.cell import attempt, record_dead
from sweeps import kinds
from sweeps.grid import Cell

_anchors: dict = {}  # per process: one frozen base per (encoder, device)
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


def in_process(todo: list[Cell], progress: bool, desc: str) -> Iterator[dict]:
    """The cells one after the other here, sharing one anchor per encoder."""
    bar = tqdm(todo, desc=desc, disable=not progress, unit="cell")
    for cell in bar:
        bar.set_postfix_str(cell.id[-60:])
        yield attempt(cell, anchors=_anchors)


def _start_worker(threads: int) -> None:
    # set once, before anything runs: a worker set to 1 thread and then to 2 gave a cell another score
    # (in the 5th decimal) than a process that was at 2 from the start
    global _threads
    _threads = threads
    torch.set_num_threads(threads)


def _run_one(cell: Cell) -> dict:
    cfg = cell.config()
    with open_dict(cfg):
        cfg.threads = _threads  # the cell sets the same count again (not SLURM_CPUS_PER_TASK's)
    return attempt(cell, cfg, _anchors)


def build_bases(cells: list[Cell], progress: bool) -> None:
    """Build (or find) every tiny base and tower the cells' references need here, before the workers
    start: with all of this process's threads, as a sweep in one process builds them, rather than in
    one worker at cores / N threads while the others wait on its lock."""
    built = set()
    for cell in {c.settings: c for c in cells}.values():
        cfg = cell.config()
        kind = kinds.of(cfg)
        key = (type(kind).__name__, OmegaConf.to_yaml(cfg.encoder), OmegaConf.to_yaml(cfg.vision))
        if key not in built:
            built.add(key)
            kind.anchor_source(cfg)  # builds what is not cached yet


def in_workers(todo: list[Cell], workers: int, threads: int | None, progress: bool, desc: str) -> Iterator[dict]:
    """The cells in `workers` processes of `threads` threads each (default: cores // workers). A worker
    that dies (killed, out of memory) leaves error results for the cells it had not finished."""
    if not todo:
        return
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
                yield future.result()
            except Exception as exc:  # noqa: BLE001 — the worker process died mid-cell
                reason = f"worker process died: {type(exc).__name__}: {exc}"
                record_dead(cell, reason)
                yield {"cell": cell.id, "status": "error", "reason": reason}
