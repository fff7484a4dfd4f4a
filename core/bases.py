"""Where an `encoder` config's clean base loads from: a hub id or local directory, or the cached build
of an embedded tiny base (core.tiny.bases builds it on first use). Above core.loading, which the tiny
world uses to load its parents."""

from __future__ import annotations

from omegaconf import OmegaConf

from core.tiny.bases import TinyBaseSpec, get_base


def base_source(encoder_cfg, progress: bool = True) -> str:
    """Where the clean encoder of an `encoder` config loads from: its hub id or local dir, or, for
    an embedded tiny encoder, the cached build directory (built on first use, from the config's
    own `tiny` block, so overrides such as encoder.tiny.pretrain.steps=… take effect)."""
    if encoder_cfg.get("tiny"):
        tiny = OmegaConf.to_container(encoder_cfg["tiny"], resolve=True) if OmegaConf.is_config(encoder_cfg) else encoder_cfg["tiny"]
        return str(get_base(TinyBaseSpec.from_config(encoder_cfg["name"], tiny), progress))
    if not encoder_cfg.get("name_or_path"):
        raise ValueError(f"encoder '{encoder_cfg.get('name')}' has no name_or_path; set encoder.name_or_path=<hub id or dir>")
    return str(encoder_cfg["name_or_path"])
