"""Micro configs and sample prompts shared by the tests."""

from __future__ import annotations

from pathlib import Path

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


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# a micro tiny-clip: built in a few seconds into the test session's cache
MICRO_BASE = [
    "encoder.tiny.arch.hidden=32", "encoder.tiny.arch.layers=2", "encoder.tiny.arch.heads=2",
    "encoder.tiny.arch.ffn=64", "encoder.tiny.pretrain.steps=3", "encoder.tiny.pretrain.batch_size=8",
    "encoder.tiny.prompts=32", "+encoder.tiny.quality_prompts=16", "progress=false",
]
MICRO_ATTACK = [
    "training.attack.steps=4", "training.attack.clean_batch=8", "training.attack.poison_batch=4",
    "attack.train_prompts=48", "attack.eval_prompts=16",
]


def compose_config(*overrides: str):
    """The config `python launch.py <overrides>` would run with (no Hydra run dir)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
