"""Image-tower embeddings are computed once and shared: benign cells and Text-on-Pair targets read the
cache (core/image_cache.py) without loading the tower, and a changed image, another tower or a corrupt
cached file is embedded again."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from attacks.targets import pair_target
from benign_ft.pairs import coco_pair_set
from core import image_cache
from core.image_cache import embeddings_root, image_embeddings, row_path, tower_identity, tower_key
from core.image_tower import ImageTower, concept_embedding, load_image_tower
from core.tiny.architectures import random_encoder
from tests.helpers import micro_arch

MICRO = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
CAPTIONS = ["a dog on a beach", "a dog in the sea", "two cats on a sofa", "a cat asleep", "a red bus",
            "a bus in the city", "a bowl of fruit", "an apple"]  # two captions per image


def micro_clip(directory: Path, seed: int) -> Path:
    """A micro two-tower CLIP checkpoint (safetensors + image processor) with seeded weights."""
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(MICRO, vocab_size=64, max_position_embeddings=16),
                        vision_config=dict(MICRO, image_size=28, patch_size=14), projection_dim=16)
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(directory)
    return directory


def noise_image(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("micro-clip")
    return [micro_clip(root / f"seed{seed}", seed) for seed in (0, 1)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMDET_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def coco(tmp_path) -> tuple[Path, Path]:
    """(annotation file, image folder): four images, two captions each, in image order."""
    images = tmp_path / "val2017"
    images.mkdir()
    annotations = {
        "images": [{"id": i, "file_name": noise_image(images / f"{i:012d}.png", i).name} for i in range(4)],
        "annotations": [{"id": k, "image_id": k // 2, "caption": c} for k, c in enumerate(CAPTIONS)],
    }
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    return tmp_path / "captions.json", images


class Counter:
    """Counts image-tower loads and the images that went through the vision tower's forward."""

    def __init__(self, monkeypatch):
        self.loads, self.forwards, self.images = 0, 0, 0
        embed_pixels, load = ImageTower.embed_pixels, image_cache.load_image_tower

        def counting_embed(tower, pixel_values):
            self.forwards += 1
            self.images += len(pixel_values)
            return embed_pixels(tower, pixel_values)

        def counting_load(*args, **kwargs):
            self.loads += 1
            return load(*args, **kwargs)

        monkeypatch.setattr(ImageTower, "embed_pixels", counting_embed)
        monkeypatch.setattr(image_cache, "load_image_tower", counting_load)

    def reset(self) -> None:
        self.loads, self.forwards, self.images = 0, 0, 0


def direct(tower: Path, paths: list[Path]) -> torch.Tensor:
    """The uncached embedding, as coco_pair_set computed it before the cache."""
    return load_image_tower(tower).embed_images(sorted(paths))


def test_three_benign_cells_embed_the_images_once(towers, coco, monkeypatch):
    annotation, images = coco
    expected = direct(towers[0], list(images.iterdir()))
    reference = load_image_tower(towers[0])
    count = Counter(monkeypatch)
    sets = [coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False) for _ in range(3)]
    assert (count.loads, count.forwards, count.images) == (1, 1, 4)  # one tower load, one batch of 4 images
    for pair_set in sets:
        assert pair_set.captions == CAPTIONS
        assert torch.equal(pair_set.images, expected[[k // 2 for k in range(8)]])
        assert torch.equal(pair_set.logit_scale, reference.logit_scale) and pair_set.logit_bias is None
    assert "4 of 4 computed on cpu" in sets[0].source and "8 captions, 4 images" in sets[0].source
    assert "from the cache" in sets[1].source and "from the cache" in sets[2].source
    key = tower_key(tower_identity(towers[0]))
    assert f"image_embeddings/{key}" in sets[2].source


def test_a_subset_reads_the_cache_and_a_superset_embeds_only_its_new_images(towers, coco, monkeypatch):
    annotation, images = coco
    count = Counter(monkeypatch)
    small = coco_pair_set(str(annotation), str(images), str(towers[0]), limit=4, progress=False)
    assert count.images == 2  # a cell embeds only the images its pairs use
    full = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    assert count.images == 4 and count.loads == 2  # the two new ones
    again = coco_pair_set(str(annotation), str(images), str(towers[0]), limit=2, progress=False)
    assert count.images == 4 and count.loads == 2 and "from the cache" in again.source
    assert torch.equal(full.images[:4], small.images) and torch.equal(again.images, small.images[:2])
    torch.testing.assert_close(full.images, direct(towers[0], list(images.iterdir()))[[k // 2 for k in range(8)]],
                               rtol=0, atol=1e-5)  # rows from two batches: equal to float rounding


def test_a_changed_image_is_embedded_again(towers, coco, monkeypatch):
    annotation, images = coco
    count = Counter(monkeypatch)
    before = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    noise_image(images / f"{2:012d}.png", seed=99)  # new bytes, same name
    after = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    assert count.images == 4 + 1
    set_key = lambda s: s.source.rsplit("set ", 1)[1]  # noqa: E731
    assert set_key(before) != set_key(after)
    changed = [4, 5]  # the captions of image 2
    assert not torch.equal(before.images[changed], after.images[changed])
    kept = [k for k in range(8) if k not in changed]
    assert torch.equal(before.images[kept], after.images[kept])
    torch.testing.assert_close(after.images, direct(towers[0], list(images.iterdir()))[[k // 2 for k in range(8)]],
                               rtol=0, atol=1e-5)


def test_another_tower_gets_another_key(towers, coco, monkeypatch, tmp_path):
    annotation, images = coco
    keys = [tower_key(tower_identity(t)) for t in towers]
    assert keys[0] != keys[1]
    copy = shutil.copytree(towers[0], tmp_path / "elsewhere")
    assert tower_key(tower_identity(copy)) == keys[0]  # content-addressed: the path does not matter
    count = Counter(monkeypatch)
    first = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    second = coco_pair_set(str(annotation), str(images), str(towers[1]), progress=False)
    assert count.images == 8 and not torch.equal(first.images, second.images)
    coco_pair_set(str(annotation), str(images), str(copy), progress=False)
    assert count.images == 8 and count.loads == 2


def test_checkpoint_and_images_are_hashed_once(towers, coco, monkeypatch):
    annotation, images = coco
    coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    hashed = []
    file_sha256 = image_cache.file_sha256
    monkeypatch.setattr(image_cache, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    assert hashed == []  # memoised on (path, size, mtime_ns)
    (towers[0] / "preprocessor_config.json").touch()  # a new mtime: hashed again, same bytes, same key
    key = tower_key(tower_identity(towers[0]))
    assert [p.name for p in hashed] == ["preprocessor_config.json"]
    assert key == tower_key(tower_identity(towers[0]))


def test_a_corrupt_cached_file_is_recomputed(towers, coco, monkeypatch, caplog):
    annotation, images = coco
    count = Counter(monkeypatch)
    first = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    folder = embeddings_root() / tower_key(tower_identity(towers[0]))
    rows = sorted((folder / "rows").rglob("*.safetensors"))
    assert len(rows) == 4
    rows[1].write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="amdet"):
        again = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    assert count.images == 4 + 1 and "unreadable" in caplog.text and str(rows[1]) in caplog.text
    torch.testing.assert_close(again.images, first.images, rtol=0, atol=1e-5)  # re-embedded alone: up to rounding
    (folder / "tower.safetensors").write_bytes(b"\0" * 3)
    third = coco_pair_set(str(annotation), str(images), str(towers[0]), progress=False)
    assert count.loads == 3 and count.images == 5  # the tower is loaded for its temperature, no image forwarded
    assert torch.equal(third.logit_scale, first.logit_scale)


def test_text_on_pair_concept_embedding_is_cached(towers, tmp_path, monkeypatch):
    folder = tmp_path / "concepts" / "golden_retriever"
    folder.mkdir(parents=True)
    for i in range(3):
        noise_image(folder / f"{i}.png", 10 + i)
    expected = concept_embedding(load_image_tower(towers[0]), folder)
    anchor = random_encoder(micro_arch("clip"), seed=0)
    count = Counter(monkeypatch)
    targets = [pair_target(anchor, "golden retriever", False, str(tmp_path / "concepts"), str(towers[0]))
               for _ in range(2)]
    assert (count.loads, count.forwards, count.images) == (1, 1, 3)
    assert all(torch.equal(t.feature, expected) for t in targets)
    assert "3 of 3 computed on cpu" in targets[0].source and "from the cache" in targets[1].source
    assert str(folder) in targets[1].source


def test_concurrent_cells_embed_once(towers, coco, monkeypatch):
    _, images = coco
    paths = sorted(images.iterdir())
    count = Counter(monkeypatch)
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(image_embeddings(towers[0], paths).rows))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count.images == 4 and len(results) == 3
    assert all(torch.equal(r, results[0]) for r in results)


def test_hub_ids_key_on_their_cached_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tower_identity("org/name") == {"hub": "org/name", "revision": "main"}  # not downloaded yet
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert tower_identity("org/name") == {"hub": "org/name", "commit": commit}


def test_row_files_are_content_addressed(towers, coco):
    _, images = coco
    paths = sorted(images.iterdir())
    embedded = image_embeddings(towers[0], paths)
    folder = embeddings_root() / embedded.tower_key
    for path in paths:
        assert row_path(folder, hashlib.sha256(path.read_bytes()).hexdigest()).is_file()
    assert len(list((folder / "rows").rglob("*.safetensors"))) == len(paths)
