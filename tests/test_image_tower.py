"""The frozen image tower reproduces the checkpoint's own image embeddings, and bad inputs fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipTextConfig,
    SiglipTextModel,
)

from core.image_tower import (
    IMAGE_SUFFIXES,
    CaptionPair,
    coco_pairs,
    concept_embedding,
    image_files,
    load_image_tower,
)
from core.loading import ModelLoadError

TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXT = dict(TOWER, vocab_size=100, pad_token_id=1, bos_token_id=98, eos_token_id=99)
VISION = dict(TOWER, image_size=32, patch_size=8)
LOGIT_SCALE = {"clip": 1.25, "longclip": 1.5, "siglip": 0.75}  # distinct from every init value
SIGLIP_BIAS = -2.5


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def clip_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def siglip_processor() -> SiglipImageProcessor:
    return SiglipImageProcessor(size={"height": 32, "width": 32})


def build_checkpoint(family: str, directory: Path) -> Path:
    """A tiny random two-tower checkpoint (safetensors + image processor), as save_pretrained writes it."""
    torch.manual_seed(0)
    if family == "siglip":
        config = SiglipConfig(text_config=dict(TEXT, max_position_embeddings=64), vision_config=VISION)
        model, processor = SiglipModel(config), siglip_processor()
    else:  # LongCLIP is a CLIPModel with 248 text positions
        positions = 248 if family == "longclip" else 77
        config = CLIPConfig(
            text_config=dict(TEXT, max_position_embeddings=positions), vision_config=VISION, projection_dim=16
        )
        model, processor = CLIPModel(config), clip_processor()
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE[family])
        if family == "siglip":
            model.logit_bias.fill_(SIGLIP_BIAS)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {family: build_checkpoint(family, root / family) for family in ("clip", "longclip", "siglip")}


@pytest.fixture(scope="module")
def towers(checkpoints):
    return {family: load_image_tower(path) for family, path in checkpoints.items()}


def write_image(path: Path, seed: int | None = None, colour=(200, 30, 60), size=(40, 52)) -> Path:
    """A solid-colour image, or seeded noise when seed is given (sizes differ from 32 to exercise resizing)."""
    if seed is None:
        image = Image.new("RGB", size, colour)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [
        write_image(folder / "a_noise.png", seed=1),
        write_image(folder / "b_red.jpg", colour=(220, 20, 20), size=(64, 48)),
        write_image(folder / "c_noise.png", seed=2, size=(33, 90)),
        write_image(folder / "d_blue.jpeg", colour=(10, 40, 230)),
        write_image(folder / "e_gray.png", colour=(128, 128, 128), size=(32, 32)),
    ]


# --- embeddings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["clip", "longclip", "siglip"])
def test_embeddings_match_the_checkpoint(family, checkpoints, towers, images):
    """Same numbers as the model's own image features, and its logits follow from logit_scale/bias."""
    tower = towers[family]
    emb = tower.embed_images(images, batch_size=2)
    assert emb.shape == (len(images), tower.dim) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert tower.dim == (32 if family == "siglip" else 16)  # SigLIP: vision hidden size; CLIP: projection_dim
    assert tower.family == family
    assert type(tower.processor).__name__.endswith("Pil")  # pinned: same pixels with or without torchvision

    model_class = SiglipModel if family == "siglip" else CLIPModel
    model = model_class.from_pretrained(checkpoints[family], use_safetensors=True).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoints[family])
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (32, 32)
    input_ids = torch.tensor([[98, 5, 6, 7, 99] + [1] * 3, [98, 9, 99] + [1] * 5])
    with torch.no_grad():
        if family == "siglip":
            reference = model.vision_model(pixel_values=pixels).pooler_output
        else:
            reference = model.get_image_features(pixel_values=pixels).pooler_output  # a ModelOutput in transformers 5
        out = model(input_ids=input_ids, pixel_values=pixels)
    torch.testing.assert_close(emb, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F.normalize(emb, dim=-1), out.image_embeds, rtol=1e-5, atol=1e-5)
    logits = F.normalize(emb, dim=-1) @ out.text_embeds.T * tower.logit_scale.exp()
    if tower.logit_bias is not None:
        logits = logits + tower.logit_bias
    torch.testing.assert_close(logits, out.logits_per_image, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["clip", "longclip", "siglip"])
def test_logit_scale_and_bias_are_the_checkpoints(family, towers):
    tower = towers[family]
    assert tower.logit_scale.shape == () and tower.logit_scale.item() == pytest.approx(LOGIT_SCALE[family])
    if family == "siglip":
        assert tower.logit_bias.shape == () and tower.logit_bias.item() == pytest.approx(SIGLIP_BIAS)
    else:
        assert tower.logit_bias is None


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_tower_is_frozen_in_eval_mode(family, towers):
    tower = towers[family]
    modules = [tower.vision] + ([tower.projection] if tower.projection is not None else [])
    for module in modules:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_rows_are_per_image_and_batch_size_does_not_matter(family, towers, images):
    tower = towers[family]
    emb = tower.embed_images([*images, images[0]], batch_size=32)
    # the same image twice: the same row (up to float rounding, which depends on the row's place in the batch)
    torch.testing.assert_close(emb[0], emb[-1], rtol=0, atol=1e-6)
    distances = torch.cdist(emb[:-1], emb[:-1]) + torch.eye(len(images))
    assert distances.min() > 1e-3  # every image gets its own embedding
    for batch_size in (1, 3):
        torch.testing.assert_close(tower.embed_images(images, batch_size=batch_size), emb[:-1], rtol=1e-5, atol=1e-6)
    assert tower.embed_images([]).shape == (0, tower.dim)


def test_progress_bar_is_optional(towers, images, capsys):
    tower = towers["clip"]
    tower.embed_images(images[:2])
    assert "embedding images" not in capsys.readouterr().err
    tower.embed_images(images[:2], progress=True)
    assert "embedding images" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_concept_embedding_is_the_mean_of_normalised_rows(family, towers, images):
    tower = towers[family]
    folder = images[0].parent
    target = concept_embedding(tower, folder)
    expected = F.normalize(tower.embed_images(image_files(folder)), dim=-1).mean(dim=0)
    assert target.shape == (tower.dim,)
    torch.testing.assert_close(target, expected)
    assert 0 < target.norm() <= 1 + 1e-6


def test_corrupt_image_is_named(towers, images, tmp_path):
    write_image(tmp_path / "good.png", seed=3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ValueError) as exc:
        concept_embedding(towers["clip"], tmp_path)
    assert "broken.jpg" in one_line(exc) and "cannot read image" in one_line(exc)


def test_truncated_image_is_named(towers, tmp_path):
    path = write_image(tmp_path / "cut.png", seed=4, size=(64, 64))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError) as exc:
        towers["siglip"].embed_images([path])
    assert "cut.png" in one_line(exc)


# --- image folders --------------------------------------------------------------------------------


def test_image_files_are_sorted_filtered_and_case_insensitive(tmp_path):
    names = ["b.PNG", "a.jpg", "c.JpEg", "d.webp", "e.bmp"]
    for i, name in enumerate(names):
        fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP"}[name.rsplit(".", 1)[1].lower()]
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "nested").mkdir()
    write_image(tmp_path / "nested" / "deep.png", seed=0)  # not directly in the folder: ignored
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix: ignored
    files = image_files(tmp_path)
    assert [f.name for f in files] == sorted(names)
    assert {f.suffix.lower() for f in files} == set(IMAGE_SUFFIXES)


def test_missing_image_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        image_files(tmp_path / "cats")
    msg = one_line(exc)
    assert str(tmp_path / "cats") in msg and "set the image folder of the target concept" in msg


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images in") as exc:
        image_files(tmp_path)
    assert str(tmp_path) in one_line(exc)


# --- loading --------------------------------------------------------------------------------------


def test_pickled_only_checkpoint_is_refused(checkpoints, tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text((checkpoints["clip"] / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as exc:
        load_image_tower(directory)
    msg = one_line(exc)
    assert "refusing" in msg and "pytorch_model.bin" in msg and "safetensors" in msg


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as exc:
        load_image_tower(tmp_path / "nope")
    assert str(tmp_path / "nope") in one_line(exc)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_text_only_checkpoint_is_refused(family, tmp_path):
    if family == "clip":
        model = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT, projection_dim=16))
        processor = clip_processor()
    else:
        model, processor = SiglipTextModel(SiglipTextConfig(**TEXT)), siglip_processor()
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as exc:
        load_image_tower(tmp_path)
    msg = one_line(exc)
    assert "text-only" in msg and f"{family}_text_model" in msg and "image tower" in msg
    assert "full two-tower checkpoint" in msg and "attack.image_tower=" in msg


def test_two_tower_config_without_vision_weights_is_refused(checkpoints, tmp_path):
    """transformers would fill the missing vision tower with random weights; that must not pass silently."""
    for f in checkpoints["clip"].iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(checkpoints["clip"] / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k.startswith("text_")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as exc:
        load_image_tower(tmp_path)
    msg = one_line(exc)
    assert "image-tower weight" in msg and ("vision_model." in msg or "visual_projection" in msg or "logit_scale" in msg)


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**TOWER, vocab_size=100)).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelLoadError) as exc:
        load_image_tower(tmp_path)
    msg = one_line(exc)
    assert "unsupported model type 'bert'" in msg and "two-tower" in msg


def test_missing_image_processor_is_one_line(checkpoints, tmp_path):
    for f in checkpoints["siglip"].iterdir():
        if f.name != "preprocessor_config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelLoadError) as exc:
        load_image_tower(tmp_path)
    msg = one_line(exc)
    assert "image processor" in msg and str(tmp_path) in msg and "preprocessor_config.json" in msg


def test_siglip_without_vision_head_is_refused(tmp_path):
    config = SiglipConfig(text_config=dict(TEXT), vision_config=dict(VISION, vision_use_head=False))
    SiglipModel(config).save_pretrained(tmp_path, safe_serialization=True)
    siglip_processor().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="vision_use_head") as exc:
        load_image_tower(tmp_path)
    one_line(exc)


# --- COCO captions --------------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path):
    image_dir = tmp_path / "train2017"
    image_dir.mkdir()
    for seed, name in enumerate(["000000000009.jpg", "000000000025.jpg", "000000000030.jpg"]):
        write_image(image_dir / name, seed=seed)
    data = {
        "info": {"description": "handmade"},
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "height": 52, "width": 40},
            {"id": 25, "file_name": "000000000025.jpg"},
            {"id": 30, "file_name": "000000000030.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 25, "caption": "  A giraffe eating leaves.\n"},
            {"id": 2, "image_id": 9, "caption": "A plate of food."},
            {"id": 3, "image_id": 30, "caption": "   "},
            {"id": 4, "image_id": 25, "caption": "A tall giraffe next to a tree."},
            {"id": 5, "image_id": 30, "caption": "Flowers in a vase."},
        ],
    }
    annotation_file = tmp_path / "captions_train2017.json"
    annotation_file.write_text(json.dumps(data))
    return annotation_file, image_dir, data


def test_coco_pairs_in_annotation_order(coco):
    annotation_file, image_dir, _ = coco
    pairs = coco_pairs(annotation_file, image_dir)
    assert pairs == [
        CaptionPair("A giraffe eating leaves.", image_dir / "000000000025.jpg", 25),
        CaptionPair("A plate of food.", image_dir / "000000000009.jpg", 9),
        CaptionPair("A tall giraffe next to a tree.", image_dir / "000000000025.jpg", 25),
        CaptionPair("Flowers in a vase.", image_dir / "000000000030.jpg", 30),
    ]
    assert coco_pairs(str(annotation_file), str(image_dir), limit=2) == pairs[:2]
    assert coco_pairs(annotation_file, image_dir, limit=0) == []
    assert coco_pairs(annotation_file, image_dir, limit=100) == pairs


def test_coco_images_embed(coco, towers):
    annotation_file, image_dir, _ = coco
    pairs = coco_pairs(annotation_file, image_dir)
    emb = towers["clip"].embed_images([p.image for p in pairs])
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb[0], emb[2], rtol=0, atol=1e-6)  # two captions of image 25


def test_coco_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        coco_pairs(tmp_path / "captions.json", tmp_path)
    assert str(tmp_path / "captions.json") in one_line(exc)


def test_coco_invalid_json(coco):
    annotation_file, image_dir, _ = coco
    annotation_file.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON") as exc:
        coco_pairs(annotation_file, image_dir)
    assert annotation_file.name in one_line(exc)


def test_coco_missing_top_level_key(coco):
    annotation_file, image_dir, data = coco
    annotation_file.write_text(json.dumps({"images": data["images"]}))
    with pytest.raises(ValueError) as exc:
        coco_pairs(annotation_file, image_dir)
    assert "lacks the list(s) 'annotations';" in one_line(exc)


def test_coco_missing_entry_key(coco):
    annotation_file, image_dir, data = coco
    del data["annotations"][1]["caption"]
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[1\].*'caption'") as exc:
        coco_pairs(annotation_file, image_dir)
    one_line(exc)
    del data["images"][0]["file_name"]
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"images\[0\].*'file_name'"):
        coco_pairs(annotation_file, image_dir)


def test_coco_missing_image_dir(coco, tmp_path):
    annotation_file, _, _ = coco
    with pytest.raises(FileNotFoundError, match="image folder") as exc:
        coco_pairs(annotation_file, tmp_path / "val2017")
    assert str(tmp_path / "val2017") in one_line(exc)


def test_coco_unknown_image_id(coco):
    annotation_file, image_dir, data = coco
    data["annotations"][3]["image_id"] = 777
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[3\].*image_id 777") as exc:
        coco_pairs(annotation_file, image_dir)
    one_line(exc)


def test_coco_absent_image_files_are_counted(coco):
    annotation_file, image_dir, _ = coco
    (image_dir / "000000000009.jpg").unlink()
    (image_dir / "000000000030.jpg").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        coco_pairs(annotation_file, image_dir)
    msg = one_line(exc)
    assert msg.startswith("2 image file(s)") and "000000000009.jpg" in msg
    # only the returned pairs' images must exist: the first pair's image is still there
    assert [p.image_id for p in coco_pairs(annotation_file, image_dir, limit=1)] == [25]
