"""Time and peak memory per step of every phase, at the real shapes of CLIP ViT-L/14, LongCLIP-L and
SigLIP so400m (random-initialised stand-ins, core/real_shapes.py), and the FLOP model checked against
them: the achieved GFLOP/s of each phase (sweeps/flops.py counts the FLOPs).

    python benchmarks/real_shapes.py [--families clip-l longclip-l siglip] [--device cpu] [--repeats 3]

Phases, each the real code's unit of work: a forward row (no grad), a training step (forward +
backward with weight gradients and an AdamW step, as attacks and benign fine-tuning), an inversion
step (AMDET's loss through model and anchor, gradient to v only), a landscape point (float64
forward of model and anchor), an image-tower image. If the achieved rate is about the same across
families, FLOPs predict time, and the cost model's GPU figures rest on that (one rate per machine).
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amdet.inversion import LossWeights, inversion_loss  # noqa: E402
from core.image_tower import load_image_tower  # noqa: E402
from core.loading import load_encoder  # noqa: E402
from core.prompts.synthetic import generate_synthetic_prompts  # noqa: E402
from core.real_shapes import SHAPES, real_shape_checkpoint  # noqa: E402
from sweeps.flops import text_shape, vision_shape  # noqa: E402


class PeakRSS:
    """Peak resident memory (GB) while the block runs, sampled every 5 ms from /proc (CPU), or
    torch.cuda.max_memory_allocated on a GPU."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e9

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated() / 1e9


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """(median seconds of fn after one warm-up call, peak memory GB)."""
    fn()
    times = []
    with PeakRSS(device) as mem:
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], mem.peak


def bench_family(name: str, device: str, repeats: int, batch: int) -> list[dict]:
    directory, shape = real_shape_checkpoint(name), SHAPES[name]
    F = text_shape(shape.text).forward
    rows = []

    def report(phase: str, measured: tuple[float, float], flops: float, unit: str):
        seconds, peak = measured
        rows.append({"family": name, "phase": phase, "seconds": seconds, "unit": unit, "peak_gb": peak,
                     "gflops": flops / 1e9, "gflop_s": flops / seconds / 1e9})

    model, anchor = load_encoder(directory, device), load_encoder(directory, device)
    ids = model.tokenize(generate_synthetic_prompts(batch, seed=3))
    report("forward", forward_step(model, ids, repeats, device), F * batch, f"{batch} rows")
    report("training step", training_step(directory, ids, repeats, device), 3 * F * batch, f"{batch} rows + AdamW")
    report("inversion step", inversion_step(model, anchor, ids, repeats, device), 4 * F * batch, f"{batch} rows, model + anchor")
    report("landscape point", landscape_point(model, anchor, ids, repeats, device), 2 * F, "1 row × 2 models, float64")
    del model, anchor
    pixels = torch.rand(batch, 3, shape.image_size, shape.image_size)
    report("image embedding", image_step(directory, pixels, repeats, device),
           vision_shape(shape.vision).forward * batch, f"{batch} images")
    return rows


@torch.no_grad()
def forward_step(model, ids, repeats, device):
    return timed(lambda: model(ids), repeats, device)


def training_step(directory, ids, repeats, device):
    """Forward + backward with weight gradients and an AdamW step, as attacks and benign fine-tuning."""
    train = load_encoder(directory, device).requires_grad_(True)
    opt = torch.optim.AdamW(train.parameters(), lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        train(ids).float().pow(2).mean().backward()
        opt.step()

    return timed(step, repeats, device)


def inversion_step(model, anchor, ids, repeats, device):
    """AMDET's loss through model and anchor, the gradient to v only."""
    with torch.no_grad():
        hidden, output = model.embed(ids), model(ids)
    v = torch.randn(1, model.hidden_size, device=device, requires_grad=True)
    return timed(lambda: inversion_loss(model, anchor, hidden, output, v, LossWeights())[0].backward(), repeats, device)


@torch.no_grad()
def landscape_point(model, anchor, ids, repeats, device):
    """One grid point of the landscape: a float64 forward of model and anchor (on copies)."""
    hidden = model.embed(ids[:1]).double()
    model64, anchor64 = copy.deepcopy(model).double(), copy.deepcopy(anchor).double()
    return timed(lambda: (model64.encode(hidden), anchor64.encode(hidden)), repeats, device)


def image_step(directory, pixels, repeats, device):
    tower = load_image_tower(directory, device)
    return timed(lambda: tower.embed_pixels(pixels), repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="rows per step (the paper's scan uses 10)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'family':<11} {'phase':<16} {'s/step':>8} {'per':<26} {'GFLOP':>8} {'GFLOP/s':>8} {'peak GB':>8}")
    for name in args.families:
        for r in bench_family(name, args.device, args.repeats, args.batch):
            print(f"{r['family']:<11} {r['phase']:<16} {r['seconds']:>8.3f} {r['unit']:<26} {r['gflops']:>8.1f} "
                  f"{r['gflop_s']:>8.1f} {r['peak_gb']:>8.2f}")


if __name__ == "__main__":
    main()
