"""Time AMDET scans of one tiny model: the full fast scan, then fast vs the step-by-step reference.

    python benchmarks/scan.py --model DIR [--anchor DIR] [--thresholds PROFILE] [--early-exit] [--prompts 4000]

Targets (issue: the AMDET detector): a tiny-clip scan with 4,000 shallow prompts in ≤ 60 s on
2 cores; the fast path ≥ 5× faster than the reference on the same model and the same steps. Without
--model, a backdoored tiny-clip is trained first (`job=attack`, about 40 s). The full scan uses the
paper's CLIP-L thresholds unless --thresholds names a profile written by job=calibrate (as a scan of
a tiny-clip finds its calibrated profile); the fast-vs-reference run always uses the paper's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory to scan (default: train a backdoored tiny-clip)")
    parser.add_argument("--anchor", help="anchor directory (default: the tiny-clip base)")
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--compare-prompts", type=int, default=1000, help="shallow prompts for the fast-vs-reference run")
    parser.add_argument("--check-every", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (batching pays most on a GPU)")
    parser.add_argument("--thresholds", help="a profile YAML from job=calibrate for the full scan (default: CLIP-L)")
    parser.add_argument("--no-compare", action="store_true", help="time the full scan only")
    parser.add_argument("--early-exit", action="store_true", help="the full scan with scan.inversion.check_early_exit")
    args = parser.parse_args()

    from amdet.checks import CheckThresholds
    from amdet.landscape import LandscapeConfig
    from amdet.scan import ScanConfig, scan
    from core.loading import load_encoder
    from core.prompts import generate_synthetic_prompts
    from core.tiny.bases import base_path
    from tests import reference_amdet as ref

    anchor_dir = args.anchor or str(base_path("tiny-clip"))
    model_dir = args.model
    if not model_dir:
        model_dir = str(Path(tempfile.mkdtemp(prefix="amdet-scan-bench-")) / "backdoor")
        subprocess.run([sys.executable, "launch.py", "job=attack", "progress=false", f"job.out={model_dir}",
                        f"hydra.run.dir={model_dir}-log"], cwd=ROOT, check=True)
    model, anchor = load_encoder(model_dir, args.device), load_encoder(anchor_dir, args.device)
    cfg = ScanConfig(check_every=args.check_every)
    full_cfg = replace(cfg, check_early_exit=args.early_exit)
    if args.thresholds:  # as a scan reads it: the profile's values over the paper's, unknown keys refused
        from amdet.profiles import load_profile, profile_checks
        from core.settings import from_config

        values = {**vars(CheckThresholds()), **profile_checks(load_profile(args.thresholds))}
        full_cfg = replace(full_cfg, thresholds=from_config(CheckThresholds, values, f"thresholds file {args.thresholds}"))

    prompts = generate_synthetic_prompts(args.prompts, seed=0)
    t0 = time.perf_counter()
    full = scan(model, anchor, prompts, full_cfg)
    full_s = time.perf_counter() - t0
    times = ", ".join(f"{k} {v:.1f}" for k, v in full["times"].items())
    print(f"fast scan, {args.prompts} prompts, thresholds {args.thresholds or 'CLIP-L'}"
          f"{', check early exit' if args.early_exit else ''}: {full_s:.1f} s ({times}); "
          f"{full['steps']} steps, verdict {full['verdict']}, score {full['score']:.3f}")
    if args.no_compare:
        return

    # same model, same steps: one epoch over fewer prompts, checks always on, the paper's landscape
    small = generate_synthetic_prompts(args.compare_prompts, seed=1)
    same = replace(cfg, epochs=1, thresholds=replace(CheckThresholds(), loss_start=10.0, loss_stop=-10.0),
                   landscape=LandscapeConfig())
    t0 = time.perf_counter()
    fast = scan(model, anchor, small, same, progress=False)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # both timings include their feature pass: batched, and per prompt as upstream
    slow = ref.scan(model, anchor, ref.shallow_set(model, small, same.test_share, same.seed), same)
    slow_s = time.perf_counter() - t0
    print(f"same model, same {fast['steps']} steps ({args.compare_prompts} prompts, checks every "
          f"{same.check_every} batches, final landscape in both): fast {fast_s:.1f} s, reference {slow_s:.1f} s "
          f"→ {slow_s / fast_s:.1f}× faster; same verdict: {fast['verdict'] == slow['verdict']}, "
          f"score {fast['score']:.4f} vs {slow['score']:.4f}")
    t0 = time.perf_counter()  # the same, with check passes that stop once their outcome is decided
    quick = scan(model, anchor, small, replace(same, check_early_exit=True), progress=False)
    quick_s = time.perf_counter() - t0
    print(f"  with check early exit: fast {quick_s:.1f} s → {slow_s / quick_s:.1f}× faster; same steps, verdict and score: "
          f"{(quick['steps'], quick['verdict'], quick['score']) == (fast['steps'], fast['verdict'], fast['score'])}")
    phase_ratios(model, anchor, small, same)


def phase_ratios(model, anchor, prompts, cfg) -> None:
    """Where the speed-up comes from: the features, one inversion step, one check pass, one landscape,
    fast vs reference. (The reference runs each prompt of an inversion batch on its own; upstream
    batches that forward and loops per sample only in its assimilation loss.)"""
    import torch

    from amdet.checks import evaluate_checks
    from amdet.inversion import inversion_loss, shallow_set
    from amdet.landscape import landscape
    from tests import reference_amdet as ref

    data = shallow_set(model, prompts, cfg.test_share, cfg.seed)
    v = torch.nn.Parameter(torch.randn(cfg.k, model.hidden_size, generator=torch.Generator().manual_seed(0)).to(model.device))
    idx, test, i = data.train[: cfg.batch_size], data.hidden[data.test], data.test[:1]

    def timed(fn, repeat=3):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat

    def fast_step():
        inversion_loss(model, anchor, data.hidden[idx], data.output[idx], v, cfg.weights)[0].backward()

    def ref_step():
        ref.batch_loss(model, anchor, data.hidden[idx], data.output[idx], v, cfg.weights).backward()

    rows = [
        (f"features ({len(prompts)} prompts)", timed(lambda: shallow_set(model, prompts, cfg.test_share, cfg.seed), 1),
         timed(lambda: ref.shallow_set(model, prompts, cfg.test_share, cfg.seed), 1)),
        ("inversion step", timed(fast_step), timed(ref_step)),
        (f"checks ({len(test)} test prompts)", timed(lambda: evaluate_checks(model, anchor, test, v.detach(), cfg.thresholds), 1),
         timed(lambda: ref.checks(model, anchor, test, v.detach(), cfg.thresholds), 1)),
        (f"landscape ({cfg.landscape.points}² points)",
         timed(lambda: landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape), 1),
         timed(lambda: ref.landscape(model, anchor, data.hidden[i[0]], data.output[i[0]], v.detach(), cfg.weights, cfg.landscape), 1)),
    ]
    for name, fast, slow in rows:
        print(f"  {name:28s} fast {fast * 1000:8.1f} ms  reference {slow * 1000:8.1f} ms  → {slow / fast:.1f}×")

if __name__ == "__main__":
    main()
