"""The prepared GPU benchmark: one command that times a CLIP-L-shape cell (attack, benign checkpoint,
the paper's full scan and the baselines) at each precision on one GPU, prints phase times and the
achieved TFLOP/s, and projects the cost of the 3,600-model study from them.

    python benchmarks/gpu.py [--device cuda] [--precisions fp32 tf32 bf16] [--out FILE.json]
    python benchmarks/gpu.py --smoke    # the same code path on the CPU in seconds (CI): tiny-clip, micro counts

The model is the random-initialised CLIP ViT-L/14 stand-in (core/real_shapes.py): its cost per step is
the real model's, its detections mean nothing (a random encoder's scan rarely passes loss_start, so
it runs few check passes: the scan time is a lower bound for a trained model's). Goals (issue 20,
measured when a GPU is lent): a full CLIP-L scan ≤ 15 s; the study ≤ 24 GPU-hours on one H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.precision import PRECISIONS  # noqa: E402
from core.tiny.architectures import TinyArch, hf_config  # noqa: E402
from sweeps.flops import GPUS, cell_flops, encoder_text_shape, gpu_seconds, text_shape  # noqa: E402
from sweeps.grid import compose_config, plan  # noqa: E402
from sweeps.run import run_experiment  # noqa: E402

# the paper's settings for one cell, but 20 attack steps (a cell's attack runs 100: × 5 in the projection)
GPU_CELL = [
    "encoder=clip-l", "attack=text_on_text", "training.attack.steps=20", "training.attack.clean_batch=64",
    "training.attack.poison_batch=32", "training.attack.milestones=[15]", "attack.train_prompts=2000",
    "attack.eval_prompts=200", "training.benign.batch_size=16", "benign.checkpoint_every=10",
    "scan.prompts=4000", "scan.inversion.batch_size=10", "scan.inversion.epochs=2", "scan.inversion.check_every=2",
    "scan.inversion.score_steps=null", "scan.landscape.points=50", "detector.output_drift.prompts=200",
    "detector.gcg.steps=50", "detector.gcg.candidates=64", "detector.gcg.batch=8", "detector.gcg.prompts=200",
    "detector.gcg.top_k=64",
]
SMOKE_CELL = [  # experiment=smoke's micro tiny-clip (built in seconds) at real_shapes' micro counts
    "encoder=tiny-clip", "encoder.name_or_path=null", "attack=text_on_text", "encoder.tiny.arch.hidden=32",
    "encoder.tiny.arch.layers=2", "encoder.tiny.arch.heads=2", "encoder.tiny.arch.ffn=64",
    "encoder.tiny.pretrain.steps=3", "encoder.tiny.pretrain.batch_size=8", "encoder.tiny.prompts=32",
    "+encoder.tiny.quality_prompts=16", "detector.gcg.steps=1",
]
PHASES = {  # result.json times → the FLOP model's phases (sweeps/flops.py)
    "train_s": ("attack", "attack evaluation", "benign fine-tuning"), "features_s": ("shallow features",),
    "init_s": ("vocabulary screen",), "inversion_s": ("inversion",), "checks_s": ("checks",), "score_s": ("score",),
    "landscape_s": ("landscape",),
}


def gpu_key(device: str) -> str | None:
    """The cost model's name of the GPU in use (None: a CPU, or a GPU it does not list)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device)).lower().replace(" ", "")
    return next((key for key in GPUS if key in name), None)


def run_cells(precision: str, device: str, smoke: bool, out: Path) -> dict:
    """Run one backdoor and one benign cell; their records by kind, and the composed config."""
    overrides = ["experiment=real_shapes", "experiment.name=gpu_benchmark", f"precision={precision}",
                 f"device={device}", f"paths.output_dir={out / precision}", "progress=false",
                 *(SMOKE_CELL if smoke else GPU_CELL)]
    t0 = time.perf_counter()
    summary = run_experiment(overrides, progress=False, report=False)
    wall = time.perf_counter() - t0
    if summary["scored"]["failed"]:
        raise RuntimeError(f"a benchmark cell failed at {precision}; see {summary['sweep_dir']}")
    records = {}
    for path in Path(summary["sweep_dir"]).glob("*/detectors/*/result.json"):
        record = json.loads(path.read_text())
        records[(record["cell"]["kind"], record["detector"])] = record
    _, scored, _ = plan(overrides)
    return {"records": records, "wall_s": wall, "cfg": compose_config(list(scored[0].overrides))}


def report(precision: str, runs: dict, peak: float | None) -> dict:
    """Phase times, FLOPs and achieved TFLOP/s of the backdoor cell's AMDET scan and training."""
    cfg, records = runs["cfg"], runs["records"]
    shape = encoder_text_shape(cfg.encoder.name) or text_shape(  # a tiny base: its own transformers config
        hf_config(TinyArch(**OmegaConf.to_container(cfg.encoder.tiny.arch))).to_dict())
    rows, flops_done, seconds_done = [], 0.0, 0.0
    for kind in ("backdoor", "benign"):
        phases = {p.name: p for p in cell_flops(cfg, kind, shape)}
        times = records[(kind, "amdet")]["times"]
        for key, names in PHASES.items():
            flops = sum(phases[n].flops for n in names if n in phases)
            seconds = times.get(key) or 0.0
            if flops and seconds:
                rows.append({"kind": kind, "phase": key[:-2], "seconds": seconds, "tflops": flops / 1e12,
                             "tflop_s": flops / seconds / 1e12})
                if key != "landscape_s":  # float64: not the precision under test
                    flops_done, seconds_done = flops_done + flops, seconds_done + seconds
        for name in ("gcg", "output_drift", "weight_distance"):
            if (kind, name) in records:
                rows.append({"kind": kind, "phase": name, "seconds": records[(kind, name)]["time_s"],
                             "tflops": None, "tflop_s": None})
    achieved = flops_done / seconds_done / 1e12 if seconds_done else 0.0
    scan = records[("benign", "amdet")]["time_s"]
    print(f"\n== {precision}: cells {runs['wall_s']:.1f} s wall; AMDET's scan of the benign model {scan:.1f} s; "
          f"achieved {achieved:.3f} TFLOP/s" + (f" ({achieved / peak:.1%} of the {peak:.0f} TFLOP/s peak)" if peak else ""))
    for r in rows:
        rate = f"{r['tflop_s']:9.3f} TFLOP/s" if r["tflop_s"] else ""
        print(f"   {r['kind']:<9} {r['phase']:<16} {r['seconds']:8.2f} s  {rate}")
    return {"precision": precision, "wall_s": runs["wall_s"], "scan_s": scan, "achieved_tflop_s": achieved, "phases": rows}


def project(results: list[dict], gpu: str | None) -> None:
    """The study's GPU-hours on this GPU at each precision, with the achieved share of its peak."""
    if gpu is None:
        print("\n(no projection: not a GPU the cost model lists, see sweeps/flops.py GPUS)")
        return
    _, scored, calibration = plan(["experiment=table1"])
    kinds = {}
    for cell in scored + calibration:
        c = dict(o.split("=", 1) for o in cell.overrides)
        key = (c["encoder"], c.get("cell.kind", "backdoor"), c["attack"], c.get("cell.observe"))  # calibration cells check every step
        kinds.setdefault(key, [cell, 0])[1] += 1
    print(f"\n== the study (table1: {len(scored)} cells + {len(calibration)} calibration cells) on one {gpu.upper()}")
    for r in results:
        mfu = r["achieved_tflop_s"] / GPUS[gpu][r["precision"]]
        seconds = sum(n * gpu_seconds(cell_flops(compose_config(list(cell.overrides)), key[1], encoder_text_shape(key[0])),
                                      gpu, r["precision"], mfu) for key, (cell, n) in kinds.items())
        r["study_gpu_hours"] = seconds / 3600
        print(f"   {r['precision']}: {seconds / 3600:.1f} GPU-hours at the measured {mfu:.1%} of peak "
              f"(`python -m sweeps plan experiment=table1 --gpu {gpu} --precision {r['precision']} --mfu {mfu:.3f}`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS)
    parser.add_argument("--smoke", action="store_true", help="tiny-clip at micro counts on the CPU (CI)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    device = "cpu" if args.smoke else args.device
    precisions = args.precisions or (["fp32", "tf32", "bf16"] if device.startswith("cuda") else ["fp32", "bf16"])
    gpu = gpu_key(device)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-benchmark-") as tmp:
        for precision in precisions:
            runs = run_cells(precision, device, args.smoke, Path(tmp))
            results.append(report(precision, runs, GPUS[gpu][precision] if gpu else None))
    project(results, gpu)
    if args.out:
        args.out.write_text(json.dumps({"device": name, "gpu": gpu, "results": results}, indent=1))


if __name__ == "__main__":
    main()
