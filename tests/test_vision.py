"""The tiny vision-language world: real images offline, a two-tower checkpoint that the real loaders
read, and prompt-tuned classifiers (CoOp, CoCoOp) that save and load to the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from core.image_tower import load_image_tower
from core.loading import load_encoder
from tests.helpers import compose_config
from vision import captions
from vision.classifier import PromptedCLIP, PromptLearner, Towers, load_classifier, save_learner
from vision.images import SHARES, few_shot, letters, mnist, natural, pool
from vision.tower import REPORT, tower_dir

MICRO_TOWER = [
    "encoder=tiny-clip-s", "encoder.tiny.arch.hidden=32", "encoder.tiny.arch.layers=2", "encoder.tiny.arch.heads=2",
    "encoder.tiny.arch.ffn=64", "encoder.tiny.pretrain.steps=3", "encoder.tiny.pretrain.batch_size=8",
    "encoder.tiny.prompts=32", "+encoder.tiny.quality_prompts=16", "progress=false",
    "vision.tower.hidden=16", "vision.tower.layers=1", "vision.tower.heads=2", "vision.tower.ffn=32",
    "vision.tower.steps=4", "vision.tower.batch_size=16", "vision.tower.photo_crops=20",
]


@pytest.fixture(scope="module")
def towers_dir():
    return tower_dir(compose_config(*MICRO_TOWER), progress=False)  # into the session's cache (conftest)


@pytest.fixture(scope="module")
def towers(towers_dir):
    return Towers(towers_dir)


def test_mnist_shares_are_disjoint_and_cover_the_5000_images():
    parts = {name: mnist(name) for name in SHARES}
    assert sum(len(p) for p in parts.values()) == 5000
    hashes = {name: {hash(x.numpy().tobytes()) for x in p.x} for name, p in parts.items()}
    names = list(hashes)
    for i, a in enumerate(names):  # no image is in two shares
        for b in names[i + 1:]:
            assert not hashes[a] & hashes[b], (a, b)
    for name, share in SHARES.items():
        assert abs(len(parts[name]) - 5000 * share) < 120
    assert mnist().x.shape == (5000, 1, 28, 28) and 0 <= mnist().x.min() and mnist().x.max() <= 1
    shots = few_shot(parts["provider"], 3, seed=0)
    assert torch.bincount(shots.y, minlength=10).tolist() == [3] * 10
    assert not torch.equal(few_shot(parts["provider"], 3, seed=1).x, shots.x)


def test_pools_are_unlabelled_deterministic_and_out_of_distribution_where_named():
    for source in ("letters", "natural", "mnist", "digits"):
        a, b = pool(source, 12, seed=3), pool(source, 12, seed=3)
        assert a.x.shape == (12, 1, 28, 28) and torch.equal(a.x, b.x) and (a.y == -1).all()
    assert not torch.equal(letters(8, 0).x, letters(8, 1).x) and natural(4).x.std() > 0
    with pytest.raises(ValueError, match="unknown image pool 'fashion'"):
        pool("fashion", 4)


def test_captioned_pretraining_images_match_their_captions():
    data, photos = mnist("tower"), natural(6, 1)
    vocabulary = captions.vocabulary(data.classes)
    x, y = captions.batch(data, photos, 64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    named = [vocabulary[i] for i in y]
    assert any("noisy" in c for c in named) and any("small" in c for c in named) and any(c == "a photo of a flower." or c == "a photo of a temple." for c in named)
    small = [i for i, c in enumerate(named) if " in the top left" in c and "inverted" not in c]
    for i in small:  # a small digit in the top left leaves the bottom right empty
        assert x[i, 0, 20:, 20:].abs().sum() < 1e-4 or "on a photo" in named[i]


def test_the_tower_is_a_real_two_tower_checkpoint_both_loaders_read(towers_dir):
    report = json.loads((towers_dir / REPORT).read_text())
    assert set(report["zero_shot_accuracy"]) and report["captions"] == len(captions.vocabulary(report["classes"]))
    assert set(report["provenance"]) == {"code", "packages", "hardware"}  # which machine built this world
    image = load_image_tower(towers_dir)
    text = load_encoder(towers_dir)
    assert image.dim == text.model.config.projection_dim
    assert tower_dir(compose_config(*MICRO_TOWER), progress=False) == towers_dir  # cached: found, not rebuilt


@pytest.mark.parametrize("kind", ["coop", "cocoop"])
def test_a_prompt_tuned_classifier_saves_and_loads_to_the_same_logits(towers, towers_dir, tmp_path, kind):
    torch.manual_seed(0)
    learner = PromptLearner(towers, list(mnist().classes), kind)
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn_like(learner.ctx))
    model = PromptedCLIP(towers, learner).freeze()
    x = mnist("test").x[:5]
    logits = model(x)
    assert logits.shape == (5, 10)
    save_learner(learner, tmp_path, towers_dir)
    again = load_classifier(tmp_path, towers)
    assert torch.allclose(again(x), logits, atol=1e-6)
    feats = learner.text_features(towers.text, towers.image_features(x))
    assert feats.shape == ((5, 10, towers.dim) if kind == "cocoop" else (10, towers.dim))


def test_the_context_starts_as_the_words_it_replaces(towers):
    """Before training, CoOp's prompt is exactly "a photo of a {class}." through the frozen text tower."""
    learner = PromptLearner(towers, ["zero", "seven"], "coop")
    text = towers.text
    with torch.no_grad():
        ids = text.tokenize(["a photo of a zero.", "a photo of a seven."])
        plain = torch.nn.functional.normalize(text.text_embeds(ids), dim=-1)
        assert torch.allclose(learner.text_features(text), plain, atol=1e-5)
