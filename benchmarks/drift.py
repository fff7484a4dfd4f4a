"""How far benign and backdoored tiny models move from their base: the difficulty floor's two statistics.

    python benchmarks/drift.py [--lr 3e-4 1e-3 1.5e-3] [--out DIR]

Trains the embedded study's backdoored models (both paradigms, trigger lengths 1 and 3, seed 0, its
lighter attack settings) and, per benign learning rate, one benign fine-tuning run with the
checkpoints the embedded grid's benign cells take (steps 10, 30, 160, 180: sweeps/cell.py
benign_checkpoint), then prints each model's relative weight distance and clean-output drift on the
defender's prompts. A benign protocol is honest when benign drift spans the backdoored models'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBEDDED_ATTACK = ["training.attack.steps=50", "training.attack.clean_batch=32", "training.attack.poison_batch=16",
                   "training.attack.milestones=[40]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3, 1.5e-3], help="benign learning rates")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 160, 180], help="benign checkpoints")
    parser.add_argument("--prompts", type=int, default=200, help="defender prompts for the output drift")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "drift"))
    args = parser.parse_args()

    from attacks.job import run as attack
    from benign_ft.job import run as benign
    from core.drift import drift
    from core.bases import base_source
    from core.loading import load_encoder
    from core.prompts import make_prompt_source
    from sweeps.grid import compose_config

    out = Path(args.out)
    cfg0 = compose_config(["progress=false"])
    anchor = load_encoder(base_source(cfg0.encoder, False), "cpu")
    prompts = make_prompt_source(cfg0.prompts).load(args.prompts, seed=0, role="defender")
    rows = []
    for paradigm in ("text_on_text", "text_on_pair"):
        for length in (1, 3):
            d = out / "backdoor" / f"{paradigm}-L{length}"
            attack(compose_config(["job=attack", f"attack={paradigm}", f"attack.triggers.length={length}",
                                   f"job.out={d}", "progress=false", *EMBEDDED_ATTACK]), anchor=anchor)
            rows.append((f"backdoor {paradigm} L{length}", d))
    for lr in args.lr:
        d = out / f"benign-lr{lr:g}"
        benign(compose_config(["job=benign", f"training.benign.lr={lr}", f"job.out={d}", "progress=false",
                               "benign.train_prompts=500"]), anchor=anchor, steps=set(args.steps))
        rows += [(f"benign lr {lr:g} step {s}", d / f"step{s:05d}") for s in args.steps]
    print(f"\n{'model':34s} {'weight distance':>16s} {'output drift':>13s}")
    for name, d in rows:
        f = drift(load_encoder(str(d), "cpu"), anchor, prompts)
        print(f"{name:34s} {f['weight_distance']:16.4f} {f['output_drift']:13.4f}")


if __name__ == "__main__":
    main()
