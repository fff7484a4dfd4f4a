"""A cell is claimed before it is computed: `<cell dir>/claim.json` names the process computing it
(host, pid, Slurm job), so that a second launcher on the same sweep, or a `resume` while the sweep
runs, skips the cell instead of computing it twice, and waits for it before it fits a profile or
writes a report. A claim whose owner is gone (its process ended on this host, its Slurm job left the
queue) is taken over; a requeued Slurm task takes over its own job's claims.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from core.store import write_json_atomic

CLAIM = "claim.json"


class Claimed(RuntimeError):
    """The cell is being computed by another live process."""


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job()}


def slurm_job() -> str | None:
    """This task's job id as squeue names it (array tasks: JOB_TASK), or None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def describe(owner: dict) -> str:
    job = f", Slurm job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}"


def alive(owner: dict) -> bool:
    """Whether the claim's owner may still be computing: on this host, while its process runs; on
    another, while its Slurm job is queued or running (an earlier run of this very task, requeued, is
    gone); an owner on another host without a Slurm job, or where squeue cannot tell, is taken as alive."""
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True
    job = owner.get("slurm_job")
    if job and job == slurm_job():
        return False
    if job and shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True)
        if out.returncode == 0:
            return bool(out.stdout.strip())
        if "invalid job id" in out.stderr.lower():  # long gone from the controller's memory
            return False
    return True


def holder(directory: Path) -> dict | None:
    """The live owner of the cell's claim, or None when nobody holds it (or its owner is gone)."""
    try:
        owner = json.loads((directory / CLAIM).read_text())
    except (OSError, ValueError):
        return None
    return owner if alive(owner) else None


@contextmanager
def claim(directory: Path) -> Iterator[None]:
    """Hold the cell's claim while its body computes it; Claimed if another live process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CLAIM
    with FileLock(directory / f"{CLAIM}.lock"):  # checking and taking the claim is one step
        owner = holder(directory)
        if owner is not None and (owner.get("host"), owner.get("pid")) != (me()["host"], me()["pid"]):
            raise Claimed(f"cell {directory.name} is being computed by {describe(owner)}")
        write_json_atomic(path, {**me(), "since": time.time()})
    try:
        yield
    finally:
        with FileLock(directory / f"{CLAIM}.lock"):
            try:
                mine = json.loads(path.read_text())
            except (OSError, ValueError):
                mine = None
            if mine and (mine.get("host"), mine.get("pid")) == (me()["host"], me()["pid"]):
                path.unlink(missing_ok=True)


def wait_for(directories: list[Path], poll_s: float = 2.0) -> None:
    """Block until no live process holds a claim on any of `directories`."""
    pending = list(directories)
    while pending := [d for d in pending if holder(d) is not None]:
        time.sleep(poll_s)
