"""Cell directory names: Hydra's override_dirname (readable, stable, derived from the overrides),
shortened with a hash of the whole when it would exceed a safe file-name length; and the configs' other
resolvers. Light to import: launch.py registers them before Hydra composes, so that a bad override fails
in a second, before torch and transformers load."""

from __future__ import annotations

import hashlib
import re

from hydra.utils import get_method
from omegaconf import OmegaConf

from attacks.triggers import level_for_length

REAL_SHAPES = "core.real_shapes"
MAX_NAME = 120  # file systems allow 255 bytes; leave room for suffixes and non-ASCII values
_ITEM = re.compile(r",(?=[+~]*[A-Za-z_][\w.@/-]*=)")  # a comma that starts the next key=value, not one inside a list


def cell_dirname(override_dirname: str) -> str:
    """The name itself, or when too long its shortest overrides first, cut, and a hash of the whole: the long
    ones are mostly settings every cell of a sweep shares (a detector added on the command line), the short ones
    the grid's axes (`seed=36`, `poison=none`) that tell its cells apart."""
    return _shortened(override_dirname, lambda name: ",".join(sorted(_ITEM.split(name), key=len)))  # stable sort


def legacy_cell_dirname(override_dirname: str) -> str:
    """The name a long cell had before 2917af4 (Hydra's order, cut): `python -m sweeps` finds such a sweep's
    finished cells under it rather than computing them again beside it (`launch.py -m` names cells anew)."""
    return _shortened(override_dirname, lambda name: name)


def _shortened(override_dirname: str, readable) -> str:
    name = override_dirname or "default"
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{readable(name).encode()[: MAX_NAME - 13].decode(errors='ignore')}-{digest}"


def register() -> None:
    """The configs' resolvers (idempotent): `${cell_dir:${hydra:job.override_dirname}}`,
    `${trigger_level:LENGTH,CHAR_MAX,WORD_MAX}`, and the real-shape stand-ins of core.real_shapes,
    built on first use: `${real_shape:clip-l}` (a checkpoint's directory), `${real_shape_images:[cat,…]}`.
    Those two name their builder by dotted path (hydra.utils.get_method, as `_target_` does): core.real_shapes
    loads torch and transformers, and only a config that uses a stand-in needs it."""
    if not OmegaConf.has_resolver("cell_dir"):
        OmegaConf.register_new_resolver("cell_dir", cell_dirname)
    if not OmegaConf.has_resolver("trigger_level"):
        OmegaConf.register_new_resolver("trigger_level", level_for_length)
    if not OmegaConf.has_resolver("real_shape"):
        OmegaConf.register_new_resolver("real_shape", lambda name: str(get_method(f"{REAL_SHAPES}.real_shape_checkpoint")(name)))
    if not OmegaConf.has_resolver("real_shape_images"):
        OmegaConf.register_new_resolver("real_shape_images", lambda concepts: str(get_method(f"{REAL_SHAPES}.real_shape_images")(list(concepts))))


register()
