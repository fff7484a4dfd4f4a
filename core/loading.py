"""Loading text encoders from a hub id or a local directory — safely.

Scanned models are untrusted: weights come from `.safetensors` only. A directory that holds only
pickled weights (`pytorch_model.bin`, `*.pt`, …) is refused, because unpickling can run code.
Every failure is one line that names what is wrong and how to fix it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

from core.encoders import TextEncoder, family_of
from core.errors import one_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelLoadError(ValueError):
    """A model directory or hub id that cannot be loaded; the message says how to fix it."""


def is_hub_id(name_or_path: str) -> bool:
    """`org/name` that is not an existing local path is taken to be a Hugging Face hub id."""
    s = str(name_or_path)
    return (
        not os.path.exists(s)
        and s.count("/") == 1
        and not s.startswith((".", "/", "~"))
        and all(part.strip() for part in s.split("/"))
    )


def check_model_dir(path: Path) -> None:
    """Refuse a local directory that is missing, not an HF model, pickled-only, or has corrupt weights."""
    if not path.exists():
        raise ModelLoadError(
            f"model directory '{path}' does not exist; pass an existing HF model directory or a hub id like org/name"
        )
    if not path.is_dir():
        raise ModelLoadError(f"'{path}' is a file, not a model directory; pass the directory that holds config.json")
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"'{path}' has no config.json, so it is not a Hugging Face model directory; save the model with save_pretrained"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ModelLoadError(
                f"refusing to load pickled weights ({', '.join(pickled)}) from '{path}': scanned models are untrusted "
                "and unpickling can run code; convert them to model.safetensors in a sandbox "
                "(save_pretrained(dir, safe_serialization=True))"
            )
        raise ModelLoadError(f"no model.safetensors in '{path}'; save the model with save_pretrained(dir)")
    for f in weights:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ModelLoadError(
                f"corrupt or unreadable safetensors file '{f}' ({type(exc).__name__}: {exc}); re-save or re-download the model"
            ) from None


def checked_config(name_or_path: str | os.PathLike):
    """(source, transformers config) of a hub id or a local dir that passed `check_model_dir`."""
    source = str(name_or_path)
    if not is_hub_id(source):
        check_model_dir(Path(source).expanduser())
        source = str(Path(source).expanduser())
    try:
        return source, AutoConfig.from_pretrained(source)
    except Exception as exc:
        where = "from the Hugging Face hub (offline or unknown id?)" if is_hub_id(source) else f"in '{source}'"
        raise ModelLoadError(
            f"cannot read the model config {where}: {one_line(exc)}; "
            "pass a local model directory or check the id"
        ) from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "spiece.model")


@functools.lru_cache(maxsize=32)
def _tokenizer(source: str, stamp: tuple):
    return AutoTokenizer.from_pretrained(source)


def load_tokenizer(source: str | os.PathLike):
    """The tokenizer of a hub id or a local model dir, built once per process and state of its files (0.4-0.6 s
    a load for the CLIP vocabulary; a sweep loads the same base for every cell). Shared: callers only encode."""
    path = Path(source)
    files = [path / name for name in TOKENIZER_FILES] if path.is_dir() else []
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())
    return _tokenizer(str(source), stamp)


def load_encoder(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """Load the text encoder (with its projection head) and tokenizer of a CLIP, LongCLIP or SigLIP model.

    `name_or_path` is a local HF directory or a hub id (a full two-tower checkpoint such as
    `openai/clip-vit-large-patch14` works too: only its text half is loaded).
    """
    source, config = checked_config(name_or_path)
    try:
        family = family_of(config)
    except ValueError as exc:
        raise ModelLoadError(f"{exc} ('{source}')") from None
    try:
        kwargs = {}
        two_tower = getattr(config, "model_type", "") == "clip"
        if two_tower:
            # a two-tower checkpoint keeps projection_dim at its top level; the text half needs it
            kwargs["config"] = config.text_config
            kwargs["config"].projection_dim = config.projection_dim
        verbosity = hf_logging.get_verbosity()
        if getattr(config, "model_type", "") in ("clip", "siglip"):
            # a two-tower checkpoint's image-tower weights are left out on purpose: no load report listing them
            hf_logging.set_verbosity_error()
        try:
            model = family.model_class.from_pretrained(source, use_safetensors=True, dtype=dtype, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = load_tokenizer(source)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {family.name} text encoder from '{source}': {one_line(exc)}"
        ) from None
    model.eval().requires_grad_(False)
    return TextEncoder(model, tokenizer, family).to(device)
