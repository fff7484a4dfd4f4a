"""Local checkpoints with the real shapes of the paper's encoders, random-initialised: a stand-in for the
hub checkpoints on a machine that cannot reach the hub.

Each is the full two-tower model of the real checkpoint, built from its configuration with the real
transformers classes (CLIPModel, SiglipModel), with its image processor and tokenizer class, saved
as safetensors, so every real-encoder code path (core.loading, core.image_tower, attacks, benign
fine-tuning, the scan) runs on it exactly as on the downloaded model, at the same cost per step:

- clip-l: openai/clip-vit-large-patch14 (text 12 × 768, 77 positions; vision ViT-L/14 at 224);
- longclip-l: LongCLIP-L (CLIP-L with 248 text positions);
- siglip: google/siglip-so400m-patch14-384 (text 27 × 1152, 64 positions; vision 27 × 1152 at 384),
  with a SiglipTokenizer over a BPE sentencepiece model of 8,000 pieces built here from the synthetic
  prompt generator and the trigger pools (the real one has 32,000 pieces; the embedding matrix keeps
  the real 32,000 rows, and detectors choose tokens only among the tokenizer's).

The weights are random: these checkpoints measure cost and exercise code, never detection quality.
Built once per (shape, building code, transformers version) into $AMDET_CACHE/real_shapes, under a
file lock. `python -m core.real_shapes clip-l` builds one and prints its directory. In configs:
`encoder.name_or_path=${real_shape:clip-l}` (the resolver of sweeps.naming), and
`${real_shape_images:}` for a drawn COCO-style caption set and concept folders (`write_image_data`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
import torch
import yaml
import transformers
from filelock import FileLock
from PIL import Image, ImageDraw
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipTokenizer,
)

from core.cache import cache_root
from core.image_tower import concept_dirname
from core.prompts.synthetic import generate_synthetic_prompts
from core.provenance import config_hash, source_hash
from core.tiny.tokenizer import clip_tokenizer

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Shape:
    """One real checkpoint's configuration, as in its hub config.json (only what differs from the defaults)."""

    name: str
    hub_id: str  # the checkpoint this stands in for
    family: str  # clip | siglip (the two-tower model class; LongCLIP is a CLIPModel)
    text: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)
    top: dict = field(default_factory=dict)
    image_size: int = 224


CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    projection_dim=768,
)
CLIP_L_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, hidden_act="quick_gelu", projection_dim=768,
)
SIGLIP_SO400M_TEXT = dict(
    vocab_size=32000, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
    max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, projection_size=1152,
    pad_token_id=1, eos_token_id=1, bos_token_id=None,
)
SIGLIP_SO400M_VISION = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
    patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
)

SHAPES: dict[str, Shape] = {
    "clip-l": Shape("clip-l", "openai/clip-vit-large-patch14", "clip", CLIP_L_TEXT, CLIP_L_VISION, {"projection_dim": 768}),
    "longclip-l": Shape(
        "longclip-l", "zer0int/LongCLIP-L-Diffusers", "clip",
        {**CLIP_L_TEXT, "max_position_embeddings": 248, "eos_token_id": 49407, "pad_token_id": 49407, "bos_token_id": 49406},
        CLIP_L_VISION, {"projection_dim": 768},
    ),
    "siglip": Shape(
        "siglip", "google/siglip-so400m-patch14-384", "siglip", SIGLIP_SO400M_TEXT, SIGLIP_SO400M_VISION, {}, 384,
    ),
}

SENTENCEPIECE_PROMPTS = 20_000  # synthetic prompts the SigLIP stand-in's sentencepiece model is trained on
# and the attacks' pools, so that their triggers are pieces of the vocabulary, as in a web-trained one
POOLS = Path(__file__).resolve().parents[1] / "conf" / "pools" / "default.yaml"
POOL_LINES = [" ".join(map(str, v)) if isinstance(v, list) else str(v)
              for v in yaml.safe_load(POOLS.read_text(encoding="utf-8")).values()]


def shape_of(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown real shape '{name}'; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


def model_config(shape: Shape):
    """The transformers config of the two-tower checkpoint."""
    if shape.family == "siglip":  # (its constructor warns about the default text ids before it sets ours)
        return SiglipConfig(text_config=dict(shape.text), vision_config=dict(shape.vision), **shape.top)
    return CLIPConfig(text_config=dict(shape.text), vision_config=dict(shape.vision), **shape.top)


def image_processor(shape: Shape):
    """The checkpoint's image processor (the PIL backend, as core.image_tower loads it)."""
    if shape.family == "siglip":  # so400m: a plain 384 × 384 resize, mean and std 0.5
        return SiglipImageProcessorPil(size={"height": shape.image_size, "width": shape.image_size})
    return CLIPImageProcessorPil(
        size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )


def siglip_tokenizer(folder: Path, max_length: int) -> SiglipTokenizer:
    """A SiglipTokenizer over a BPE sentencepiece model trained here on synthetic prompts and the
    trigger pools (conf/pools/default.yaml), with SigLIP's special ids (pad 0, eos 1, unk 2, no BOS)."""
    corpus = folder / "corpus.txt"
    lines = generate_synthetic_prompts(SENTENCEPIECE_PROMPTS, seed=0) + POOL_LINES * 20
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), model_type="bpe", vocab_size=8000,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    corpus.unlink()
    return SiglipTokenizer(str(folder / "spiece.model"), model_max_length=max_length)


def build(shape: Shape, out: Path, seed: int = 0) -> None:
    """Write the random-initialised checkpoint (model, processor, tokenizer) into `out`."""
    torch.manual_seed(seed)
    config = model_config(shape)
    model = (SiglipModel if shape.family == "siglip" else CLIPModel)(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    image_processor(shape).save_pretrained(out)
    max_length = shape.text["max_position_embeddings"]
    if shape.family == "siglip":
        tokenizer = siglip_tokenizer(out, max_length)
    else:
        tokenizer = clip_tokenizer(max_length)
    tokenizer.save_pretrained(out)


def cache_key(shape: Shape, seed: int) -> str:
    return config_hash(
        {"shape": shape.__dict__, "seed": seed, "code": source_hash("core/real_shapes.py", "conf/pools/default.yaml"),
         "transformers": transformers.__version__, "torch": torch.__version__},
        length=12,
    )


def cached_build(out: Path, make) -> Path:
    """`out`, built by make(tmp) into a temporary folder beside it and moved in place, once, under a lock."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
            try:
                make(tmp)
                os.replace(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def real_shape_checkpoint(name: str, seed: int = 0) -> Path:
    """The cached directory of a real-shape checkpoint, built on first use (seconds; 1.6 GB, SigLIP 3.3 GB)."""
    shape = shape_of(name)
    return cached_build(cache_root() / "real_shapes" / f"{name}-{cache_key(shape, seed)}", lambda tmp: build(shape, tmp, seed))


def draw_image(path: Path, rng: random.Random, size: int = 64) -> None:
    """A small picture of coloured shapes: something for an image processor and a tower to read."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size), rng.randrange(size)
        box = (min(x, size - x), min(y, size - y), max(x, size - x), max(y, size - y))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    image.save(path)


def write_image_data(out: Path, concepts: list[str], images: int = 8, per_concept: int = 2) -> None:
    """A COCO-style captions file with its images and a folder of images per target concept: the
    shape of the data real encoders read (benign.pairs, attack.targets.image_dir), drawn here."""
    rng = random.Random(0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    captions = generate_synthetic_prompts(2 * images, seed=1)
    entries, annotations = [], []
    for i in range(images):
        draw_image(out / "images" / f"{i:012d}.png", rng)
        entries.append({"id": i, "file_name": f"{i:012d}.png"})
        annotations += [{"id": 2 * i + j, "image_id": i, "caption": captions[2 * i + j]} for j in range(2)]
    (out / "captions.json").write_text(json.dumps({"images": entries, "annotations": annotations}), encoding="utf-8")
    for concept in concepts:
        folder = out / "concepts" / concept_dirname(concept)
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_concept):
            draw_image(folder / f"{j}.png", rng)


def real_shape_images(concepts: list[str]) -> Path:
    """The cached folder of `write_image_data` (built on first use): captions.json, images/, concepts/."""
    key = config_hash({"concepts": sorted(concepts), "code": source_hash("core/real_shapes.py")}, length=12)
    return cached_build(cache_root() / "real_shapes" / f"images-{key}", lambda tmp: write_image_data(tmp, concepts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random-initialised checkpoint of a real shape; print its directory.")
    parser.add_argument("name", choices=list(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(real_shape_checkpoint(args.name, args.seed))


if __name__ == "__main__":
    main()
