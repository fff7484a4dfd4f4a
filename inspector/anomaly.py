"""What the image-side trigger-inversion detectors share (CLIP-Inspector, Neural Cleanse, Pixel
Backdoor): the outlier rule over per-class statistics, the defender's image pool in batches, and the
picture of the reconstructed triggers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — after the headless backend is chosen
import numpy as np  # noqa: E402
import torch  # noqa: E402

MAD_CONSISTENCY = 1.4826  # makes the median absolute deviation a consistent estimator of σ (normal data)


def anomaly_indices(values, low: bool = True) -> np.ndarray:
    """Neural Cleanse's outlier rule: each value's distance from the median in units of the scaled
    median absolute deviation, counted on the suspicious side only (`low`: small values are
    suspicious, e.g. an easy class's loss or a small mask); the other side is 0."""
    v = np.asarray(values, dtype=np.float64)
    median = np.median(v)
    mad = MAD_CONSISTENCY * np.median(np.abs(v - median))
    mad = max(mad, 1e-12 * max(1.0, abs(median)))  # all equal: any difference is an outlier
    deviation = (median - v) if low else (v - median)
    return np.clip(deviation / mad, 0, None)


def batches(n: int, size: int, epochs: int, seed: int):
    """Index batches over `epochs` shuffled passes of n items (the last short batch kept)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        yield from order.split(size)


def save_triggers(path: Path, triggers: torch.Tensor, classes: list[str], flagged: int | None, title: str,
                  scale: float | None = None) -> Path:
    """One panel per class of the reconstructed trigger [C, 1, H, W] (diverging colours around 0 for
    additive perturbations), the flagged class framed in red."""
    c = len(classes)
    fig, axes = plt.subplots(1, c, figsize=(1.3 * c, 1.7))
    vmax = scale or float(triggers.abs().max()) or 1.0
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(triggers[i, 0].detach().cpu().numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(classes[i], fontsize=8, color="red" if i == flagged else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        if i == flagged:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
