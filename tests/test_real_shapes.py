"""The real-encoder path at the real shapes (random-initialised stand-ins of CLIP ViT-L/14,
LongCLIP-L and SigLIP so400m, core/real_shapes.py): the checkpoints carry the real configurations, a
backdoored and a benign cell per family run end to end (attack through the image tower, benign
fine-tuning on COCO-style pairs, every text-encoder detector) at micro step counts, and a benign run's
images go through the image tower once across cells. Slow: the checkpoints take 1.6 / 1.6 / 3.3 GB in
$AMDET_CACHE/real_shapes (built once, in under a minute); the cells (marker real_shapes) take 2–3
minutes per family on 2 cores: `pytest -m real_shapes` (CI runs the rest of this file)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from benign_ft.pairs import coco_pair_set
from core.image_tower import ImageTower
from core.loading import load_encoder
from core.real_shapes import SHAPES, real_shape_checkpoint, real_shape_images
from sweeps.flops import text_shape
from sweeps.run import run_experiment

pytestmark = pytest.mark.slow

# (layers, width, positions, text parameters in millions) of the hub checkpoints' text towers
REAL = {"clip-l": (12, 768, 77, 123.65), "longclip-l": (12, 768, 248, 123.78), "siglip": (27, 1152, 64, 449.73)}


@pytest.mark.parametrize("name", list(SHAPES))
def test_checkpoint_has_the_real_shape(name):
    directory = real_shape_checkpoint(name)
    encoder = load_encoder(directory)
    layers, width, positions, millions = REAL[name]
    assert (encoder.config.num_hidden_layers, encoder.hidden_size, encoder.max_length) == (layers, width, positions)
    assert sum(p.numel() for p in encoder.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)
    assert encoder.family.name == {"clip-l": "clip", "longclip-l": "longclip", "siglip": "siglip"}[name]
    ids = encoder.tokenize(["a photo of a cat", "a red bus in the city"])
    assert ids.shape == (2, positions)
    assert (ids[:, -1] == encoder.tokenizer.pad_token_id).all()  # padded to the full length, as they train
    assert type(encoder.tokenizer).__name__ == ("SiglipTokenizer" if name == "siglip" else "CLIPTokenizer")
    assert AutoConfig.from_pretrained(directory).model_type == SHAPES[name].family
    assert text_shape(SHAPES[name].text).positions == positions


@pytest.mark.real_shapes
@pytest.mark.parametrize("name", list(SHAPES))
def test_one_cell_per_kind_end_to_end(name, tmp_path):
    summary = run_experiment(["experiment=real_shapes", f"paths.output_dir={tmp_path}",
                              f"encoder={name}"], progress=False, report=False)
    assert not summary["scored"]["failed"], summary["scored"]["failed"]
    records = sorted((tmp_path / "sweeps" / "real_shapes").glob("*/detectors/*/result.json"))
    assert len(records) == 2 * 4  # two cells × amdet, weight_distance, output_drift, gcg
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "ok", (path, record.get("error"))
        assert record["cell"]["encoder"] == name
    backdoor = next((tmp_path / "sweeps" / "real_shapes").glob("*cell.kind=backdoor*/model/manifest.json"))
    manifest = json.loads(backdoor.read_text())
    assert "image embeddings" in manifest["backdoors"][0]["target"]["source"]  # the concept went through the image tower


def test_benign_images_go_through_the_real_clip_tower_once(monkeypatch, tmp_path):
    directory = real_shape_checkpoint("clip-l")
    monkeypatch.setenv("AMDET_CACHE", str(tmp_path))  # embeddings and images in a cold cache of their own
    images = real_shape_images(["cat"])
    forwards = []
    embed = ImageTower.embed_pixels
    monkeypatch.setattr(ImageTower, "embed_pixels", lambda self, pixels: forwards.append(len(pixels)) or embed(self, pixels))
    sets = [coco_pair_set(str(images / "captions.json"), str(images / "images"), str(directory), progress=False)
            for _ in range(3)]  # three benign cells of one sweep
    assert sum(forwards) == 8  # the 8 images of the 16 captions, once
    assert all(torch.equal(s.images, sets[0].images) for s in sets)
