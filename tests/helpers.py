"""Micro configs and sample prompts shared by the tests."""

from __future__ import annotations

from core.tiny.architectures import TinyArch

MAX_LENGTH = {"clip": 77, "longclip": 248, "siglip": 64}
FAMILIES = tuple(MAX_LENGTH)

PROMPTS = [
    "a photo of a cat",
    "a cyberpunk samurai in a neon city at night, digital art, by greg rutkowski, trending on artstation",
    "oil painting of a lighthouse in a storm",
]


def micro_arch(family: str = "clip", **overrides) -> TinyArch:
    """A micro encoder of the real architecture: hidden 32, 2 layers (the embedding dominates its size)."""
    params = dict(family=family, hidden=32, layers=2, heads=2, ffn=64, max_length=MAX_LENGTH[family], projection_dim=16)
    return TinyArch(**{**params, **overrides})
