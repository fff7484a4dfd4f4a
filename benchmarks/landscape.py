"""Does the landscape filter separate benign from backdoored tiny-clips, in float32 and in float64?

    python benchmarks/landscape.py [--backdoor 0 1 2] [--benign 0 1 2] [--points 30 50] [--prompts 1000] [--out DIR]

Trains backdoored models (`job=attack` with the embedded study's lighter settings) and benign ones
(`job=benign benign.mode=independent benign.steps=60`), one per seed, on the tiny-clip base;
inverts v on each with the scan (the config's settings, no checks and no early stop, so that it
runs every step: the v a scan ends with), then computes the landscape around that v on the scan's
first test prompt in float32 (the grid as the model computes it, only differenced in double: the
old path) and in float64 (the current one), at each grid size, and prints per model the positive
ratio of both, how many eigenvalue signs the float32 noise flips, that noise (max |e32 − e64|)
against the typical |eigenvalue|, and the time of each landscape. Models are cached under --out:
the first run trains six (about 28 min on 2 busy cores), a rerun costs a scan (~20 s) and the
landscapes (~40 s) per model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ATTACK = ["training.attack.steps=50", "training.attack.clean_batch=32", "training.attack.milestones=[40]"]
BENIGN = ["benign.mode=independent", "benign.steps=60"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def make_model(kind: str, seed: int, out: Path) -> Path:
    from attacks.job import run as attack
    from benign_ft.job import run as benign

    target = out / "models" / kind / f"seed{seed}"
    if not (target / "manifest.json").exists():
        job, extra = ("attack", ATTACK) if kind == "backdoor" else ("benign", BENIGN)
        (attack if kind == "backdoor" else benign)(
            compose(f"job={job}", f"seed={seed}", f"job.out={target}", "progress=false", *extra))
    return target


def measure(model_dir: Path, anchor_dir: Path, prompts: int, points: list[int]) -> dict:
    """Invert v with the scan, then the landscape at each grid size in both dtypes."""
    import torch

    from amdet.inversion import shallow_set
    from amdet.job import scan_config, shallow_prompts, thresholds_defaults
    from amdet.landscape import landscape
    from amdet.scan import scan
    from core.loading import load_encoder

    # the scan's own final landscape is not used here: the smallest grid keeps it cheap
    cfg = compose("job=scan", f"scan.model_path={model_dir}", f"scan.anchor_path={anchor_dir}",
                  f"scan.prompts={prompts}", "scan.landscape.points=3", "progress=false")
    s = cfg.scan
    model, anchor = load_encoder(s.model_path, cfg.device), load_encoder(s.anchor_path, cfg.device)
    # no check ever starts and nothing stops the inversion: it runs all its steps, as an observed scan
    thresholds = dataclasses.replace(thresholds_defaults(s), loss_start=-math.inf, loss_stop=-math.inf)
    scan_cfg = scan_config(s, thresholds)
    texts, _ = shallow_prompts(cfg)
    t = time.perf_counter()
    found = scan(model, anchor, texts, scan_cfg, progress=False)
    scan_s = time.perf_counter() - t
    data = found.get("data") or shallow_set(model, texts, scan_cfg.test_share, scan_cfg.seed)
    i = data.test[:1]  # the prompt the scan's landscape uses (amdet.scan.landscape_of)
    rows = []
    for n in points:
        lcfg = dataclasses.replace(scan_cfg.landscape, points=n)
        land = {}
        for dtype in (torch.float32, torch.float64):
            t = time.perf_counter()
            land[dtype] = landscape(model, anchor, data.hidden[i], data.output[i], found["v"], scan_cfg.weights, lcfg, dtype)
            land[dtype]["time_s"] = time.perf_counter() - t
        e32, e64 = land[torch.float32]["eigenvalues"], land[torch.float64]["eigenvalues"]
        tol = lcfg.eig_tol
        rows.append({
            "points": n, "step": 2 * lcfg.span / (n - 1),
            "ratio32": land[torch.float32]["positive_ratio"], "ratio64": land[torch.float64]["positive_ratio"],
            "flipped": ((e32 > tol) != (e64 > tol)).double().mean().item(),
            "noise": (e32 - e64).abs().max().item(), "typical": e64.abs().median().item(),
            "below_tol": (e64.abs() <= tol).double().mean().item(),
            "t32": land[torch.float32]["time_s"], "t64": land[torch.float64]["time_s"],
        })
    return {"steps": found["steps"], "score": found["score"], "v_norm": found["v"].norm().item(),
            "scan_s": scan_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backdoor", type=int, nargs="*", default=[0, 1, 2], help="seeds of backdoored models")
    parser.add_argument("--benign", type=int, nargs="*", default=[0, 1, 2], help="seeds of benign models")
    parser.add_argument("--points", type=int, nargs="+", default=[30, 50], help="grid points per axis")
    parser.add_argument("--prompts", type=int, default=1000, help="shallow prompts per scan")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "landscape"))
    args = parser.parse_args()

    from core.tiny.bases import base_path

    out = Path(args.out)
    anchor = base_path("tiny-clip")
    t0 = time.perf_counter()
    models = [("backdoor", s, make_model("backdoor", s, out)) for s in args.backdoor]
    models += [("benign", s, make_model("benign", s, out)) for s in args.benign]
    train_s = time.perf_counter() - t0

    results = []
    for kind, seed, path in models:
        r = measure(path, anchor, args.prompts, args.points)
        results.append((kind, seed, r))
        print(f"{kind} seed {seed}: {r['steps']} steps, score {r['score']:.3f}, |v| {r['v_norm']:.1f}, scan {r['scan_s']:.1f} s",
              flush=True)

    print(f"\nmodels trained in {train_s:.0f} s; landscape ±{compose().scan.landscape.span:g} on the scan's final v")
    print(f"{'kind':9s} {'seed':>4s} {'pts':>3s} {'step':>5s} {'ratio32':>7s} {'ratio64':>7s} {'flipped':>7s} "
          f"{'noise32':>8s} {'|e| med':>8s} {'|e|≤tol':>7s} {'t32 s':>6s} {'t64 s':>6s}")
    for kind, seed, r in results:
        for x in r["rows"]:
            print(f"{kind:9s} {seed:>4} {x['points']:>3} {x['step']:5.3f} {x['ratio32']:7.3f} {x['ratio64']:7.3f} "
                  f"{x['flipped']:7.3f} {x['noise']:8.1e} {x['typical']:8.1e} {x['below_tol']:7.3f} "
                  f"{x['t32']:6.1f} {x['t64']:6.1f}")
    for n in args.points:
        for key in ("ratio32", "ratio64"):
            by = {k: [x[key] for kk, _, r in results if kk == k for x in r["rows"] if x["points"] == n]
                  for k in ("backdoor", "benign")}
            if by["backdoor"] and by["benign"]:
                gap = min(by["backdoor"]) - max(by["benign"])
                print(f"{n} points, {key}: backdoor {statistics.mean(by['backdoor']):.3f} "
                      f"[{min(by['backdoor']):.3f}, {max(by['backdoor']):.3f}], benign {statistics.mean(by['benign']):.3f} "
                      f"[{min(by['benign']):.3f}, {max(by['benign']):.3f}]; gap (min backdoor − max benign) {gap:+.3f}")


if __name__ == "__main__":
    main()
