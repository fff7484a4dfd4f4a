"""Caption ↔ image pairs for benign contrastive fine-tuning, with the frozen image side precomputed.

Real encoders: a COCO-style annotation file and its image folder, embedded once by the frozen image
tower of the same checkpoint and cached for every later run (core/image_cache.py). Tiny encoders:
prompts from the configured source, each paired with the paired tower's embedding of it (the tiny
world's "image" of a caption).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.image_cache import image_embeddings, read_safetensors
from core.image_tower import coco_pairs
from core.store import atomic_write
from core.tiny.paired_tower import paired_tower


@dataclass
class PairSet:
    captions: list[str]
    images: torch.Tensor  # [N, P] frozen image-side embeddings, row i pairs with captions[i]
    logit_scale: torch.Tensor  # log temperature of the contrastive loss (frozen)
    logit_bias: torch.Tensor | None  # SigLIP's sigmoid bias (frozen), None for CLIP
    source: str

    def __post_init__(self):
        if len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.captions)} captions but {len(self.images)} image embeddings")
        if not torch.isfinite(self.images).all():
            raise ValueError(f"non-finite image embeddings from {self.source}; check the images and the image tower")


def tiny_pairs(captions: list[str], logit_scale: float, logit_bias: float | None, keep: Path | None = None) -> PairSet:
    """`captions` paired with the paired tower's embedding of each. `keep`: a folder the embeddings are kept
    in, by the captions' hash, and read back from (a checkpoints run's later jobs reuse the pairs its first
    job embedded: the same run, and 10-20 s of MiniLM a job at one CPU thread saved)."""
    return PairSet(
        captions, kept_embeddings(captions, keep), torch.tensor(float(logit_scale)),
        None if logit_bias is None else torch.tensor(float(logit_bias)), "tiny world: paired tower (MiniLM) of each caption",
    )


def kept_embeddings(captions: list[str], keep: Path | None) -> torch.Tensor:
    if keep is None:
        return paired_tower().embed(captions)
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()
    path = keep / f"pairs-{digest[:16]}.safetensors"
    kept = read_safetensors(path, "benign pairs", warn=True)  # absent or unreadable: embedded again
    if kept is not None and "images" in kept:
        return kept["images"]
    images = paired_tower().embed(captions)
    with atomic_write(path) as tmp:
        save_file({"images": images.contiguous()}, str(tmp))
    return images


def coco_pair_set(annotation_file: str | None, image_dir: str | None, image_tower: str | None,
                  limit: int | None = None, progress: bool = True, device: str = "cpu") -> PairSet:
    """The first `limit` COCO pairs; only their images are embedded (on `device`), and only those the
    shared cache (core.image_cache) lacks."""
    if not annotation_file or not image_dir:
        raise ValueError(
            "benign fine-tuning of a real encoder needs image-caption pairs; set benign.pairs.annotation_file="
            "<captions_*.json> and benign.pairs.image_dir=<its image folder>"
        )
    if not image_tower:
        raise ValueError("benign fine-tuning needs the frozen image tower; set benign.image_tower=<two-tower checkpoint>")
    pairs = coco_pairs(annotation_file, image_dir, limit)
    unique = sorted({p.image for p in pairs})  # each image is embedded once, however many captions it has
    row = {path: i for i, path in enumerate(unique)}
    embedded = image_embeddings(image_tower, unique, device, progress)
    images = embedded.rows[[row[p.image] for p in pairs]]
    return PairSet([p.caption for p in pairs], images, embedded.logit_scale, embedded.logit_bias,
                   f"{annotation_file} ({len(pairs)} captions, {len(unique)} images) through {image_tower}; "
                   f"{embedded.describe()}")
