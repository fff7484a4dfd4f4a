"""The frozen image tower of a real two-tower checkpoint (CLIP, LongCLIP, SigLIP), and the image data it reads.

Real models need it twice:
- Text-on-Pair attacks: the target is the mean (L2-normalised) image embedding of a folder of images
  of the target concept (`concept_embedding`, `concept_mean`);
- benign contrastive fine-tuning: COCO-style caption/image pairs (`coco_pairs`), whose image
  embeddings are computed once with the frozen tower (`ImageTower.embed_images`).

Loading follows core.loading: weights from `.safetensors` only, and every failure is one line that
names what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, CLIPModel, SiglipModel

from core.encoders import family_of
from core.errors import first_line, one_line
from core.loading import ModelLoadError, checked_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

TWO_TOWER = {"clip": CLIPModel, "siglip": SiglipModel}  # LongCLIP checkpoints are CLIPModel too
HALF_TOWER = {  # one tower alone: no image tower, or no learnt temperature shared with the text side
    "clip_text_model": "text-only",
    "siglip_text_model": "text-only",
    "clip_vision_model": "vision-only",
    "siglip_vision_model": "vision-only",
}
FIX_HINT = "pass the full two-tower checkpoint (e.g. attack.image_tower=openai/clip-vit-large-patch14)"


class ImageTower:
    """The frozen image half of a CLIP-family or SigLIP checkpoint: images -> projected embeddings."""

    def __init__(self, model: CLIPModel | SiglipModel, processor, family: str):
        # keep only the vision half: the text tower of a real checkpoint is large and unused here
        self.vision = model.vision_model
        # CLIP projects the pooled state with a separate linear layer; SigLIP's attention-pooling head
        # already outputs the shared embedding space (pooler_output), so there is nothing to add
        self.projection = model.visual_projection if isinstance(model, CLIPModel) else None
        self.processor = processor
        self.family = family  # "clip" / "longclip" / "siglip", as core.encoders names it
        if self.projection is not None:
            self.dim: int = model.config.projection_dim
        else:
            self.dim = model.config.vision_config.hidden_size
        # SigLIP stores its scale and bias with shape [1]; callers get 0-d tensors for both families
        self.logit_scale: torch.Tensor = model.logit_scale.detach().float().reshape(()).cpu().clone()
        bias = getattr(model, "logit_bias", None)
        self.logit_bias: torch.Tensor | None = (
            None if bias is None else bias.detach().float().reshape(()).cpu().clone()
        )

    @property
    def device(self) -> torch.device:
        return next(self.vision.parameters()).device

    def to(self, device: str | torch.device) -> ImageTower:
        self.vision.to(device)
        if self.projection is not None:
            self.projection.to(device)
        return self

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, dim] projected embeddings of processed pixels (CLIP: get_image_features; SigLIP: pooler_output)."""
        pooled = self.vision(pixel_values=pixel_values.to(self.device, torch.float32)).pooler_output
        return pooled if self.projection is None else self.projection(pooled)

    def embed_images(self, paths: list[Path], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """[N, dim] projected image embeddings (not normalised), float32 on CPU; tqdm bar when progress."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        paths = [Path(p) for p in paths]
        rows: list[torch.Tensor] = []
        with tqdm(total=len(paths), desc="embedding images", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                batch = paths[start : start + batch_size]
                pixels = self.processor(images=[load_rgb(p) for p in batch], return_tensors="pt")["pixel_values"]
                rows.append(self.embed_pixels(pixels).float().cpu())
                bar.update(len(batch))
        return torch.cat(rows) if rows else torch.empty(0, self.dim)


def load_image_tower(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> ImageTower:
    """Load the frozen image tower, temperature (and SigLIP bias) and image processor of a two-tower checkpoint."""
    source, config = checked_config(name_or_path)
    model_type = getattr(config, "model_type", "")
    if model_type in HALF_TOWER:
        raise ModelLoadError(
            f"'{source}' is a {HALF_TOWER[model_type]} checkpoint ({model_type}), but the image tower of the same "
            f"two-tower model is needed (with its learnt temperature); {FIX_HINT}"
        )
    if model_type not in TWO_TOWER:
        raise ModelLoadError(
            f"unsupported model type '{model_type}' in '{source}': the image tower must come from a CLIP, LongCLIP "
            f"or SigLIP two-tower checkpoint; {FIX_HINT}"
        )
    if model_type == "siglip" and not config.vision_config.vision_use_head:
        raise ModelLoadError(
            f"'{source}' is a SigLIP checkpoint without a vision head (vision_use_head=false), so it has no pooled "
            f"image embedding; {FIX_HINT}"
        )
    family = family_of(config).name
    # the processor first: it is cheap, and a missing one should not cost loading a large model.
    # backend="pil": transformers would pick its torchvision backend where torchvision is installed, and
    # that resizes slightly differently; pinning it keeps targets and cached embeddings machine-independent
    try:
        processor = AutoImageProcessor.from_pretrained(source, backend="pil")
    except Exception as exc:
        raise ModelLoadError(
            f"no usable image processor in '{source}' ({one_line(exc)}); the checkpoint "
            "needs its preprocessor_config.json (save it with image_processor.save_pretrained(dir))"
        ) from None
    try:
        model, info = TWO_TOWER[model_type].from_pretrained(
            source, use_safetensors=True, dtype=torch.float32, output_loading_info=True
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {family} two-tower model from '{source}': {one_line(exc)}"
        ) from None
    # transformers fills missing weights with random values and only warns: a random image tower would
    # silently give meaningless targets, so any missing weight of the parts we use is an error
    used = ("vision_model.", "visual_projection.", "logit_scale", "logit_bias")
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(used))
    if missing:
        raise ModelLoadError(
            f"'{source}' lacks {len(missing)} image-tower weight(s) (first: {missing[0]}), e.g. a text-only "
            f"checkpoint with a two-tower config; {FIX_HINT}"
        )
    model.eval().requires_grad_(False)
    return ImageTower(model, processor, family).to(device)


def load_rgb(path: Path) -> Image.Image:
    """An image file as RGB; a missing, corrupt or unreadable file is a one-line ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() decodes the whole file, so truncation shows up here
    except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, DecompressionBombError, ...
        raise ValueError(
            f"cannot read image '{path}' ({one_line(exc)}); remove or replace the file"
        ) from None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in `folder`, sorted by name so the target does not depend on listing order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"image folder '{folder}' {what}; set the image folder of the target concept")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"no images in '{folder}' (looked for {', '.join(IMAGE_SUFFIXES)}); put images of the target concept there"
        )
    return files


def concept_dirname(concept: str) -> str:
    """The folder name of a concept's images: lower case, runs of non-word characters as one `_`."""
    return re.sub(r"\W+", "_", concept.strip().lower()).strip("_")


def concept_embedding(tower: ImageTower, folder: str | os.PathLike) -> torch.Tensor:
    """[dim]: the mean of the L2-normalised image embeddings of the concept's images (not renormalised)."""
    return concept_mean(tower.embed_images(image_files(folder)))


def concept_mean(rows: torch.Tensor) -> torch.Tensor:
    """[dim]: the mean of the L2-normalised rows [N, dim] (not renormalised), a concept's target."""
    return F.normalize(rows, dim=-1).mean(dim=0)


@dataclass
class CaptionPair:
    caption: str
    image: Path
    image_id: int


def coco_pairs(
    annotation_file: str | os.PathLike, image_dir: str | os.PathLike, limit: int | None = None
) -> list[CaptionPair]:
    """Caption/image pairs of a COCO captions annotation file, in annotation order; empty captions skipped.

    Only the images of the returned pairs must exist on disk, so `limit` works on a partial download.
    """
    annotation_file, image_dir = Path(annotation_file).expanduser(), Path(image_dir).expanduser()
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file '{annotation_file}' does not exist; pass a captions_*.json file")
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{annotation_file}' is not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"'{annotation_file}' is not a COCO annotation file: the top level must be a JSON object")
    missing = [key for key in ("images", "annotations") if not isinstance(data.get(key), list)]
    if missing:
        raise ValueError(
            f"'{annotation_file}' lacks the list(s) {', '.join(repr(k) for k in missing)}; "
            "COCO captions need 'images' and 'annotations'"
        )
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder '{image_dir}' does not exist; pass the folder of the image files")

    file_of: dict[int, str] = {}
    for i, entry in enumerate(data["images"]):
        _require_keys(entry, ("id", "file_name"), f"images[{i}]", annotation_file)
        file_of[entry["id"]] = entry["file_name"]
    pairs: list[CaptionPair] = []
    for i, entry in enumerate(data["annotations"]):
        if limit is not None and len(pairs) >= limit:
            break
        _require_keys(entry, ("image_id", "caption"), f"annotations[{i}]", annotation_file)
        if entry["image_id"] not in file_of:
            raise ValueError(
                f"annotations[{i}] in '{annotation_file}' refers to image_id {entry['image_id']!r}, which is not in 'images'"
            )
        if not isinstance(entry["caption"], str):
            raise ValueError(f"annotations[{i}] in '{annotation_file}' has a caption that is not a string")
        caption = entry["caption"].strip()
        if caption:
            pairs.append(CaptionPair(caption, image_dir / file_of[entry["image_id"]], entry["image_id"]))

    absent = sorted({p.image for p in pairs if not p.image.is_file()})
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} image file(s) referenced by '{annotation_file}' are missing from '{image_dir}' "
            f"(first: '{absent[0]}'); download them or pass a smaller limit"
        )
    return pairs


def _require_keys(entry, keys: tuple[str, ...], where: str, source: Path) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} in '{source}' is not a JSON object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where} in '{source}' lacks the key(s) {', '.join(repr(k) for k in missing)}")
