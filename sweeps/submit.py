"""Run a sweep's cells through submitit — on Slurm (`hydra/launcher=slurm`) or as local processes
(`hydra/launcher=submitit_local`) — with the same launcher settings a Hydra multirun would use.

- N cells per task (`experiment.cells_per_task`): one scan does not fill a GPU. They run one after
  the other, sharing the task's anchor, or `experiment.task_workers` at once, each in a process of its
  own on the task's GPU (with CUDA MPS running, their kernels overlap; without it the GPU time-slices
  between the processes: README, "Slurm");
- job arrays split below the cluster's MaxArraySize (submitit does not split them);
- a task that is preempted or reaches its time limit requeues itself (submitit `checkpoint()`),
  and the requeued task skips the cells it already finished;
- a failing cell is recorded in its result.json and the task goes on with the next one; a task
  that dies (cancelled, killed) leaves its unfinished cells to `python -m sweeps resume`.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterator
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from core.errors import first_line
from sweeps.cell import attempt, record_dead
from sweeps.grid import Cell
from sweeps.local import in_workers

# keys of hydra-submitit-launcher's BaseQueueConf: submitit takes them unprefixed, the rest as slurm_*
BASE_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
             "stderr_to_stdout"}
DEFAULT_MAX_ARRAY = 1001


def is_submitit(launcher: DictConfig) -> bool:
    return "submitit" in str(launcher.get("_target_", ""))


class CellGroup:
    """The cells of one task: in order, loading each encoder's anchor once, or `workers` at once in
    processes of their own; a requeue resumes with the unfinished ones."""

    def __init__(self, cells: list[Cell], workers: int = 1):
        self.cells, self.workers = cells, workers

    def __call__(self) -> list[dict]:
        if self.workers > 1:  # threads: the config's, else the task's cores shared out
            return list(in_workers(self.cells, self.workers, self.cells[0].config().get("threads"), False, "task"))
        anchors: dict = {}  # the task's: one frozen base per encoder, shared by its cells
        return [attempt(cell, anchors=anchors) for cell in self.cells]  # a failing cell is recorded; the task goes on

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(CellGroup(self.cells, self.workers))  # finished cells are skipped


def max_array_size() -> int:
    """The cluster's MaxArraySize (the largest array is one less), or a safe default."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.strip().startswith("MaxArraySize"):
                return int(line.split("=")[1])
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return DEFAULT_MAX_ARRAY


def executor_for(launcher: DictConfig, sweep_dir: Path) -> submitit.AutoExecutor:
    """A submitit executor configured exactly as hydra-submitit-launcher configures its own."""
    params = OmegaConf.to_container(launcher, resolve=False)
    cluster = "slurm" if "Slurm" in params.pop("_target_", "") else "local"
    params.pop("submitit_folder", None)  # resolved against Hydra's runtime, which is not set here
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")  # Slurm job ids restart on a fresh cluster
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=str(sweep_dir / ".submitit" / stamp / "%j"), cluster=cluster, **init)
    params["name"] = "amdet-cells"
    executor.update_parameters(**{k if k in BASE_KEYS else f"{cluster}_{k}": v for k, v in params.items()
                                  if v is not None and not (cluster == "local" and k not in BASE_KEYS)})
    return executor


def submit(cells: list[Cell], launcher: DictConfig, sweep_dir: Path, per_task: int,
           array_limit: int | None = None, task_workers: int = 1) -> list[tuple[submitit.Job, list[Cell]]]:
    """Submit the cells, `per_task` to a task (`task_workers` of them at once), in arrays of at most
    `array_limit` tasks (default: as large as the cluster's MaxArraySize allows)."""
    executor = executor_for(launcher, sweep_dir)
    groups = [cells[i : i + per_task] for i in range(0, len(cells), per_task)]
    limit = array_limit or (max_array_size() - 1 if executor.cluster == "slurm" else len(groups) or 1)
    submitted = []
    for start in range(0, len(groups), limit):
        chunk = groups[start : start + limit]
        with executor.batch():
            jobs = [executor.submit(CellGroup(g, task_workers)) for g in chunk]
        submitted += list(zip(jobs, chunk))
    return submitted


def check_packing(cfg: DictConfig) -> None:
    """experiment.cells_per_task and experiment.array_tasks: how a sweep is packed into tasks and arrays."""
    for key, what in (("cells_per_task", "cells"), ("array_tasks", "tasks"), ("task_workers", "processes")):
        value = cfg.experiment.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"experiment.{key} must be a positive number of {what}, got {value}")


def remote(todo: list[Cell], cfg: DictConfig, sweep_dir: Path, desc: str) -> Iterator[dict]:
    """Submit the cells, wait for their tasks, and yield each cell's status."""
    per_task = int(cfg.experiment.get("cells_per_task") or 1)
    workers = min(per_task, int(cfg.experiment.get("task_workers") or 1))
    submitted = submit(todo, cfg.hydra.launcher, sweep_dir, per_task, cfg.experiment.get("array_tasks"), workers) if todo else []
    arrays = len({job.job_id.split("_")[0] for job, _ in submitted})
    print(f"{desc}: {len(todo)} cells in {len(submitted)} tasks submitted ({per_task} per task, {workers} at once, "
          f"{arrays} arrays)")
    for job, group in submitted:
        try:
            yield from job.result()
        except Exception as exc:  # noqa: BLE001 — cancelled, killed, node failure: its cells stay missing
            reason = f"job {job.job_id} {job.state}: {first_line(exc)}"
            yield from ({"cell": c.id, "status": "error", "reason": reason} for c in group if record_dead(c, reason))
