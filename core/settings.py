"""Settings dataclasses built from config blocks, with one clear error for a mistyped key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from omegaconf import OmegaConf


def from_config(cls, values, where: str):
    """`cls(**values)`; a key `cls` does not know fails in one line naming `where` and the known keys."""
    if OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values) if isinstance(values, Mapping) else values
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {where} setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)
