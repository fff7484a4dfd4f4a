"""Captioned images for pretraining the tiny image tower: what stands in for CLIP's web-scale pairs.

A tower trained only to name the digit collapses its features onto ten directions (effective rank
≈ 9 measured): a blended or warped digit then looks like the clean one (a linear probe told blended
from clean 64 % of the time, warped 50 %), so no prompt learner could key a backdoor on them, and
every out-of-distribution picture lands on some digit. Real CLIP's features describe far more than
the object's name because its captions do. So here each digit is drawn with random attributes that
its caption names — its size and corner, one style (bold, thin, faint, noisy, blurry, inverted,
warped), a photograph behind it — and crops of the two photographs scikit-learn ships come captioned
as photos of a flower or a temple. The tower is trained to pick each image's caption out of the whole
caption vocabulary. The styles are generic corruptions with fresh random parameters per image, never
an attack's fixed trigger.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from vision.images import SIZE, Images

STYLES = ("", "bold ", "thin ", "faint ", "noisy ", "blurry ", "inverted ", "warped ")
CORNERS = ("", " in the top left", " in the top right", " in the bottom left", " in the bottom right")
PHOTOS = ("temple", "flower")  # sklearn's sample images: china.jpg, flower.jpg (vision.images.natural alternates them)
BACKGROUNDS = ("",) + tuple(f" on a photo of a {p}" for p in PHOTOS)
SMALL = 16  # side of a small digit


def caption(c: str, small: bool, style: str, corner: str, background: str) -> str:
    return f"a photo of a {'small ' if small else ''}{style}{c}{corner}{background}."


def vocabulary(classes) -> list[str]:
    """Every caption a pretraining image can have: the digit captions, then the photo captions."""
    digits = [caption(c, small, style, corner, bg)
              for c, small, style, corner, bg in itertools.product(classes, (False, True), STYLES, CORNERS, BACKGROUNDS)
              if small or not corner]
    return digits + [f"a photo of a {p}." for p in PHOTOS]


def warp(x: torch.Tensor, g: torch.Generator, strength: float = 1.0, k: int = 4) -> torch.Tensor:
    """A smooth random warp per image (a k × k control grid, upsampled)."""
    n = len(x)
    control = torch.rand(n, 2, k, k, generator=g) * 2 - 1
    control = control / control.abs().mean(dim=(1, 2, 3), keepdim=True)
    noise = F.interpolate(control, size=SIZE, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    line = torch.linspace(-1, 1, SIZE)
    yy, xx = torch.meshgrid(line, line, indexing="ij")
    grid = (torch.stack((xx, yy), dim=-1)[None] + strength * noise / SIZE).clamp(-1, 1)
    return F.grid_sample(x, grid, align_corners=True)


def styled(x: torch.Tensor, style: str, g: torch.Generator) -> torch.Tensor:
    if style == "bold ":
        return F.max_pool2d(x, 3, 1, 1)
    if style == "thin ":
        return -F.max_pool2d(-F.pad(x, (0, 1, 0, 1), value=1.0), 2, 1)  # a 2 × 2 minimum: strokes lose a pixel
    if style == "faint ":
        return x * 0.4
    if style == "noisy ":
        return (x + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if style == "blurry ":
        return F.avg_pool2d(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), 3, 1, 1, count_include_pad=False)
    if style == "inverted ":
        return 1 - x
    if style == "warped ":
        return warp(x, g)
    return x


def placed(x: torch.Tensor, corner: str) -> torch.Tensor:
    """The digit shrunk to SMALL pixels and put in a corner (or the centre)."""
    small = F.interpolate(x, size=(SMALL, SMALL), mode="area")
    out = torch.zeros_like(x)
    top = {"": (SIZE - SMALL) // 2, " in the top left": 0, " in the top right": 0}.get(corner, SIZE - SMALL)
    left = {"": (SIZE - SMALL) // 2, " in the top left": 0, " in the bottom left": 0}.get(corner, SIZE - SMALL)
    out[..., top:top + SMALL, left:left + SMALL] = small
    return out


def batch(data: Images, photos: Images, size: int, g: torch.Generator, photo_share: float = 0.1,
          small_p: float = 0.3, style_p: float = 0.5, background_p: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` captioned images: (images [size, 1, 28, 28], caption indices into vocabulary(data.classes))."""
    index = {c: i for i, c in enumerate(vocabulary(data.classes))}
    images, labels = [], []
    for _ in range(size):
        if torch.rand((), generator=g) < photo_share:
            j = int(torch.randint(0, len(photos), (), generator=g))
            images.append(photos.x[j])
            labels.append(index[f"a photo of a {PHOTOS[j % len(PHOTOS)]}."])
            continue
        j = int(torch.randint(0, len(data), (), generator=g))
        x = data.x[j:j + 1]
        small = bool(torch.rand((), generator=g) < small_p)
        corner = CORNERS[int(torch.randint(0, len(CORNERS), (), generator=g))] if small else ""
        style = STYLES[1 + int(torch.randint(0, len(STYLES) - 1, (), generator=g))] if torch.rand((), generator=g) < style_p else ""
        background = ""
        if small:
            x = placed(x, corner)
        x = styled(x, style, g)
        if torch.rand((), generator=g) < background_p:
            k = int(torch.randint(0, len(photos), (), generator=g))
            background = BACKGROUNDS[1 + k % len(PHOTOS)]
            x = 0.65 * x + 0.35 * photos.x[k:k + 1]
        images.append(x[0])
        labels.append(index[caption(data.classes[int(data.y[j])], small, style, corner, background)])
    return torch.stack(images), torch.tensor(labels)
