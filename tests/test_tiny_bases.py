"""Building, caching and the pieces of pretraining, on micro specs (seconds)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.tiny import bases
from core.tiny.architectures import TinyArch, random_encoder
from core.tiny.bases import TinyBaseSpec, get_base, stretched
from core.tiny.pretrain import PretrainConfig, overlap_matrix
from core.loading import load_encoder
from tests.helpers import micro_arch

MICRO_PRETRAIN = PretrainConfig(steps=3, batch_size=8, lr=1e-3)


def micro_spec(family="clip", **kw) -> TinyBaseSpec:
    arch = micro_arch(family, projection_dim=384)  # text_embeds live in the paired tower's space
    return TinyBaseSpec(**{"name": f"micro-{family}", "arch": arch, "pretrain": MICRO_PRETRAIN, "prompts": 32, "quality_prompts": 16, **kw})


def test_build_then_cache(monkeypatch):
    spec = micro_spec()
    path = get_base(spec, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "base" and manifest["key"] == spec.key()
    assert manifest["build"]["loss_first"] is not None and "provenance" in manifest
    assert load_encoder(path).family.name == "clip"

    monkeypatch.setattr(bases, "build", lambda *a, **k: pytest.fail("cached base was rebuilt"))
    t0 = time.perf_counter()
    assert get_base(spec, progress=False) == path
    assert time.perf_counter() - t0 < 2.0


def test_build_is_deterministic(tmp_path, monkeypatch):
    first = load_file(get_base(micro_spec("siglip"), progress=False) / "model.safetensors")
    monkeypatch.setenv("AMDET_CACHE", str(tmp_path / "other-cache"))
    second = load_file(get_base(micro_spec("siglip"), progress=False) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_key_is_content_addressed():
    assert micro_spec().key() == micro_spec().key()
    assert micro_spec().key() != micro_spec(seed=1).key()
    assert micro_spec().key() != micro_spec(prompts=33).key()


def test_longclip_from_stretched_parent():
    parent = micro_spec("clip")
    child = TinyBaseSpec(name="micro-longclip", arch=micro_arch("longclip", projection_dim=384), pretrain=PretrainConfig(steps=0),
                         prompts=8, quality_prompts=8, parent=parent)
    enc = load_encoder(get_base(child, progress=False))
    clip = load_encoder(get_base(parent, progress=False))
    pos = enc.text.embeddings.position_embedding.weight
    old = clip.text.embeddings.position_embedding.weight
    assert pos.shape[0] == 248 and enc.family.name == "longclip"
    assert torch.equal(pos[:20], old[:20])  # steps=0: exactly the stretched parent
    assert torch.equal(enc.text.embeddings.token_embedding.weight, clip.text.embeddings.token_embedding.weight)
    assert child.key() != micro_spec("longclip").key()


def test_stretched_positions():
    pos = torch.arange(77, dtype=torch.float32).unsqueeze(-1).repeat(1, 4)
    out = stretched(pos, 248)
    assert out.shape == (248, 4)
    assert torch.equal(out[:20], pos[:20])
    assert torch.allclose(out[-1], pos[-1]) and torch.allclose(out[20], pos[20])
    assert bool((out[1:, 0] >= out[:-1, 0]).all())  # monotone: an interpolation, not a shuffle


def test_overlap_matrix_aligns_by_characters():
    student = np.array([[0, 0], [0, 9], [10, 13], [0, 0]])  # BOS, 'cyberpunk', 'cat', EOS
    teacher = np.array([[0, 0], [0, 5], [5, 9], [10, 13], [0, 0]])  # CLS, 'cyber', '##punk', 'cat', SEP
    w = overlap_matrix(student, teacher)
    assert w[0].sum() == 0 and w[3].sum() == 0  # special tokens get no target
    assert np.allclose(w[1], [0, 0.5, 0.5, 0, 0]) and np.allclose(w[2], [0, 0, 0, 1, 0])


def test_bad_spec_values():
    with pytest.raises(ValueError, match="divisible"):
        micro_arch(hidden=30, heads=4)
    with pytest.raises(ValueError, match="unknown tiny encoder family"):
        TinyArch(family="bert")
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(steps=-1)


@pytest.mark.slow
def test_pretrained_tiny_clip_is_not_random():
    """The real tiny-clip base: clean-prompt assimilation clearly below a random-init encoder's."""
    quality = json.loads((bases.base_path("tiny-clip") / "manifest.json").read_text())["build"]["quality"]
    assert quality["assimilation"] < quality["assimilation_random_init"] - 0.2
    assert quality["spearman_vs_minilm"] > 0.2


def test_pretraining_may_skip_positions_after_eos_under_a_causal_mask():
    """Pretraining trims each CLIP batch after its last EOS (prompts are padded to 77 tokens): with a
    causal mask the kept positions' features and the pooled EOS do not change."""
    encoder = random_encoder(micro_arch("clip"), seed=0)
    ids = encoder.tokenize(["a red car", "a photo of a dog on the beach at night"])
    length = int(encoder.pool_positions(ids).max()) + 1
    assert length < ids.shape[1]
    with torch.no_grad():
        full, cut = encoder(ids), encoder(ids[:, :length])
    torch.testing.assert_close(cut, full[:, :length], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.pool(cut, ids[:, :length]), encoder.pool(full, ids), atol=1e-5, rtol=1e-5)
