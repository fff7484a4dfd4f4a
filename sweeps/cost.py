"""`python -m sweeps plan`: the cells of an experiment, how many are done, and what the rest costs."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from omegaconf import OmegaConf

from sweeps.cell import finished
from sweeps.flops import ASSUMED_MFU, GPUS, cell_flops, encoder_text_shape, gpu_seconds, image_flops
from sweeps.grid import Cell, compose_config, plan
from sweeps.run import check_all, run_phase
from sweeps.validate import validate

COSTS = Path(__file__).with_name("costs.yaml")


def coordinates(cell: Cell) -> dict:
    return dict(o.split("=", 1) for o in cell.overrides if "=" in o)


def hardware_of(result: dict) -> str:
    """Where a finished cell ran: the GPU's name, or the CPU threads it computed with."""
    hw, device = result.get("provenance", {}).get("hardware", {}), str(result.get("config", {}).get("device", "cpu"))
    if device.startswith("cuda") and hw.get("gpu"):
        return f"gpu: {hw['gpu']}"
    return f"cpu: {hw.get('torch_threads', '?')} threads"


def measured_seconds(cells: list[Cell]) -> dict:
    """(encoder, kind) → (mean seconds per finished cell: training + scan, cells measured, hardware)."""
    runs = collections.defaultdict(list)
    for cell in cells:
        records = finished(cell.directory, names=cell.detectors)
        if records:  # the model's training once, then every detector
            r = next(iter(records.values()))
            seconds = (r["times"].get("train_s") or 0) + sum(x["time_s"] for x in records.values())
            runs[(r["cell"]["encoder"], r["cell"]["kind"])].append((seconds, hardware_of(r)))
    return {k: (sum(s for s, _ in v) / len(v), len(v), ", ".join(sorted({h for _, h in v}))) for k, v in runs.items()}


def estimate(cells: list[Cell], device: str, default_kind: str = "backdoor") -> tuple[dict, dict]:
    """Seconds of the cells not yet done per hardware (cpu / gpu), and the per-cell seconds used
    with where they come from: this sweep's finished cells (measured), else sweeps/costs.yaml.

    Tiny encoders are costed on this machine's CPU; the paper's encoders on a GPU (they need one)."""
    tables = OmegaConf.to_container(OmegaConf.load(COSTS))
    measured = measured_seconds(cells)
    used, total = {}, collections.Counter()
    for cell in cells:
        if finished(cell.directory, names=cell.detectors):
            continue
        c = coordinates(cell)
        encoder = c.get("encoder") or compose_config(list(cell.overrides)).encoder.name
        kind = c.get("cell.kind", default_kind)
        if (encoder, kind) in measured:
            per, n, where = measured[(encoder, kind)]
            hardware, source = where.split(":")[0], f"measured: {n} cells, {where}"
        else:
            hardware = "cpu" if encoder in tables["cpu"] and not device.startswith("cuda") else "gpu"
            table = tables[hardware]
            per, source = table.get(encoder, {}).get(kind), "sweeps/costs.yaml"
            if per is None:
                per = max(v for e in table.values() for v in e.values())  # unknown: the dearest known cell
        used[(encoder, kind)] = (per, source)
        total[hardware] += per
    return dict(total), used


def probe_cells(scored: list[Cell], calibration: list[Cell], default_kind: str = "backdoor") -> list[Cell]:
    """One unfinished cell per (encoder, kind) to time the sweep's own cells on the chosen hardware.
    They are cells of the sweep (nothing is wasted): calibration cells when it has them (observing
    scans never stop early, so the estimate errs on the dear side), else scored cells (no profile to
    wait for)."""
    probes, seen = [], set()
    for cell in calibration or scored:
        c = coordinates(cell)
        key = (c.get("encoder"), c.get("cell.kind", default_kind))
        if key not in seen and not finished(cell.directory, names=cell.detectors):
            seen.add(key)
            probes.append(cell)
    return probes


def measure(overrides: list[str], progress: bool = True) -> dict:
    """Run the probe cells with the chosen launcher and device (e.g. on the GPU partition), then
    print the plan costed with their times."""
    cfg, scored, calibration = plan(overrides)
    probes = probe_cells(scored, calibration, cfg.cell.kind)
    check_all(probes)
    t0 = time.perf_counter()
    summary = run_phase(probes, cfg, Path(cfg.hydra.sweep.dir), progress, "probe cells")
    print_plan(overrides)
    return {"probes": summary, "sweep_dir": cfg.hydra.sweep.dir, "time_s": round(time.perf_counter() - t0, 1)}


def print_plan(overrides: list[str], gpu: str = "h100", precision: str = "bf16", mfu: float | None = None) -> None:
    cfg, scored, calibration = plan(overrides)
    if scored + calibration:  # one composed cell proves the overrides are valid
        validate(compose_config(list((scored + calibration)[0].overrides)))
    kinds = collections.Counter(coordinates(c).get("cell.kind", cfg.cell.kind) for c in scored)
    encoders = collections.Counter(coordinates(c).get("encoder", cfg.encoder.name) for c in scored)
    done = sum(1 for c in scored + calibration if finished(c.directory, names=c.detectors))
    print(f"experiment {cfg.experiment.name}: {len(scored)} cells ("
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f") + {len(calibration)} calibration cells")
    print("  by encoder: " + ", ".join(f"{e} {n}" for e, n in sorted(encoders.items())))
    print(f"  sweep dir: {cfg.hydra.sweep.dir} ({done} cells already done)")
    total, used = estimate(scored + calibration, cfg.device, cfg.cell.kind)
    hours = ", ".join(f"{s / 3600:.1f} {hw.upper()}-hours" for hw, s in sorted(total.items())) or "nothing"
    print(f"  estimated cost of what is left: {hours}")
    for (e, k), (s, source) in sorted(used.items()):
        print(f"    {e}/{k}: {s:.0f} s per cell ({source})")
    if any(source == "sweeps/costs.yaml" for _, source in used.values()):
        print("  table values are estimates: `python -m sweeps measure <these overrides>` (with your launcher "
              "and device) times one cell per encoder and kind on that hardware")
    print_flops(scored + calibration, gpu, precision, mfu)
    for cell in scored[:3]:
        print(f"  e.g. {cell.id}")


def print_flops(cells: list[Cell], gpu: str, precision: str, mfu: float | None) -> None:
    """The FLOP model's GPU-hours per real-encoder family for every cell of the plan (sweeps/flops.py)."""
    per_family: dict[str, list] = collections.defaultdict(list)
    example: dict[tuple, list] = {}
    configs: dict[str, object] = {}  # one composed config per family, for its image side
    for cell in cells:
        c = coordinates(cell)
        encoder, kind = c.get("encoder"), c.get("cell.kind", "backdoor")
        if encoder is None or encoder_text_shape(encoder) is None:
            continue
        # cells of one family, kind, paradigm and mode (a calibration cell checks every step) cost alike
        key = (encoder, kind, c.get("attack"), c.get("cell.observe"))
        if key not in example:
            configs[encoder] = compose_config(list(cell.overrides))
            example[key] = cell_flops(configs[encoder], kind, encoder_text_shape(encoder))
        per_family[encoder].append(example[key])
    if not per_family:
        return
    share = mfu if mfu is not None else ASSUMED_MFU
    print(f"  FLOP model (sweeps/flops.py) on one {gpu.upper()} at {precision}, {share:.0%} of its dense peak "
          f"({GPUS[gpu][precision]:.0f} TFLOP/s; {'given' if mfu is not None else 'assumed: measure it with benchmarks/gpu.py'}), "
          "landscape in float64:")
    for encoder, cells_phases in sorted(per_family.items()):
        seconds = sum(gpu_seconds(phases, gpu, precision, share) for phases in cells_phases)
        flops = sum(p.flops for phases in cells_phases for p in phases)
        image = image_flops(configs[encoder], encoder)
        extra = gpu_seconds([image], gpu, precision, share) if image else 0.0
        print(f"    {encoder}: {len(cells_phases)} cells, {flops / 1e15:.1f} PFLOP, {(seconds + extra) / 3600:.1f} GPU-hours"
              f" (image embeddings once: {extra / 60:.1f} min)")
        heaviest = max(cells_phases, key=lambda ph: sum(p.flops for p in ph))
        total = sum(p.flops for p in heaviest)
        print("      dearest cell: " + "; ".join(f"{p.name} {p.flops / total:.0%} ({p.note})" for p in heaviest if p.flops / total >= 0.01))
