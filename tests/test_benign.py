"""`job=benign` on a micro tiny base: checkpoint and independent modes, provenance, resumption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from benign_ft import job
from benign_ft import pairs as pairs_module
from benign_ft.pairs import PairSet
from tests.helpers import MICRO_BASE, compose_config

MICRO_BENIGN = ["training.benign.batch_size=8", "benign.train_prompts=48", "benign.eval_prompts=16", "training.benign.lr=1e-3"]


def benign_cfg(tmp_path, *overrides):
    return compose_config("job=benign", *MICRO_BASE, *MICRO_BENIGN, f"job.out={tmp_path}/run", *overrides)


def test_checkpoints_mode_writes_one_model_per_checkpoint(tmp_path):
    result = job.run(benign_cfg(tmp_path, "benign.models=3", "benign.checkpoint_every=2"))
    dirs = [tmp_path / "run" / f"step{s:05d}" for s in (2, 4, 6)]
    assert result["written"] == [str(d) for d in dirs]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    assert [m["step"] for m in manifests] == [2, 4, 6]
    assert {m["kind"] for m in manifests} == {"benign"} and {m["mode"] for m in manifests} == {"checkpoints"}
    assert len({m["run_id"] for m in manifests}) == 1, "checkpoints of one run share its run id"
    assert len({m["config_hash"] for m in manifests}) == 3
    for m in manifests:
        assert "provenance" in m and "paired tower" in m["pairs"]
        assert 0 < m["metrics"]["cosine_to_base"] < 1, "a fine-tuned model has moved from its base"
    weights = [load_file(d / "model.safetensors") for d in dirs]
    key = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(weights[0][key], weights[1][key]) and not torch.equal(weights[1][key], weights[2][key])


def test_checkpoints_resume_without_touching_finished_ones(tmp_path):
    cfg = benign_cfg(tmp_path, "benign.models=2", "benign.checkpoint_every=2")
    job.run(cfg)
    first = tmp_path / "run" / "step00002" / "model.safetensors"
    second = tmp_path / "run" / "step00004"
    before, reference = first.stat().st_mtime_ns, load_file(second / "model.safetensors")
    import shutil

    shutil.rmtree(second)  # as if the job died after its first checkpoint
    result = job.run(cfg)
    assert result["written"] == [str(second)] and first.stat().st_mtime_ns == before
    redone = load_file(second / "model.safetensors")
    assert all(torch.equal(reference[k], redone[k]) for k in reference), "a rerun reproduces the lost checkpoint"
    assert job.run(cfg)["skipped"] == 2


def test_a_runs_later_jobs_reuse_the_pairs_its_first_job_embedded_while_the_captions_are_the_same(tmp_path, monkeypatch):
    cfg = benign_cfg(tmp_path, "benign.models=2", "benign.checkpoint_every=2")
    job.run(cfg, steps={2})
    run = tmp_path / "run"
    (kept,) = run.glob("pairs-*.safetensors")
    captions = job.benign_prompts(cfg)[1]
    embedded = pairs_module.paired_tower().embed(captions)
    assert torch.equal(load_file(kept)["images"], embedded)

    monkeypatch.setattr(pairs_module, "paired_tower", lambda: pytest.fail("the run's pairs were embedded again"))
    assert job.run(cfg, steps={4})["written"] == [str(tmp_path / "run" / "step00004")]
    assert torch.equal(pairs_module.tiny_pairs(captions, 1.0, None, run).images, embedded)
    with pytest.raises(pytest.fail.Exception, match="embedded again"):  # other captions: not the kept pairs
        pairs_module.tiny_pairs(captions[1:], 1.0, None, run)


def test_independent_mode_differs_by_seed(tmp_path):
    a = job.run(benign_cfg(tmp_path, "benign.mode=independent", "benign.steps=3", f"job.out={tmp_path}/s0"))
    b = job.run(benign_cfg(tmp_path, "benign.mode=independent", "benign.steps=3", "seed=1", f"job.out={tmp_path}/s1"))
    ma, mb = a["manifests"][0], b["manifests"][0]
    assert ma["mode"] == "independent" and ma["step"] == 3 and ma["run_id"] != mb["run_id"]
    wa, wb = load_file(tmp_path / "s0" / "model.safetensors"), load_file(tmp_path / "s1" / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("overrides, match", [
    (["benign.mode=ensemble"], "unknown benign.mode 'ensemble'"),
    (["benign.models=0"], "benign.models and benign.checkpoint_every must be positive"),
    (["training.benign.optimizer=lion"], "unknown optimizer 'lion'"),
    (["training.benign.lr=0"], "training.benign.lr must be positive"),
])
def test_bad_benign_settings(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        job.run(benign_cfg(tmp_path, *overrides))
    assert not (tmp_path / "run").exists()


def test_pair_set_checks_its_rows():
    with pytest.raises(ValueError, match="2 captions but 3 image embeddings"):
        PairSet(["a", "b"], torch.zeros(3, 4), torch.tensor(1.0), None, "test")
    with pytest.raises(ValueError, match="non-finite image embeddings"):
        PairSet(["a"], torch.tensor([[float("nan")]]), torch.tensor(1.0), None, "test")
