"""The model store: every trained or built model is an HF directory plus a `manifest.json`.

    <dir>/model.safetensors, config.json, tokenizer files   ← what a detector may read
    <dir>/manifest.json                                     ← what made it (ground truth included)

The manifest says whether the model is a base, a backdoored or a benign model, its trigger and
target, seed and config hash. Ground truth lives there and nowhere else: `core.loading` never
reads it, so nothing of it reaches the detector.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.encoders import TextEncoder
from core.provenance import provenance

MANIFEST = "manifest.json"
KINDS = ("base", "backdoor", "benign")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds and removed when it
    fails: readers never see half a file, and a failed write leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_model(encoder: TextEncoder, directory: str | os.PathLike, manifest: dict, overwrite: bool = False) -> Path:
    """Write `encoder` and its manifest into `directory`, atomically (a failed save leaves nothing).

    The manifest must say its `kind` (base, backdoor or benign); provenance is added here.
    """
    directory = Path(directory)
    if manifest.get("kind") not in KINDS:
        raise ValueError(f"manifest 'kind' must be one of {KINDS}, got {manifest.get('kind')!r}")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"model directory '{directory}' already exists; remove it or pass overwrite=True")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        encoder.save(tmp)
        write_json_atomic(tmp / MANIFEST, {**manifest, "provenance": provenance()})
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a stored model — for the harness and the analysis, never for the detector."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in '{directory}': not a model written by the amdet-bench model store")
    return json.loads(path.read_text())
