"""Run a sweep's cells through submitit — on Slurm (`hydra/launcher=slurm`) or as local processes
(`hydra/launcher=submitit_local`) — with the same launcher settings a Hydra multirun would use.

- N cells per task (`experiment.cells_per_task`): one scan does not fill a GPU;
- job arrays split below the cluster's MaxArraySize (submitit does not split them);
- a task that is preempted or reaches its time limit requeues itself (submitit `checkpoint()`),
  and the requeued task skips the cells it already finished;
- a failing cell is recorded in its result.json and the task goes on with the next one; a task
  that dies (cancelled, killed) leaves its unfinished cells to `python -m sweeps resume`.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from core.errors import first_line, one_line
from sweeps.claim import Claimed
from sweeps.grid import Cell

# keys of hydra-submitit-launcher's BaseQueueConf: submitit takes them unprefixed, the rest as slurm_*
BASE_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
             "stderr_to_stdout"}
DEFAULT_MAX_ARRAY = 1001


def is_submitit(launcher: DictConfig) -> bool:
    return "submitit" in str(launcher.get("_target_", ""))


class CellGroup:
    """The cells of one task, run in order; a requeue resumes at the first unfinished one."""

    def __init__(self, cells: list[Cell]):
        self.cells = cells

    def __call__(self) -> list[dict]:
        from sweeps.cell import compute_claimed

        statuses = []
        for cell in self.cells:
            try:
                result = compute_claimed(cell.directory, cell.config(), cell.id)
                statuses.append({"cell": cell.id, "status": "ok", "verdict": result.get("verdict")})
            except Claimed:  # another launcher's process computes it
                statuses.append({"cell": cell.id, "status": "claimed"})
            except Exception as exc:  # noqa: BLE001 — recorded in the cell's result.json; the task goes on
                statuses.append({"cell": cell.id, "status": "error", "reason": one_line(exc)})
        return statuses

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(CellGroup(self.cells))  # finished cells are skipped


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
           array_limit: int | None = None) -> list[tuple[submitit.Job, list[Cell]]]:
    """Submit the cells, `per_task` to a task, in arrays of at most `array_limit` tasks (default: as
    large as the cluster's MaxArraySize allows)."""
    executor = executor_for(launcher, sweep_dir)
    groups = [cells[i : i + per_task] for i in range(0, len(cells), per_task)]
    limit = array_limit or (max_array_size() - 1 if executor.cluster == "slurm" else len(groups) or 1)
    submitted = []
    for start in range(0, len(groups), limit):
        chunk = groups[start : start + limit]
        with executor.batch():
            jobs = [executor.submit(CellGroup(g)) for g in chunk]
        submitted += list(zip(jobs, chunk))
    return submitted


def run_remote(cells: list[Cell], cfg: DictConfig, sweep_dir: Path, desc: str) -> dict:
    """Submit the unfinished cells, wait for them, and count as run_cells does."""
    from sweeps.cell import finished

    todo = [c for c in cells if not finished(c.directory)]
    per_task = int(cfg.experiment.get("cells_per_task") or 1)
    failures, claimed, computed = [], [], 0
    limit = cfg.experiment.get("array_tasks")
    submitted = submit(todo, cfg.hydra.launcher, sweep_dir, per_task, limit) if todo else []
    arrays = len({job.job_id.split("_")[0] for job, _ in submitted})
    print(f"{desc}: {len(todo)} cells in {len(submitted)} tasks submitted ({per_task} per task, {arrays} arrays)")
    for job, group in submitted:
        try:
            statuses = job.result()
        except Exception as exc:  # noqa: BLE001 — cancelled, killed, node failure: its cells stay missing
            reason = f"job {job.job_id} {job.state}: {first_line(exc)}"
            statuses = [{"cell": c.id, "status": "error", "reason": reason} for c in group if record_dead(c, reason)]
        for s in statuses:
            if s["status"] == "ok":
                computed += 1
            elif s["status"] == "claimed":
                claimed.append(s["cell"])
            else:
                failures.append({"cell": s["cell"], "reason": s["reason"]})
    return {"cells": len(cells), "skipped": len(cells) - len(todo), "computed": computed, "failed": failures,
            "claimed": claimed}


def record_dead(cell: Cell, reason: str) -> bool:
    """An error result for a cell whose task died before finishing it (cancelled, killed at its time
    limit, node failure), so that the results store and the report list it; resume redoes it. A
    finished result is never touched (returns False)."""
    from amdet.outputs import write_result
    from sweeps.cell import cell_info, finished

    if finished(cell.directory):
        return False
    cfg = cell.config()
    write_result(cell.directory, {"status": "error", "phase": "job", "reason": reason, "experiment": cfg.experiment.name,
                                  "cell": cell_info(cfg, cell.id), "config": OmegaConf.to_container(cfg, resolve=True)})
    return True
