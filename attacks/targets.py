"""Backdoor targets: what a triggered prompt is made to produce.

- Text-on-Text: the clean encoder's full last_hidden_state [L, D] of a target prompt.
- Text-on-Pair: the mean projected image embedding [P] of images of a target concept, taken from
  the frozen image tower of the same two-tower checkpoint (a folder of images per concept). The
  tiny world has no images: an "image" of a concept is a caption of it, embedded by the paired tower
  (`core/tiny/paired_tower.py`), as upstream used ten generated images of the target prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.encoders import TextEncoder
from core.image_cache import image_embeddings
from core.image_tower import concept_dirname, concept_mean, image_files
from core.tiny.paired_tower import paired_tower

PARADIGMS = ("text_on_text", "text_on_pair")
# ten "images" of a concept in the tiny world, like upstream's ten generated images per target
CONCEPT_CAPTIONS = (
    "a photo of a {}", "a close-up photo of a {}", "a painting of a {}", "a bright photo of a {}",
    "a drawing of a {}", "a {} in the wild", "a blurry photo of a {}", "a photo of the large {}",
    "a rendering of a {}", "a photo of a small {}",
)


@dataclass
class Target:
    text: str  # the target prompt (Text-on-Text) or concept (Text-on-Pair)
    feature: torch.Tensor  # [L, D] hidden states or [P] embedding
    source: str  # where the feature came from, for the manifest

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "shape": list(self.feature.shape)}


def check_paradigm(paradigm: str) -> None:
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown attack paradigm '{paradigm}'; choose attack=text_on_text or attack=text_on_pair")


def draw_targets(pool: list[str], count: int, seed: int, fixed: list[str] | None = None) -> list[str]:
    """`count` distinct targets: the `fixed` ones or a seeded draw from `pool`."""
    if fixed:
        texts = [str(t) for t in fixed]
        if len(texts) != count:
            raise ValueError(f"attack.targets.fixed lists {len(texts)} targets but there are {count} backdoors")
    else:
        pool = list(dict.fromkeys(str(p) for p in pool))
        if len(pool) < count:
            raise ValueError(f"the target pool has {len(pool)} distinct entries but {count} backdoors need their own; add targets to the pool")
        texts = random.Random(f"targets-{seed}").sample(pool, count)
    if len(set(texts)) != len(texts):
        raise ValueError(f"two backdoors share a target ({texts}); give each backdoor its own target")
    return texts


@torch.no_grad()
def text_target(anchor: TextEncoder, prompt: str) -> Target:
    """Text-on-Text: f0(target prompt), the full last_hidden_state."""
    return Target(prompt, anchor(anchor.tokenize([prompt]))[0].float().cpu(), "anchor last_hidden_state")


def concept_folder(image_dir: str | None, concept: str) -> Path:
    if not image_dir:
        raise ValueError(
            "text_on_pair on a real encoder needs images of each target concept; "
            "set attack.targets.image_dir=<folder with one subfolder of images per concept>"
        )
    return Path(image_dir).expanduser() / concept_dirname(concept)


def pair_target(anchor: TextEncoder, concept: str, tiny: bool, image_dir: str | None, image_tower: str | None,
                device: str = "cpu") -> Target:
    """Text-on-Pair: the mean normalised image-tower embedding of the concept (real encoders: its
    images' rows from the shared cache, core/image_cache.py, embedded on `device` when missing)."""
    if tiny:
        captions = [c.format(concept) for c in CONCEPT_CAPTIONS]
        feature = F.normalize(paired_tower().embed(captions), dim=-1).mean(0)
        source = f"paired tower: {len(captions)} captions of '{concept}'"
    else:
        folder = concept_folder(image_dir, concept)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder for target concept '{concept}' not found: {folder}; "
                "put images of the concept there or set attack.targets.image_dir"
            )
        if not image_tower:
            raise ValueError("text_on_pair needs the image tower; set attack.image_tower=<two-tower checkpoint>")
        embedded = image_embeddings(image_tower, image_files(folder), device)
        feature = concept_mean(embedded.rows)
        source = f"image tower {image_tower}: {folder}; {embedded.describe()}"
    dim = anchor.project(torch.zeros(1, anchor.hidden_size, device=anchor.device)).shape[-1]
    if feature.shape[-1] != dim:
        raise ValueError(
            f"target embedding for '{concept}' is {feature.shape[-1]}-d but the encoder's text_embeds are {dim}-d; "
            "use the image tower of the same checkpoint (attack.image_tower)"
        )
    return Target(concept, feature.float().cpu(), source)
