"""What stored state is keyed by: a stored model by every setting it depends on (a job refuses one made
with other settings instead of handing it back), a cell's snapshots by the cell (cells sharing
snapshots.dir neither resume from nor delete each other's state)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from attacks import job as attack_job
from benign_ft import job as benign_job
from core.snapshot import Snapshots
from core.store import StaleModel, model_settings_key
from sweeps.cell import run_cell
from sweeps.grid import plan
from tests.helpers import compose_config
from tests.test_attacks import attack_cfg
from tests.test_benign import benign_cfg
from tests.test_sweeps import MICRO_STUDY

# none of these changes what a model is made of
HOW = ("progress=false", "threads=1", "device=cuda", "job.out=/elsewhere", "snapshots.dir=/s", "snapshots.every_s=0",
       "scan.prompts=10", "cell.keep_model=false", "wandb.mode=disabled", "experiment.allow_mixed_compute=true")


def test_a_backdoor_key_follows_what_the_model_depends_on_and_nothing_else():
    key = model_settings_key(compose_config("job=attack"), "backdoor")
    unrelated = ("training.benign.lr=0.5", "benign.models=3", "benign.mode=independent", "scan.seed=4")
    assert model_settings_key(compose_config("job=attack", *HOW, *unrelated), "backdoor") == key
    for changed in ("encoder.tiny.arch.hidden=32", "encoder.tiny.pretrain.steps=3", "encoder=tiny-siglip",
                    "training.attack.lr=0.5", "attack.triggers.length=2", "attack=text_on_pair", "attack.eval_prompts=7",
                    "prompts.partition.attacker=0.5", "prompts.seed=1", "pools.rare_words=[qx]", "seed=3"):
        assert model_settings_key(compose_config("job=attack", changed), "backdoor") != key, changed


def test_a_benign_key_covers_the_run_not_how_many_checkpoints_it_keeps():
    key = model_settings_key(compose_config("job=benign"), "benign")
    unrelated = ("training.attack.lr=0.5", "attack=text_on_pair", "pools.rare_words=[qx]",
                 "benign.models=20", "benign.steps=99")  # checkpoints mode: its run's length is not a model's
    assert model_settings_key(compose_config("job=benign", *HOW, *unrelated), "benign") == key
    for changed in ("encoder.tiny.arch.layers=4", "training.benign.lr=0.5", "benign.checkpoint_every=5",
                    "benign.train_prompts=10", "prompts.partition.benign=0.5", "seed=3", "benign.mode=independent"):
        assert model_settings_key(compose_config("job=benign", changed), "benign") != key, changed
    independent = model_settings_key(compose_config("job=benign", "benign.mode=independent"), "benign")
    assert model_settings_key(compose_config("job=benign", "benign.mode=independent", "benign.checkpoint_every=5"),
                              "benign") == independent
    assert model_settings_key(compose_config("job=benign", "benign.mode=independent", "benign.steps=5"),
                              "benign") != independent


def refusal(directory) -> str:
    return rf"^{re.escape(str(directory))} holds a model made with other settings .*delete or move it .*job\.out"


def test_an_attack_job_reuses_its_own_model_and_refuses_one_made_with_other_settings(tmp_path):
    out, weights = tmp_path / "model", tmp_path / "model" / "model.safetensors"
    made = attack_job.run(attack_cfg(tmp_path))
    written, manifest = weights.stat().st_mtime_ns, (out / "manifest.json").read_text()
    assert json.loads(manifest)["settings_key"] == made["settings_key"] == model_settings_key(attack_cfg(tmp_path), "backdoor")

    again = attack_job.run(attack_cfg(tmp_path))
    assert again["settings_key"] == made["settings_key"] and again["history"] == made["history"]

    cache = Path(os.environ["AMDET_CACHE"])  # conftest's per-session cache: where a base would be built
    bases = sorted(cache.rglob("manifest.json"))
    # the new user's case: another base (hidden 48), then another training setting
    for changed in ("encoder.tiny.arch.hidden=48", "training.attack.lr=0.5"):
        with pytest.raises(StaleModel, match=refusal(out)) as info:
            attack_job.run(attack_cfg(tmp_path, changed))
        assert "\n" not in str(info.value)
    assert sorted(cache.rglob("manifest.json")) == bases, "refused before any base was built"

    stripped = {k: v for k, v in json.loads(manifest).items() if k != "settings_key"}  # a model stored before keys
    (out / "manifest.json").write_text(json.dumps(stripped))
    with pytest.raises(StaleModel, match=r"records no settings key.*delete or move it"):
        attack_job.run(attack_cfg(tmp_path))
    assert weights.stat().st_mtime_ns == written, "a refused model is neither retrained nor overwritten"


def test_a_benign_run_keeps_its_checkpoints_extends_them_and_refuses_other_settings(tmp_path):
    run = ["benign.checkpoint_every=2"]
    first = benign_job.run(benign_cfg(tmp_path, *run, "benign.models=2"))
    dirs = [tmp_path / "run" / f"step{s:05d}" for s in (2, 4, 6)]
    keys = {json.loads((d / "manifest.json").read_text())["settings_key"] for d in dirs[:2]}
    assert len(keys) == 1 and first["written"] == [str(d) for d in dirs[:2]], "one key for the whole run"
    mtimes = [(d / "model.safetensors").stat().st_mtime_ns for d in dirs[:2]]

    more = benign_job.run(benign_cfg(tmp_path, *run, "benign.models=3"))  # the same run, one more checkpoint
    assert more["written"] == [str(dirs[2])] and json.loads((dirs[2] / "manifest.json").read_text())["settings_key"] in keys
    assert [(d / "model.safetensors").stat().st_mtime_ns for d in dirs[:2]] == mtimes

    with pytest.raises(StaleModel, match=refusal(dirs[0])):
        benign_job.run(benign_cfg(tmp_path, *run, "benign.models=3", "training.benign.lr=5e-4"))
    assert [(d / "model.safetensors").stat().st_mtime_ns for d in dirs[:2]] == mtimes


class Preempted(BaseException):
    """A kill between two steps: the loop stops with its snapshot on disk."""


def test_cells_sharing_snapshots_dir_neither_resume_from_nor_delete_each_others_state(tmp_path, monkeypatch):
    shared = tmp_path / "snaps"
    _, cells, _ = plan([*MICRO_STUDY, f"paths.output_dir={tmp_path}", "experiment.calibration_seeds=null",
                        "cell.kind=backdoor", "seed=0,1", "wandb.mode=disabled",
                        f"snapshots.dir={shared}", "snapshots.every_s=0"])
    killed, whole = cells
    assert killed.id != whole.id

    original, saves = Snapshots.save, []

    def save(self, state):  # the killed cell dies after its second attack snapshot
        original(self, state)
        saves.append(self.path)
        if len(saves) == 2:
            raise Preempted

    monkeypatch.setattr(Snapshots, "save", save)
    with pytest.raises(Preempted):
        run_cell(killed.directory, killed.config(), killed.id)
    assert saves[-1] == shared / killed.id / "attack.pt"
    monkeypatch.setattr(Snapshots, "save", original)

    done = run_cell(whole.directory, whole.config(), whole.id)["amdet"]  # the other cell, start to end
    assert done["status"] == "ok" and done["train_resumed_from_step"] is None, "it never loads the killed cell's state"
    assert (shared / killed.id / "attack.pt").is_file(), "finishing a cell leaves the other cell's snapshot"
    assert not (shared / whole.id).exists() and shared.is_dir(), "a cell removes its own snapshots and only those"

    resumed = run_cell(killed.directory, killed.config(), killed.id)["amdet"]  # the requeued cell
    assert resumed["status"] == "ok" and resumed["train_resumed_from_step"] == 2
    assert not (shared / killed.id).exists()
