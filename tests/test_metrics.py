"""Shared feature statistics and losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.contrastive import contrastive_loss
from core.metrics import assimilation, tokenwise_cosine
from core.provenance import config_hash


def test_assimilation_equals_mean_of_cosine_matrix():
    torch.manual_seed(0)
    feats = torch.randn(3, 9, 5)
    unit = F.normalize(feats, dim=-1)
    explicit = (unit @ unit.transpose(1, 2)).mean(dim=(1, 2))
    assert torch.allclose(assimilation(feats), explicit, atol=1e-6)


def test_assimilation_extremes():
    same = torch.ones(1, 7, 4)
    assert torch.allclose(assimilation(same), torch.ones(1))
    opposite = torch.stack([torch.ones(4), -torch.ones(4)]).unsqueeze(0)  # two tokens, cos = -1
    assert torch.allclose(assimilation(opposite), torch.zeros(1))


def test_tokenwise_cosine():
    a = torch.randn(2, 5, 3)
    assert torch.allclose(tokenwise_cosine(a, a), torch.ones(2))
    assert torch.allclose(tokenwise_cosine(a, -a), -torch.ones(2))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_contrastive_prefers_matched_pairs(kind):
    torch.manual_seed(0)
    other = torch.randn(8, 16)
    scale, bias = torch.tensor(2.3), torch.tensor(-2.0)
    matched = contrastive_loss(other + 0.01 * torch.randn(8, 16), other, scale, bias, kind)
    shuffled = contrastive_loss(other[torch.randperm(8)], other, scale, bias, kind)
    assert matched < shuffled


def test_contrastive_unknown_kind():
    with pytest.raises(ValueError, match="softmax"):
        contrastive_loss(torch.ones(2, 2), torch.ones(2, 2), torch.tensor(0.0), kind="hinge")


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
