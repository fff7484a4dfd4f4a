"""The honest protocol's scan: a budget-fixed score, both threshold regimes, disjoint shallow prompts,
the difficulty-floor statistics."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

from amdet.checks import observing
from amdet.checks import CheckThresholds
from amdet.job import regimes, scan_to
from amdet.landscape import LandscapeConfig
from amdet.outputs import write_artifacts
from amdet.scan import ScanConfig, scan, scan_regimes
from core.drift import weight_distance
from core.snapshot import Snapshots
from core.tiny.architectures import random_encoder
from sweeps.grid import plan
from tests.helpers import compose_config, micro_arch
from tests.test_amdet import MICRO_SCAN

PROMPTS = [f"a painting of a {w} number {i}" for i in range(24) for w in ("cat",)]
OFF = dict(assim_ratio=-1.0, same_ratio=-1.0, diff_ratio=-1.0, landscape_ratio=-1.0)


@pytest.fixture(scope="module")
def models():
    return random_encoder(micro_arch("clip"), seed=0), random_encoder(micro_arch("clip"), seed=1)


def config(**thresholds) -> ScanConfig:
    return ScanConfig(batch_size=4, epochs=2, check_every=2, seed=3, test_share=0.25,
                      thresholds=replace(CheckThresholds(), **thresholds), landscape=LandscapeConfig(points=5, batch=8))


def test_score_is_independent_of_thresholds_and_of_when_the_scan_stopped(models):
    model, anchor = models
    deciding = scan(model, anchor, PROMPTS, config(loss_start=10.0, **OFF), progress=False)
    watching = scan(model, anchor, PROMPTS, replace(config(), thresholds=observing(CheckThresholds())), progress=False)
    assert deciding["verdict"] == "backdoor" and deciding["steps"] < watching["steps"], "one stops early, one runs on"
    assert deciding["score"] == watching["score"] and deciding["score_steps"] == watching["score_steps"] == 4
    assert deciding["final_assimilation"] != watching["final_assimilation"], "the old score depended on the stop"


def test_score_is_the_assimilation_after_the_budget_of_plain_steps(models):
    model, anchor = models
    cfg = replace(config(), thresholds=observing(CheckThresholds()))
    plain = scan(model, anchor, PROMPTS, replace(cfg, epochs=1), progress=False)  # exactly one epoch: 4 steps
    early_end = scan(model, anchor, PROMPTS, config(loss_stop=10.0, loss_start=-10.0), progress=False)
    assert plain["steps"] == 4 and plain["score"] == pytest.approx(plain["final_assimilation"], abs=1e-7)
    assert early_end["score"] == plain["score"], "an epoch ended early forks the plain trajectory for the score"
    with pytest.raises(ValueError, match="score_steps must be 1–8"):
        scan(model, anchor, PROMPTS, replace(cfg, score_steps=9), progress=False)


def test_regimes_scanned_together_end_as_each_scanned_alone(models):
    """One pass for every regime: they share the trajectory until one decides or ends an epoch early
    (it then walks on a fork), and each ends where its own scan ends."""
    model, anchor = models
    configs = {
        "decides": config(loss_start=10.0, **OFF),                       # decides at the first check
        "ends_early": config(loss_stop=10.0, loss_start=-10.0),          # every epoch ends after one step
        "watches": replace(config(), thresholds=observing(CheckThresholds())),  # checks all, decides nothing
        "plain": config(),
    }
    together, times, _ = scan_regimes(model, anchor, PROMPTS, configs, progress=False)
    for name, cfg in configs.items():
        alone = scan(model, anchor, PROMPTS, cfg, progress=False)
        got = together[name]
        assert (got["verdict"], got["steps"], got["score"]) == (alone["verdict"], alone["steps"], alone["score"]), name
        assert torch.equal(got["v"], alone["v"]) and got["landscape_ratio"] == alone["landscape_ratio"], name
        assert [c["running_loss"] for c in got["checks"]] == [c["running_loss"] for c in alone["checks"]], name
        assert got["final_assimilation"] == alone["final_assimilation"], name
    assert together["decides"]["steps"] < together["watches"]["steps"] and together["ends_early"]["steps"] == 2
    with pytest.raises(ValueError, match="differ in their check thresholds only"):
        scan_regimes(model, anchor, PROMPTS, {"a": config(), "b": replace(config(), lr=0.5)}, progress=False)


def test_a_landscape_check_that_is_off_computes_no_landscape(models, tmp_path):
    model, anchor = models
    off = scan(model, anchor, PROMPTS, config(loss_start=10.0, **OFF), progress=False)
    assert off["verdict"] == "backdoor" and off["landscape_ratio"] is None and off["regime_times"]["landscape_s"] == 0
    assert off["checks"][-1]["landscape_ratio"] is None
    files = write_artifacts(tmp_path, off)
    assert "landscape" not in files and not (tmp_path / "landscape.png").exists() and (tmp_path / files["v"]).is_file()
    on = scan(model, anchor, PROMPTS, config(loss_start=10.0, **{**OFF, "landscape_ratio": 0.0}), progress=False)
    assert on["regime_times"]["landscape_s"] > 0 and on["checks"][0]["landscape_ratio"] is not None
    quiet = replace(config(), landscape=LandscapeConfig(points=5, batch=8, undecided=False))
    undecided = scan(model, anchor, PROMPTS, quiet, progress=False)  # the paper's thresholds: never decides here
    assert undecided["verdict"] == "benign" and undecided["landscape_ratio"] is None
    assert undecided["score"] == scan(model, anchor, PROMPTS, config(), progress=False)["score"]


def test_a_calibration_scan_has_its_landscape_whatever_the_setting(tmp_path, pair):
    cfg = compose_config("job=scan", *MICRO_SCAN, f"scan.model_path={pair[0]}", f"scan.anchor_path={pair[1]}",
                         "paths.profiles_dir=null", "scan.landscape.undecided=false")
    assert scan_to(tmp_path / "scored", cfg)["landscape_ratio"] is None
    assert scan_to(tmp_path / "observed", cfg, observe=True)["landscape_ratio"] is not None, "the fit needs it"


def test_regimes_killed_after_their_trajectories_forked_resume_to_the_same_ends(models, tmp_path, monkeypatch):
    model, anchor = models
    # killed at step 5 of 8: one regime has decided (step 2), one has ended on its fork (2 steps)
    configs = {"decides": config(loss_start=10.0, **OFF), "ends_early": config(loss_stop=10.0, loss_start=-10.0),
               "watches": replace(config(), thresholds=observing(CheckThresholds()))}
    whole, _, _ = scan_regimes(model, anchor, PROMPTS, configs, progress=False)
    saves, original = [], Snapshots.save

    def save(self, state):
        original(self, state)
        saves.append(state["step"])
        if len(saves) == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr(Snapshots, "save", save)
    with pytest.raises(KeyboardInterrupt):
        scan_regimes(model, anchor, PROMPTS, configs, progress=False, snapshots=Snapshots(tmp_path / "s.pt", 0.0))
    monkeypatch.setattr(Snapshots, "save", original)
    resumed, _, _ = scan_regimes(model, anchor, PROMPTS, configs, progress=False, snapshots=Snapshots(tmp_path / "s.pt", 0.0))
    for name in configs:
        a, b = whole[name], resumed[name]
        assert b["resumed_from_step"] == 5 and (a["verdict"], a["steps"], a["score"]) == (b["verdict"], b["steps"], b["score"])
        assert torch.equal(a["v"], b["v"]) and [c["step"] for c in a["checks"]] == [c["step"] for c in b["checks"]], name
    assert [whole[n]["steps"] for n in configs] == [2, 2, 8] and whole["decides"]["verdict"] == "backdoor"


def test_a_scan_reports_both_regimes_and_explicit_checks_win(tmp_path, pair):
    model_dir, anchor_dir = pair
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    fitted = {"assim_ratio": -1.0, "same_ratio": -1.0, "diff_ratio": -1.0, "landscape_ratio": -1.0, "loss_start": 10.0}
    (profiles / "clip-h32.yaml").write_text(yaml.safe_dump({"profile": "clip-h32", "checks": fitted, "score_cut": 0.5}))
    cfg = compose_config(*MICRO_SCAN, f"scan.model_path={model_dir}", f"scan.anchor_path={anchor_dir}",
                         f"paths.profiles_dir={profiles}", "scan.checks.landscape_ratio=2.0",
                         "scan.explicit_checks=[landscape_ratio]")
    result = scan_to(tmp_path / "out", cfg)
    stored = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(stored["regimes"]) == {"paper", "calibrated"} and stored["verdicts"]["calibrated"] == result["verdict"]
    calibrated = stored["regimes"]["calibrated"]["thresholds"]
    assert calibrated["assim_ratio"] == -1.0, "the profile's value where nothing was set on purpose"
    assert calibrated["landscape_ratio"] == 2.0, "an explicit scan.checks value wins over the profile"
    assert stored["regimes"]["paper"]["thresholds"]["assim_ratio"] == 0.8, "the paper regime keeps the fixed values"
    assert stored["verdicts"]["calibrated"] == "benign", "a landscape ratio above 1 can never pass"
    assert (tmp_path / "out" / "regimes" / "paper" / "v.safetensors").is_file()
    shallow = (tmp_path / "out" / "shallow_prompts.txt").read_text().splitlines()
    assert len(shallow) == 40 and stored["shallow"]["role"] == "defender"
    assert stored["floor"]["weight_distance"] > 0 and 0 <= stored["floor"]["output_drift"] <= 2


def test_weight_distance_is_relative_and_zero_for_the_base(models):
    model, anchor = models
    assert weight_distance(anchor, anchor) == 0.0
    shifted = random_encoder(micro_arch("clip"), seed=1)
    with torch.no_grad():
        for p in shifted.model.parameters():
            p.mul_(1.1)
    assert weight_distance(shifted, anchor) == pytest.approx(0.1, rel=1e-4)


def test_table4_cells_run_with_their_own_tau_under_a_profile(tmp_path, models):
    """The τ sweep: a profile fills the checks a cell does not set; the cell's τ values are its own."""
    model, _ = models
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    fitted = {"assim_ratio": 0.11, "same_ratio": 0.22, "diff_ratio": 0.33, "landscape_ratio": 0.44, "loss_start": -0.5}
    (profiles / "clip-h32.yaml").write_text(yaml.safe_dump({"profile": "clip-h32", "checks": fitted}))
    _, scored, _ = plan(["experiment=table4_thresholds", "encoder=tiny-clip", "seed=0", "attack.triggers.length=1",
                         f"paths.profiles_dir={profiles}", "scan.model_path=nowhere"])
    cell = next(c for c in scored if "scan.checks.assim_ratio=0.7" in c.overrides and "scan.checks.landscape_ratio=0.6" in c.overrides)
    cfg = cell.config()
    assert sorted(cfg.scan.explicit_checks) == ["assim_ratio", "landscape_ratio", "same_ratio"]
    calibrated = vars(regimes(cfg, model, observe=False)["calibrated"][0])
    assert (calibrated["assim_ratio"], calibrated["landscape_ratio"]) == (0.7, 0.6), "the cell's τ, not the profile's"
    assert (calibrated["diff_ratio"], calibrated["loss_start"]) == (0.33, -0.5), "the rest from the profile"


def test_a_screen_that_keeps_fewer_tokens_than_its_candidates_is_refused():
    with pytest.raises(ValueError, match="screen_keep must be null or at least screen_candidates \\(16\\), got 8"):
        ScanConfig(screen_keep=8)
    assert ScanConfig(screen_keep=None).screen_keep is None
