"""`python -m sweeps plan`: the cells of an experiment, how many are done, and what the rest costs."""

from __future__ import annotations

import collections
from pathlib import Path

from omegaconf import OmegaConf

from sweeps.cell import finished
from sweeps.grid import Cell, compose_config, plan
from sweeps.validate import validate

COSTS = Path(__file__).with_name("costs.yaml")


def coordinates(cell: Cell) -> dict:
    return dict(o.split("=", 1) for o in cell.overrides if "=" in o)


def measured_seconds(cells: list[Cell]) -> dict:
    """Mean seconds per (encoder, kind) over the finished cells (training + scan)."""
    sums = collections.defaultdict(list)
    for cell in cells:
        r = finished(cell.directory)
        if r:
            sums[(r["cell"]["encoder"], r["cell"]["kind"])].append((r["times"].get("train_s") or 0) + r["time_s"])
    return {k: sum(v) / len(v) for k, v in sums.items()}


def estimate(cells: list[Cell], device: str) -> tuple[dict, dict]:
    """Seconds of the cells not yet done per hardware (cpu / gpu), and the per-cell seconds used.

    Tiny encoders are costed on this machine's CPU; the paper's encoders on a GPU (they need one)."""
    tables = OmegaConf.to_container(OmegaConf.load(COSTS))
    measured = measured_seconds(cells)
    used, total = {}, collections.Counter()
    for cell in cells:
        if finished(cell.directory):
            continue
        c = coordinates(cell)
        encoder = c.get("encoder") or compose_config(list(cell.overrides)).encoder.name
        kind = c.get("cell.kind", "backdoor")
        hardware = "cpu" if encoder in tables["cpu"] and not device.startswith("cuda") else "gpu"
        table = tables[hardware]
        per = measured.get((encoder, kind)) or table.get(encoder, {}).get(kind)
        if per is None:
            per = max(v for e in table.values() for v in e.values())  # unknown: the dearest known cell
        used[(encoder, kind)] = per
        total[hardware] += per
    return dict(total), used


def print_plan(overrides: list[str]) -> None:
    cfg, scored, calibration = plan(overrides)
    if scored + calibration:  # one composed cell proves the overrides are valid
        validate(compose_config(list((scored + calibration)[0].overrides)))
    kinds = collections.Counter(coordinates(c).get("cell.kind", "backdoor") for c in scored)
    encoders = collections.Counter(coordinates(c).get("encoder", cfg.encoder.name) for c in scored)
    done = sum(1 for c in scored + calibration if finished(c.directory))
    print(f"experiment {cfg.experiment.name}: {len(scored)} cells ("
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f") + {len(calibration)} calibration cells")
    print("  by encoder: " + ", ".join(f"{e} {n}" for e, n in sorted(encoders.items())))
    print(f"  sweep dir: {cfg.hydra.sweep.dir} ({done} cells already done)")
    total, used = estimate(scored + calibration, cfg.device)
    hours = ", ".join(f"{s / 3600:.1f} {hw.upper()}-hours" for hw, s in sorted(total.items())) or "nothing"
    print(f"  estimated cost of what is left: {hours}  (per cell: "
          + ", ".join(f"{e}/{k} {s:.0f} s" for (e, k), s in sorted(used.items())) + ")")
    for cell in scored[:3]:
        print(f"  e.g. {cell.id}")
