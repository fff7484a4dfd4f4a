"""`python -m sweeps plan|measure|run experiment=NAME [overrides]`, `python -m sweeps resume SWEEP_DIR`.

plan    prints the experiment's cells, their count and the estimated cost; runs nothing. For real
        encoders also the FLOP model's GPU-hours: [--gpu h100|h200|a100|l40s|rtx4090]
        [--precision fp32|tf32|bf16] [--mfu SHARE] (the achieved share of the peak; default assumed)
measure runs one cell per encoder and kind (with the chosen launcher and device), then prints the
        plan costed with their measured times; the cells are the sweep's own, kept as done
run     runs every cell (calibration first), skipping finished ones, then the report: on this machine,
        or through submitit with hydra/launcher=slurm or submitit_local
resume  reruns a sweep from its directory alone: only the cells without a finished result

run and resume exit with status 1 when a cell failed (its result.json says why), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.precision import PRECISIONS
from sweeps.cost import measure, print_plan
from sweeps.flops import GPUS
from sweeps.run import resume, run_experiment


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("plan", "measure", "run", "resume"):
        print(__doc__.strip())
        return 2
    command, args = argv[0], argv[1:]
    try:
        if command == "plan":
            flags = argparse.ArgumentParser(prog="python -m sweeps plan", add_help=False)
            flags.add_argument("--gpu", default="h100", choices=list(GPUS))
            flags.add_argument("--precision", default="bf16", choices=PRECISIONS)
            flags.add_argument("--mfu", type=float, default=None)
            known, overrides = flags.parse_known_args(args)
            print_plan(overrides, known.gpu, known.precision, known.mfu)
        elif command == "measure":
            return print_summary(measure(args), phases=("probes",))
        elif command == "run":
            return print_summary(run_experiment(args))
        else:
            if len(args) != 1:
                print("usage: python -m sweeps resume SWEEP_DIR")
                return 2
            return print_summary(resume(Path(args[0])))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — Hydra's config errors (unknown group option, bad override)
        if type(exc).__module__.startswith(("hydra", "omegaconf")):
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    return 0


def print_summary(summary: dict, phases=("calibration", "scored")) -> int:
    """Print the counts and every failed cell; the exit status is 1 when a cell failed."""
    failed = 0
    for phase in phases:
        s = summary.get(phase)
        if s:
            elsewhere = f", {s['elsewhere']} computed by another launcher" if s.get("elsewhere") else ""
            print(f"{phase}: {s['cells']} cells, {s['computed']} computed, {s['skipped']} already done{elsewhere}, "
                  f"{len(s['failed'])} failed")
            for f in s["failed"]:
                print(f"  failed: {f['cell']}: {f['reason']}")
            failed += len(s["failed"])
    print(f"sweep: {summary['sweep_dir']} ({summary['time_s']} s)")
    if failed and "scored" in phases:
        print(f"{failed} cells failed (their result.json has the reason); fix the cause and run: "
              f"python -m sweeps resume {summary['sweep_dir']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
