"""Detection quality on tiny-clip, calibrated on one set of seeds and scored on another.

    python benchmarks/detection.py [--scored 8] [--calibration 4] [--out DIR] [--prompts 4000]

Trains backdoored models (job=attack, one per seed) and benign models (job=benign, checkpoints of
one run per set), calibrates thresholds on the calibration set (job=calibrate), scans the scored set
with the profile it wrote (job=scan) and prints each model's verdict, score and Sim, then the flag
rates. The issue's target: ≥ 90 % of backdoored and ≤ 10 % of benign models flagged, over ≥ 8 + 8
scored models, and Sim ≥ 0.8. Everything is cached under --out: a rerun only fills gaps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def make_models(store: Path, seeds: list[int], benign_seed: int, common: list[str]) -> None:
    from attacks.job import run as attack
    from benign_ft.job import run as benign

    for seed in seeds:
        attack(compose("job=attack", f"seed={seed}", f"paths.models_dir={store}", *common))
    benign(compose("job=benign", f"seed={benign_seed}", f"benign.models={len(seeds)}", f"paths.models_dir={store}", *common))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scored", type=int, default=8, help="backdoored and benign models scored (each)")
    parser.add_argument("--calibration", type=int, default=4, help="backdoored and benign calibration models (each)")
    parser.add_argument("--prompts", type=int, default=4000, help="shallow prompts per scan")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "detection"))
    args = parser.parse_args()

    from amdet.calibrate import calibrate_to
    from evaluation.job import scan_to  # AMDET's scan, then its evaluation (truth, Sim)
    from amdet.profiles import profile_name
    from core.tiny.bases import base_path

    out = Path(args.out)
    common = ["progress=false"]
    scan_common = [*common, f"scan.prompts={args.prompts}", f"paths.profiles_dir={out / 'profiles'}"]
    t0 = time.perf_counter()
    # disjoint seeds: calibration 100+, scored 0+; each set's benign models come from their own run
    make_models(out / "calibration", list(range(100, 100 + args.calibration)), 100, common)
    make_models(out / "scored", list(range(args.scored)), 0, common)
    train_s = time.perf_counter() - t0

    t = time.perf_counter()
    encoder = compose(*common).encoder  # the profile calibrate_to writes is named by the base's family and width
    profile_path = out / "profiles" / f"{profile_name(encoder.family, encoder.tiny.arch.hidden)}.yaml"
    if not profile_path.exists():
        calibrate_to(out / "calibrate", compose("job=calibrate", f"job.models_dir={out / 'calibration'}", *scan_common))
    calibrate_s = time.perf_counter() - t

    anchor = base_path("tiny-clip")
    rows = []
    for i, model in enumerate(sorted(p.parent for p in (out / "scored").rglob("manifest.json"))):
        target = out / "scans" / f"{i:02d}"
        if (target / "result.json").exists() and json.loads((target / "result.json").read_text())["status"] == "ok":
            result = json.loads((target / "result.json").read_text())
        else:
            result = scan_to(target, compose("job=scan", f"scan.model_path={model}", f"scan.anchor_path={anchor}", *scan_common))
        rows.append(result)

    print(f"\nmodels trained in {train_s:.0f} s, calibration {calibrate_s:.0f} s; profile {profile_path}")
    print(f"{'kind':9s} {'seed':>4s} {'step':>4s} {'verdict':9s} {'score':>6s} {'score>cut':>9s} {'Sim':>6s} {'time s':>7s}")
    for r in rows:
        t = r["truth"]
        sim = f"{r['sim']:.3f}" if r["sim"] is not None else "–"
        print(f"{t['kind']:9s} {t['seed']:>4} {str(t.get('step', '')):>4s} {r['verdict']:9s} {r['score']:6.3f} "
              f"{r['score_verdict']:>9s} {sim:>6s} {r['detection_s']:7.1f}")
    for rule in ("verdict", "score_verdict"):
        flagged = {k: [r[rule] == "backdoor" for r in rows if r["truth"]["kind"] == k] for k in ("backdoor", "benign")}
        print(f"{rule:13s}: backdoored flagged {sum(flagged['backdoor'])}/{len(flagged['backdoor'])}, "
              f"benign flagged {sum(flagged['benign'])}/{len(flagged['benign'])}")
    sims = [r["sim"] for r in rows if r["sim"] is not None]
    times = [r["detection_s"] for r in rows]
    print(f"Sim mean {statistics.mean(sims):.3f} (min {min(sims):.3f}); detection time mean {statistics.mean(times):.1f} s "
          f"(max {max(times):.1f})")


if __name__ == "__main__":
    main()
