"""Sweeps on a real Slurm cluster (the single-node one of `.ci/slurm/up.sh`, which CI brings up):

- a tiny sweep (8 scored + 4 calibration cells) through `hydra/launcher=slurm` gives exactly the
  local launcher's verdicts and scores;
- in it, a cell that raises and a cell whose task is `scancel`led are reported as failed (the first
  with its traceback in the results store), and `python -m sweeps resume` then computes exactly
  those two, no finished cell twice;
- a cell whose task hits its time limit requeues and resumes from its snapshot (step > 0).

Run with `pytest -m slurm` on a machine with a cluster; CI sets AMDET_REQUIRE_SLURM=1 so that a
missing cluster fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from sweeps.grid import plan
from sweeps.run import run_experiment
from tests.test_sweeps import MICRO_STUDY


def cluster_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return False


if not cluster_up() and os.environ.get("AMDET_REQUIRE_SLURM") == "1":
    raise RuntimeError("AMDET_REQUIRE_SLURM=1 but no Slurm cluster answers `sinfo`; start one with .ci/slurm/up.sh")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not cluster_up(), reason="no Slurm cluster (.ci/slurm/up.sh)")]

ROOT = Path(__file__).resolve().parents[1]
# 2 kinds × trigger lengths 1, 2 × seeds 0, 1 = 8 scored cells; calibration: 2 kinds × seeds 100, 101
GRID = [o for o in MICRO_STUDY if not o.startswith(("attack.triggers.length=", "seed="))] + [
    "attack.triggers.length=1,2", "seed=0,1"]
# a Slurm task computes with its CPUs' threads (1 here); bit-identical scores need the same count locally
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
         "experiment.array_tasks=5"]  # the 8 scored cells go out as two arrays, 5 + 3 tasks


def sweeps_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def squeue() -> list[dict]:
    out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%F|%K|%T"], capture_output=True, text=True).stdout
    return [dict(zip(("job", "task", "state"), line.split("|"))) for line in out.split()]


def cancel_a_running_task(proc: subprocess.Popen, tasks: int, spare: int, timeout: float = 300) -> str:
    """scancel one task of the first array with `tasks` tasks, as soon as one of them runs, but not
    task `spare` (the raising cell's: cancelled, it would fail for the wrong reason, as seen in CI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        rows = squeue()
        arrays = {r["job"] for r in rows if r["task"] == str(tasks - 1)}
        running = [r for r in rows if r["job"] in arrays and r["state"] == "RUNNING" and r["task"] != str(spare)]
        if running:
            victim = f"{running[0]['job']}_{running[0]['task']}"
            subprocess.run(["scancel", victim], check=True)
            return victim
        time.sleep(0.2)
    raise AssertionError(f"no task of a {tasks}-task array was seen running; sweep output:\n{proc.stdout.read()}")


def results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parents[2].name: json.loads(p.read_text()) for p in sweep_dir.glob("*/detectors/amdet/result.json")}


def test_a_slurm_sweep_reports_failures_resumes_the_gaps_and_matches_the_local_one(tmp_path):
    local_out, slurm_out = tmp_path / "local", tmp_path / "slurm"
    threads = torch.get_num_threads()
    try:
        run_experiment([*GRID, f"paths.output_dir={local_out}", "threads=1"], progress=False, report=False)
    finally:
        torch.set_num_threads(threads)
    local = results(local_out / "sweeps" / "embedded")
    assert len(local) == 12 and all(r["status"] == "ok" for r in local.values())

    # a cell that raises: its stored model is corrupt (what the scan of a damaged model file meets)
    _, scored, _ = plan([*GRID, f"paths.output_dir={slurm_out}"])
    broken = next(c for c in scored if "cell.kind=backdoor" in c.overrides)
    shutil.copytree(local_out / "sweeps" / "embedded" / broken.id / "model", broken.directory / "model")
    (broken.directory / "model" / "model.safetensors").write_bytes(b"\x00" * 64)

    proc = sweeps_cli("run", *GRID, f"paths.output_dir={slurm_out}", *SLURM)
    # in the first array of the scored cells (one cell a task, in plan order), not the raising cell's task
    cancelled = cancel_a_running_task(proc, tasks=5, spare=scored.index(broken))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, output  # cells failed: exit status 1, the summary lists them
    sweep_dir = slurm_out / "sweeps" / "embedded"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["calibration"]["computed"] == 4 and summary["scored"]["computed"] == 6, output
    failed = {f["cell"]: f["reason"] for f in summary["scored"]["failed"]}
    assert len(failed) == 2 and "safetensors" in failed.pop(broken.id), output
    (gone, reason), = failed.items()
    assert f"job {cancelled}" in reason and "CANCELLED" in reason, reason
    assert f"failed: {broken.id}" in output and "python -m sweeps resume" in output
    assert "cells: 8 cells in 8 tasks submitted (1 per task, 1 at once, 2 arrays)" in output, output

    # the results store has both, the raising one with its traceback; no half-written result anywhere
    subprocess.run([sys.executable, "-m", "analyze", "collect", str(sweep_dir)], cwd=ROOT, check=True)
    records = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(records["detector"]) == set(broken.detectors) and "amdet" in broken.detectors
    table = records[records["detector"].eq("amdet")].set_index("cell_id")  # one row per cell
    assert set(records.loc[records.status == "error", "cell_id"]) == {broken.id, gone}
    assert "Traceback" in table.loc[broken.id, "traceback"] and "CANCELLED" in table.loc[gone, "reason"]

    shutil.rmtree(broken.directory / "model")  # the user fixes the cause, then resumes
    done = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/detectors/amdet/result.json")
            if json.loads(p.read_text())["status"] == "ok"}
    proc = sweeps_cli("resume", str(sweep_dir))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["scored"]["computed"] == 2 and summary["calibration"]["computed"] == 0, output
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "no finished cell is computed twice"

    remote = results(sweep_dir)
    assert remote.keys() == local.keys() and all(r["status"] == "ok" for r in remote.values())
    for cell, r in local.items():
        assert (remote[cell]["verdict"], remote[cell]["score"]) == (r["verdict"], r["score"]), cell


def test_a_cell_at_its_time_limit_requeues_and_resumes_from_its_snapshot(tmp_path):
    """A 2-minute time limit and a cell of about 75 s of attack training. Slurm sends the task its
    signal 60 s before the limit, give or take its 30-s time checks (measured: 52 s into the run) —
    always after submitit's handler is in place (with a 1-minute limit the signal can come in the
    task's first second and kill it: seen once in CI) — the task requeues itself, and the rerun
    resumes from its snapshot (taken every second)."""
    cell = [o for o in MICRO_STUDY if not o.startswith("training.attack.steps=")] + [
        "cell.kind=backdoor", "experiment.calibration_seeds=null", "training.attack.steps=3500", "snapshots.every_s=1"]
    limited = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
               "hydra.launcher.max_num_timeout=12", "hydra.launcher.mem_gb=1"]
    proc = sweeps_cli("run", *cell, f"paths.output_dir={tmp_path}", *limited)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    (result,) = results(tmp_path / "sweeps" / "embedded").values()
    assert result["status"] == "ok" and result["train_resumed_from_step"] > 0, output
    logs = "".join(p.read_text() for p in (tmp_path / "sweeps" / "embedded" / ".submitit").rglob("*.err"))
    assert "Requeued" in logs or "requeue" in logs.lower(), "the task requeued itself"
    assert not list((tmp_path / "sweeps" / "embedded").rglob("snapshots/*.pt")), "snapshots go once the cell is done"
