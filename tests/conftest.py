"""Shared fixtures: micro encoders (built in well under a second) and an isolated cache."""

from __future__ import annotations

import pytest
import torch

from core.tiny.architectures import random_encoder
from tests.helpers import FAMILIES, micro_arch


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path_factory, monkeypatch):
    """Unit tests never read or write the user's cache; slow tests use it (they need the real bases)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("AMDET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def micro_encoder(family):
    torch.manual_seed(0)
    return random_encoder(micro_arch(family), seed=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A micro model and a different micro anchor of the same architecture, saved as HF dirs."""
    root = tmp_path_factory.mktemp("scan")
    random_encoder(micro_arch("clip"), seed=0).save(root / "model")
    random_encoder(micro_arch("clip"), seed=1).save(root / "anchor")
    return root / "model", root / "anchor"
