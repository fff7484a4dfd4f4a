"""Build the three tiny bases from nothing, then again from the cache; print times and quality.

    python benchmarks/build_bases.py [--cache DIR]

Targets (issue: foundation): ≤ 3 min per base and ≤ 9 min in all on 2 cores, a cached call in
seconds, and clean-prompt assimilation of the pretrained tiny-clip clearly below a random-init one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

NAMES = ("tiny-clip", "tiny-longclip", "tiny-siglip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="cache directory (default: a fresh temporary one, i.e. a cold build)")
    args = parser.parse_args()
    os.environ["AMDET_CACHE"] = args.cache or tempfile.mkdtemp(prefix="amdet-bench-cache-")

    import torch

    from core.tiny.bases import get_base, spec_by_name

    print(f"cache: {os.environ['AMDET_CACHE']}  torch threads: {torch.get_num_threads()}")
    cold, warm = {}, {}
    t_all = time.perf_counter()
    for name in NAMES:
        t0 = time.perf_counter()
        path = get_base(spec_by_name(name), progress=False)
        cold[name] = (time.perf_counter() - t0, path)
    total = time.perf_counter() - t_all
    for name in NAMES:
        t0 = time.perf_counter()
        get_base(spec_by_name(name), progress=False)
        warm[name] = time.perf_counter() - t0

    print(f"\n{'base':<14} {'build s':>8} {'cached s':>9} {'assim':>7} {'random':>7} {'rho':>6}")
    for name in NAMES:
        seconds, path = cold[name]
        q = json.loads((path / "manifest.json").read_text())["build"]["quality"]
        print(f"{name:<14} {seconds:>8.1f} {warm[name]:>9.3f} {q['assimilation']:>7.3f} "
              f"{q['assimilation_random_init']:>7.3f} {q['spearman_vs_minilm']:>6.2f}")
    print(f"\nall three from nothing: {total:.1f} s ({total / 60:.2f} min; target ≤ 9 min)")
    print(f"all three from cache:   {sum(warm.values()):.2f} s")


if __name__ == "__main__":
    main()
