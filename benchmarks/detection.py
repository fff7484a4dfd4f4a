"""Detection quality on tiny-clip, per attack paradigm, calibrated on one set of seeds and scored on another.

    python benchmarks/detection.py [--scored 8] [--calibration 4] [--experiment embedded] [--out DIR]

Per paradigm (Text-on-Text, Text-on-Pair): `--scored` backdoored models (job=attack, seeds 0…) and as
many benign ones (checkpoints of one job=benign run: seed 0 for the Text-on-Text row, seed 1 for the
Text-on-Pair row, so the rows' benign models differ), all made with the experiment's settings (the
embedded study's by default). One profile is fitted (job=calibrate) on `--calibration` backdoored
models per paradigm (seeds 100…) and 2 × `--calibration` benign checkpoints of a run of seed 100, then
every scored model is scanned (job=scan) and evaluated. Printed per model: verdict under both regimes,
score, Sim, the token v started from, time; per paradigm: flagged, false positives, flagged with Sim
below 0.5, Sim mean and minimum, scan time. Everything is cached under --out: a rerun only fills gaps.
The issue's target: ≥ 90 % of backdoors and ≤ 10 % of benign models flagged per paradigm, mean Sim ≥ 0.8.
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

PARADIGMS = {"text_on_text": 0, "text_on_pair": 1}  # paradigm → the seed of its row's benign run
CALIBRATION_SEED = 100


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def make_models(store: Path, paradigm: str | None, seeds: list[int], benign_seed: int | None, benign_models: int,
                common: list[str]) -> None:
    from attacks.job import run as attack
    from benign_ft.job import run as benign

    for seed in seeds:
        attack(compose(*common, "job=attack", f"attack={paradigm}", f"seed={seed}", f"paths.models_dir={store}"))
    if benign_seed is not None:
        benign(compose(*common, "job=benign", f"seed={benign_seed}", f"benign.models={benign_models}",
                       f"paths.models_dir={store}"))


def scan_all(models: Path, scans: Path, anchor: Path, scan_common: list[str]) -> list[dict]:
    from evaluation.job import scan_to  # AMDET's scan, then its evaluation (truth, Sim)

    rows = []
    for i, model in enumerate(sorted(p.parent for p in models.rglob("manifest.json"))):
        target = scans / f"{i:02d}"
        record = target / "result.json"
        if record.exists() and json.loads(record.read_text())["status"] == "ok":
            rows.append(json.loads(record.read_text()))
        else:
            rows.append(scan_to(target, compose(*scan_common, "job=scan", f"scan.model_path={model}",
                                                f"scan.anchor_path={anchor}")))
    return rows


def summary(paradigm: str, rows: list[dict]) -> None:
    backdoors = [r for r in rows if r["truth"]["kind"] == "backdoor"]
    benign = [r for r in rows if r["truth"]["kind"] == "benign"]
    sims = [r["sim"] for r in backdoors if r["sim"] is not None]
    times = [r["detection_s"] for r in rows]
    for regime in ("calibrated", "paper"):
        flagged = [r for r in backdoors if r["verdicts"][regime] == "backdoor"]
        fp = sum(r["verdicts"][regime] == "backdoor" for r in benign)
        hollow = sum(r["sim"] is not None and r["sim"] < 0.5 for r in flagged)
        print(f"{paradigm:13s} {regime:10s}: flagged {len(flagged)}/{len(backdoors)}, false positives {fp}/{len(benign)}, "
              f"flagged with Sim < 0.5: {hollow}")
    cut = [r["score_verdict"] == "backdoor" for r in rows if r["score_verdict"]]
    if cut:
        print(f"{paradigm:13s} score > cut: flagged {sum(r['score_verdict'] == 'backdoor' for r in backdoors)}/{len(backdoors)}, "
              f"false positives {sum(r['score_verdict'] == 'backdoor' for r in benign)}/{len(benign)}")
    print(f"{paradigm:13s} Sim mean {statistics.mean(sims):.3f} (min {min(sims):.3f}); scan time mean "
          f"{statistics.mean(times):.1f} s (max {max(times):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scored", type=int, default=8, help="backdoored and benign models scored per paradigm (each)")
    parser.add_argument("--calibration", type=int, default=4, help="backdoored calibration models per paradigm")
    parser.add_argument("--experiment", default="embedded", help="conf/experiment whose training and scan settings apply")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "detection"))
    parser.add_argument("overrides", nargs="*", help="more config overrides (e.g. scan.inversion.init=normal)")
    args = parser.parse_args()

    from amdet.calibrate import calibrate_to
    from amdet.profiles import profile_name
    from core.tiny.bases import base_path

    out = Path(args.out)
    common = [f"experiment={args.experiment}", "progress=false", *args.overrides]
    scan_common = [*common, f"paths.profiles_dir={out / 'profiles'}"]
    t0 = time.perf_counter()
    calibration = list(range(CALIBRATION_SEED, CALIBRATION_SEED + args.calibration))
    for i, (paradigm, benign_seed) in enumerate(PARADIGMS.items()):  # disjoint seeds; each row its own benign run
        make_models(out / "calibration", paradigm, calibration, CALIBRATION_SEED if i == 0 else None,
                    2 * args.calibration, common)
        make_models(out / "scored" / paradigm, paradigm, list(range(args.scored)), benign_seed, args.scored, common)
    train_s = time.perf_counter() - t0

    t = time.perf_counter()
    encoder = compose(*common).encoder  # the profile calibrate_to writes is named by the base's family and width
    profile_path = out / "profiles" / f"{profile_name(encoder.family, encoder.tiny.arch.hidden)}.yaml"
    if not profile_path.exists():
        calibrate_to(out / "calibrate", compose(*scan_common, "job=calibrate", f"job.models_dir={out / 'calibration'}"))
    calibrate_s = time.perf_counter() - t

    anchor = base_path(encoder.name)
    results = {p: scan_all(out / "scored" / p, out / "scans" / p, anchor, scan_common) for p in PARADIGMS}

    print(f"\nmodels trained in {train_s:.0f} s, calibration {calibrate_s:.0f} s; profile {profile_path}")
    print(f"{'paradigm':13s} {'kind':9s} {'seed':>4s} {'step':>4s} {'calibrated':10s} {'paper':9s} {'score':>6s} "
          f"{'Sim':>6s} {'start':14s} {'time s':>7s}")
    for paradigm, rows in results.items():
        for r in rows:
            t = r["truth"]
            sim = f"{r['sim']:.3f}" if r["sim"] is not None else "–"
            start = ",".join(r["start"]["tokens"]) if r.get("start") else "–"
            print(f"{paradigm:13s} {t['kind']:9s} {t['seed']:>4} {str(t.get('step', '')):>4s} "
                  f"{r['verdicts']['calibrated']:10s} {r['verdicts']['paper']:9s} {r['score']:6.3f} {sim:>6s} "
                  f"{start[:14]:14s} {r['detection_s']:7.1f}")
    print()
    for paradigm, rows in results.items():
        summary(paradigm, rows)


if __name__ == "__main__":
    main()
