"""The tiny two-tower CLIP of the vision-language world: a frozen tiny text tower (the embedded
`tiny-clip` base) and a small ViT image tower trained against it on real images (MNIST's `tower`
share, vision/images.py), saved as a real `CLIPModel` checkpoint (safetensors, config, tokenizer,
image-processor config) that transformers, core.loading.load_encoder (its text half) and
core.image_tower.load_image_tower (its image half) all read.

The image tower learns what CLIP's pretraining gives a real one: images land near the text
embedding of a caption of their class. Each step draws a caption template per batch
("a photo of a {}." …), so zero-shot classification works with any of them and prompt tuning has
something to improve. Built once and cached under a content address (spec, text base, code,
library versions), like the tiny text bases; concurrent builders wait on a lock.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig

from core.bases import base_source
from core.cache import cache_root
from core.encoders import TextEncoder
from core.loading import load_encoder
from core.precision import full_precision
from core.provenance import config_hash, provenance, source_hash
from core.store import write_json_atomic
from vision import captions
from vision.images import MEAN, STD, Images, mnist, natural, pixels

BUILD_SOURCES = ("vision/tower.py", "vision/images.py", "vision/captions.py")
REPORT = "tower.json"
TEMPLATES = ("a photo of a {}.", "a photo of the number {}.", "a handwritten {}.", "the digit {}.", "{}")


@dataclass(frozen=True)
class TowerSpec:
    """How to build the image tower (the `vision.tower` block)."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    ffn: int = 256
    patch: int = 4
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    photo_crops: int = 2000  # crops of the two photographs, captioned as such
    seed: int = 0
    templates: tuple[str, ...] = field(default=TEMPLATES)

    @classmethod
    def from_config(cls, node) -> TowerSpec:
        d = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        d["templates"] = tuple(d.get("templates") or TEMPLATES)
        return cls(**d)


def tower_dir(cfg: DictConfig, progress: bool = True) -> Path:
    """The two-tower checkpoint of `cfg.vision`: a real one (`vision.name_or_path`), or the tiny one,
    built on first use against the text tower of `cfg.encoder`."""
    if cfg.vision.get("name_or_path"):
        return Path(cfg.vision.name_or_path)
    spec = TowerSpec.from_config(cfg.vision.tower)
    text_dir = Path(base_source(cfg.encoder, progress))
    key = config_hash({"spec": asdict(spec), "text": text_dir.name, "code": source_hash(*BUILD_SOURCES),
                       "torch": importlib.metadata.version("torch"),
                       "transformers": importlib.metadata.version("transformers")})
    target = cache_root() / "towers" / f"{cfg.vision.name}-{key}"
    if (target / REPORT).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / REPORT).exists():  # another process may have built it while we waited
            with full_precision():  # cached: the same whatever precision the run that builds it uses
                build(spec, text_dir, target, progress)
    return target


def build(spec: TowerSpec, text_dir: Path, target: Path, progress: bool = True) -> dict:
    """Train an image tower against the frozen text tower of `text_dir`; save the two-tower checkpoint."""
    t0 = time.perf_counter()
    text = load_encoder(text_dir)
    torch.manual_seed(spec.seed)
    model = two_tower(text, spec)
    data = mnist("tower")
    photos = natural(spec.photo_crops, seed=spec.seed + 1)
    vocabulary = captions.vocabulary(data.classes)
    with torch.no_grad():
        texts = embed_captions(text, vocabulary)  # [captions, P]
    params = [*model.vision_model.parameters(), *model.visual_projection.parameters(), model.logit_scale]
    optimiser = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    # a tenth of the steps warm up (at least a few: OneCycleLR divides by the warm-up's length)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=spec.lr, total_steps=spec.steps,
                                                   pct_start=max(0.1, 2.5 / spec.steps))
    g = torch.Generator().manual_seed(spec.seed)
    losses = []
    model.train()
    for step in tqdm(range(spec.steps), desc="tiny image tower", disable=not progress):
        x, caption = captions.batch(data, photos, spec.batch_size, g)
        logits = model.logit_scale.exp().clamp(max=100) * image_features(model, x) @ texts.T
        loss = F.cross_entropy(logits, caption)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    report = {"kind": "two_tower", "text_base": str(text_dir), "spec": asdict(spec), "classes": list(data.classes),
              "captions": len(vocabulary), "build_s": round(time.perf_counter() - t0, 1), "loss_first": losses[0],
              "loss_last": losses[-1], "zero_shot_accuracy": zero_shot(model, text, mnist("test"), spec.templates)}
    save(model, text, target, report)
    return report


def embed_captions(text: TextEncoder, vocabulary: list[str], rows: int = 256) -> torch.Tensor:
    return torch.cat([F.normalize(text.text_embeds(text.tokenize(vocabulary[i:i + rows])), dim=-1)
                      for i in range(0, len(vocabulary), rows)])


def image_features(model: CLIPModel, x: torch.Tensor) -> torch.Tensor:
    """Normalised projected image embeddings [B, P] of images in [0, 1]."""
    return F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels(x)).pooler_output), dim=-1)


def two_tower(text: TextEncoder, spec: TowerSpec) -> CLIPModel:
    """A CLIPModel whose text half is the given tower's (copied) and whose image half is fresh."""
    tc = text.model.config
    vision = CLIPVisionConfig(hidden_size=spec.hidden, intermediate_size=spec.ffn, num_hidden_layers=spec.layers,
                              num_attention_heads=spec.heads, image_size=28, patch_size=spec.patch, num_channels=3,
                              projection_dim=tc.projection_dim)
    config = CLIPConfig(text_config=tc.to_dict(), vision_config=vision.to_dict(), projection_dim=tc.projection_dim)
    model = CLIPModel(config)
    model.text_model.load_state_dict(text.model.text_model.state_dict())
    model.text_projection.load_state_dict(text.model.text_projection.state_dict())
    model.text_model.requires_grad_(False)
    model.text_projection.requires_grad_(False)
    return model


def class_prompts(text: TextEncoder, classes, templates) -> torch.Tensor:
    """Normalised text embeddings [templates, classes, P] of every template filled with every class."""
    out = []
    for template in templates:
        ids = text.tokenize([template.format(c) for c in classes])
        out.append(F.normalize(text.text_embeds(ids), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def zero_shot(model: CLIPModel, text: TextEncoder, data: Images, templates) -> dict:
    """Zero-shot accuracy on `data` with each template."""
    img = image_features(model, data.x)
    prompts = class_prompts(text, data.classes, templates)
    return {t: round(((img @ p.T).argmax(-1) == data.y).float().mean().item(), 4) for t, p in zip(templates, prompts)}


def save(model: CLIPModel, text: TextEncoder, target: Path, report: dict) -> None:
    """The checkpoint, written into a temporary directory and renamed (atomic)."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        for f in tmp.iterdir():
            f.unlink()
    model.save_pretrained(tmp, safe_serialization=True)
    text.tokenizer.save_pretrained(tmp)
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_mean=[MEAN] * 3,
                       image_std=[STD] * 3, do_rescale=True).save_pretrained(tmp)
    write_json_atomic(tmp / REPORT, {**report, "provenance": provenance()})  # who built it: the world depends on the machine
    tmp.rename(target)


def read_report(directory: Path) -> dict:
    path = Path(directory) / REPORT
    return json.loads(path.read_text()) if path.is_file() else {}
