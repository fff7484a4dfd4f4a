"""How many CPU threads torch computes with: `threads` in the config, else the CPUs Slurm gave the
task, else torch's default (every core). Without a limit, two tasks sharing a node oversubscribe
it; and since reductions split over threads add up in another order, results agree bit for bit only
at the same thread count (provenance records it)."""

from __future__ import annotations

import os

import torch


def set_threads(cfg) -> int:
    threads = cfg.get("threads")
    if threads is None:
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
    if threads is not None:
        if int(threads) < 1:  # 0 too: it is not "every core"
            raise ValueError(f"threads must be a positive number of CPU threads (or null), got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
