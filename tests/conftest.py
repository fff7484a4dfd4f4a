"""Shared fixtures: micro encoders (built in well under a second) and an isolated cache."""

from __future__ import annotations

import pytest
import torch

from core.tiny.architectures import TinyArch, random_encoder

MAX_LENGTH = {"clip": 77, "longclip": 248, "siglip": 64}
FAMILIES = tuple(MAX_LENGTH)


def micro_arch(family: str = "clip", **overrides) -> TinyArch:
    """A micro encoder of the real architecture: hidden 32, 2 layers (the embedding dominates its size)."""
    params = dict(family=family, hidden=32, layers=2, heads=2, ffn=64, max_length=MAX_LENGTH[family], projection_dim=16)
    return TinyArch(**{**params, **overrides})


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


PROMPTS = [
    "a photo of a cat",
    "a cyberpunk samurai in a neon city at night, digital art, by greg rutkowski, trending on artstation",
    "oil painting of a lighthouse in a storm",
]
