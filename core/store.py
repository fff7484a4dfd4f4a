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
from core.precision import keyed_by_precision
from core.provenance import provenance, settings_hash

MANIFEST = "manifest.json"
KINDS = ("base", "backdoor", "benign")
# what a stored model depends on, by kind: hashed into its manifest's settings_key, so that a job
# never hands back a model made with another base, training, attack, prompts or seed
MODEL_SETTINGS = {
    "backdoor": ("encoder", "training.attack", "attack", "prompts", "pools", "seed"),
    "benign": ("encoder", "training.benign", "benign", "prompts", "seed"),
    "prompt_tuned": ("encoder", "vision", "prompt_tuning", "poison", "seed"),
}
# per benign mode, what it does not read: how many checkpoints a run keeps is not what each one is
# (no schedule depends on the run's length), so all checkpoints of a run share one key
NOT_MODEL = {"checkpoints": ("benign.models", "benign.steps"), "independent": ("benign.models", "benign.checkpoint_every")}


class StaleModel(ValueError):
    """A stored model made with other settings than the current config's."""


def model_settings_key(cfg, kind: str) -> str:
    """The settings key of the `kind` model (backdoor or benign) that `cfg` makes."""
    ignore = NOT_MODEL.get(cfg.benign.mode, ()) if kind == "benign" else ()
    if kind not in MODEL_SETTINGS:
        raise ValueError(f"unknown model kind '{kind}' for a settings key; one of {', '.join(MODEL_SETTINGS)}")
    return keyed_by_precision(settings_hash(cfg, MODEL_SETTINGS[kind], ignore), cfg)


def stored_model(directory: str | os.PathLike, key: str) -> dict | None:
    """The manifest of the model in `directory` when it was made with the settings `key` names, None
    when there is none. A model of other settings (or one that records no key) raises StaleModel:
    handing it back would pass another config's model off as this one's."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return None
    manifest = read_manifest(directory)
    recorded = manifest.get("settings_key")
    if recorded != key:
        why = f"settings key {recorded} vs {key}" if recorded else "its manifest records no settings key"
        raise StaleModel(
            f"{directory} holds a model made with other settings than the current config's ({why}: e.g. another "
            "base, training, attack or benign config, prompts or seed); delete or move it to make this one there, "
            "or set job.out to another directory"
        )
    return manifest


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


def write_lines_atomic(path: Path, lines: list[str]) -> None:
    """One line per entry (prompts: their text never holds a newline once cleaned), atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


TRAIN_PROMPTS = "train_prompts.txt"  # the clean prompts a model was trained on, one per line


def save_model(encoder: TextEncoder, directory: str | os.PathLike, manifest: dict, overwrite: bool = False,
               train_prompts: list[str] | None = None) -> Path:
    """Write `encoder` and its manifest into `directory`, atomically (a failed save leaves nothing).

    The manifest must say its `kind` (base, backdoor or benign); provenance is added here.
    `train_prompts`: the exact clean prompts it was trained on, kept beside it (TRAIN_PROMPTS) so that
    anyone can check that no detector saw them.
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
        if train_prompts is not None:
            write_lines_atomic(tmp / TRAIN_PROMPTS, train_prompts)
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
