"""The model store: HF directory + manifest, written atomically, ground truth kept apart."""

from __future__ import annotations

import json

import pytest
import torch

from core.loading import load_encoder
from core.store import read_manifest, save_model, write_json_atomic

MANIFEST = {"kind": "backdoor", "trigger": "zzzz", "target": "a photo of a cat", "seed": 3, "config_hash": "abc"}


@pytest.mark.parametrize("family", ["clip"])
def test_save_model_writes_manifest_with_provenance(micro_encoder, tmp_path):
    path = save_model(micro_encoder, tmp_path / "m", MANIFEST)
    manifest = read_manifest(path)
    assert {k: manifest[k] for k in MANIFEST} == MANIFEST
    assert set(manifest["provenance"]) == {"code", "packages", "hardware"}
    assert manifest["provenance"]["packages"]["torch"].startswith("2.")
    hardware = manifest["provenance"]["hardware"]  # the CPU and its kernels: a tiny world built elsewhere rounds differently
    assert hardware["cpu_model"] and hardware["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert (path / "model.safetensors").exists() and load_encoder(path).family.name == "clip"


@pytest.mark.parametrize("family", ["clip"])
def test_existing_model_is_never_overwritten_by_default(micro_encoder, tmp_path):
    path = save_model(micro_encoder, tmp_path / "m", MANIFEST)
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(micro_encoder, path, {**MANIFEST, "seed": 4})
    assert read_manifest(path)["seed"] == 3


@pytest.mark.parametrize("family", ["clip"])
def test_failed_save_leaves_nothing(micro_encoder, tmp_path, monkeypatch):
    def broken(directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(micro_encoder, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(micro_encoder, tmp_path / "m", MANIFEST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["clip"])
def test_manifest_kind_is_checked(micro_encoder, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        save_model(micro_encoder, tmp_path / "m", {"kind": "mystery"})


def test_read_manifest_of_a_foreign_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)


def test_write_json_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
