"""Mid-loop snapshots: a job killed partway through its attack training, benign fine-tuning or
inversion resumes from its last snapshot (step > 0) and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from amdet.job import scan_to
from attacks import job as attack_job
from benign_ft import job as benign_job
from core.snapshot import Snapshots
from tests.test_amdet import scan_cfg
from tests.test_attacks import attack_cfg
from tests.test_benign import benign_cfg


class Preempted(BaseException):
    """What a kill looks like to the loop: it stops between two steps, its snapshot on disk."""


@pytest.fixture
def preempt_after(monkeypatch):
    """Kill the loop right after its n-th snapshot, once: the rerun (the requeued job) goes through."""
    def arm(n: int):
        saves = []
        original = Snapshots.save

        def save(self, state):
            original(self, state)
            saves.append(state["step"])
            if len(saves) == n:
                raise Preempted(state["step"])
        monkeypatch.setattr(Snapshots, "save", save)
        return saves
    return arm


def same_weights(a, b) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_snapshots_are_off_without_a_path_and_reject_a_negative_cadence(tmp_path):
    off = Snapshots(None, every_s=0)
    off.maybe_save(lambda: pytest.fail("a switched-off snapshot must not even build its state"))
    assert off.load() is None
    with pytest.raises(ValueError, match="snapshots.every_s must be ≥ 0"):
        Snapshots(tmp_path / "s.pt", every_s=-1)


def test_an_unreadable_snapshot_or_one_of_other_settings_means_starting_over(tmp_path):
    (tmp_path / "s.pt").write_bytes(b"not a torch file")
    snaps = Snapshots(tmp_path / "s.pt", every_s=0, key="a")
    assert snaps.load() is None and snaps.resumed_from is None
    snaps.save({"step": 3})
    assert Snapshots(tmp_path / "s.pt", key="b").load() is None
    assert Snapshots(tmp_path / "s.pt", key="a").load()["step"] == 3


def test_an_attack_killed_midway_resumes_to_the_same_model(tmp_path, preempt_after):
    snaps = ["snapshots.every_s=0", f"snapshots.dir={tmp_path}/snaps"]
    attack_job.run(attack_cfg(tmp_path, f"job.out={tmp_path}/whole"))

    preempt_after(2)
    with pytest.raises(Preempted):
        attack_job.run(attack_cfg(tmp_path, f"job.out={tmp_path}/resumed", *snaps))
    assert not (tmp_path / "resumed").exists() and (tmp_path / "snaps" / "attack.pt").is_file()
    manifest = attack_job.run(attack_cfg(tmp_path, f"job.out={tmp_path}/resumed", *snaps))
    assert manifest["resumed_from_step"] == 2
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert manifest["history"] == whole["history"] and manifest["metrics"]["asr"] == whole["metrics"]["asr"]
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")
    assert not (tmp_path / "snaps" / "attack.pt").exists(), "the snapshot goes once the model is stored"


def test_a_benign_fine_tune_killed_midway_resumes_to_the_same_model(tmp_path, preempt_after):
    run = ["benign.mode=independent", "benign.steps=5"]
    snaps = ["snapshots.every_s=0", f"snapshots.dir={tmp_path}/snaps"]
    benign_job.run(benign_cfg(tmp_path, *run, f"job.out={tmp_path}/whole"))
    preempt_after(3)
    with pytest.raises(Preempted):
        benign_job.run(benign_cfg(tmp_path, *run, f"job.out={tmp_path}/resumed", *snaps))
    result = benign_job.run(benign_cfg(tmp_path, *run, f"job.out={tmp_path}/resumed", *snaps))
    assert result["manifests"][0]["resumed_from_step"] == 3
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")


def test_a_scan_killed_midway_resumes_to_the_same_verdict_score_and_log(tmp_path, pair, preempt_after):
    observe = dict(observe=True)  # checks from the first step, so the check log crosses the kill too
    whole = scan_to(tmp_path / "whole", scan_cfg(*pair), **observe)
    snaps = ["snapshots.every_s=0", f"snapshots.dir={tmp_path}/snaps"]
    preempt_after(4)
    with pytest.raises(Preempted):
        scan_to(tmp_path / "resumed", scan_cfg(*pair, *snaps), **observe)
    assert not (tmp_path / "resumed" / "result.json").exists(), "a killed scan leaves no result"
    resumed = scan_to(tmp_path / "resumed", scan_cfg(*pair, *snaps), **observe)
    assert resumed["resumed_from_step"] == 4 and whole["resumed_from_step"] is None
    assert (resumed["score"], resumed["steps"], resumed["landscape_ratio"]) == (whole["score"], whole["steps"], whole["landscape_ratio"])
    assert [c["running_loss"] for c in resumed["checks"]] == [c["running_loss"] for c in whole["checks"]]
    assert torch.equal(load_file(tmp_path / "whole" / "v.safetensors")["v"], load_file(tmp_path / "resumed" / "v.safetensors")["v"])
    assert not (tmp_path / "snaps" / "scan.pt").exists()

