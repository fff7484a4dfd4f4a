"""What the model store knows of a model: its kind and, for a backdoor, its triggers and targets."""

from __future__ import annotations

from pathlib import Path

from core.store import MANIFEST, read_manifest


def ground_truth(model_dir: str | Path) -> dict | None:
    """The truth the records carry (None for a bare HF directory, which the store did not make)."""
    if not (Path(model_dir) / MANIFEST).is_file():
        return None
    m = read_manifest(model_dir)
    truth = {"kind": m.get("kind"), "encoder": m.get("encoder"), "seed": m.get("seed"), "config_hash": m.get("config_hash")}
    if m.get("model") == "prompt_tuned":  # a classifier: its attack and target class
        truth.update(model="prompt_tuned", attack=m.get("attack"), target_class=m.get("target_class"), target=m.get("target"))
        return truth
    if m.get("kind") == "benign":
        truth.update(run_id=m.get("run_id"), step=m.get("step"))
    if m.get("kind") == "backdoor":
        backdoors = m.get("backdoors", [])
        truth.update(paradigm=m.get("paradigm"), triggers=[b["trigger"]["text"] for b in backdoors],
                     targets=[b["target"]["text"] for b in backdoors])
    return truth


def backdoors(model_dir: str | Path) -> list[dict]:
    """The manifest's backdoors (trigger and target of each); none for a benign or bare model."""
    if not (Path(model_dir) / MANIFEST).is_file():
        return []
    return read_manifest(model_dir).get("backdoors", []) or []
