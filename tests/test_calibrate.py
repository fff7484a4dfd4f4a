"""Threshold calibration: the fitting rules, the profile file, its automatic use and disjointness."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from omegaconf import OmegaConf

from amdet.checks import observing
from amdet.calibrate import OFF, calibrate_to, fit, model_statistics, split, write_profile
from amdet.checks import CheckThresholds
from evaluation.job import scan_to  # the scan, then its evaluation (truth, Sim)
from core.store import save_model
from core.tiny.architectures import random_encoder
from tests.helpers import compose_config, micro_arch
from tests.test_amdet import MICRO_SCAN, scan_cfg

TRIGGER = {"text": "kz", "level": "word", "tokens": 1, "position": "start", "replaced_character": None}


def stats(assim, same, diff, land, loss, prompts=200):
    """One model's statistics (ratios over `prompts` test prompts); its score is taken as its best loss
    negated (higher for backdoors)."""
    return {"assim_ratio": assim, "same_ratio": same, "diff_ratio": diff, "landscape_ratio": land,
            "best_running_loss": loss, "gate_loss": loss, "score": -loss, "prompts": prompts}


def test_fit_takes_gap_midpoints_and_switches_off_checks_without_signal():
    backdoor = [stats(1.0, 0.99, 0.0, 0.5, -0.88), stats(0.97, 0.95, 0.0, 0.7, -0.84), stats(1.0, 1.0, 0.0, 0.45, -0.86)]
    benign = [stats(0.0, 0.0, 0.0, 0.46, -0.45), stats(0.01, 0.0, 0.0, 0.6, -0.47)]
    t, score_cut, report = fit(backdoor, benign, CheckThresholds())
    assert t.assim_ratio == pytest.approx((0.97 + 0.01) / 2) and t.same_ratio == pytest.approx(0.95 / 2)
    assert t.diff_ratio == OFF and report["diff_ratio"]["rule"] == "no signal", "equal on both classes: no signal"
    assert t.landscape_ratio == OFF and report["landscape_ratio"]["rule"].startswith("off: 0 benign"), \
        "no benign model passes the other checks: nothing for the landscape filter to clear"
    assert t.loss_start == pytest.approx(-0.47), "a ratio check decides: the gate opens below every benign model"
    assert score_cut == pytest.approx((0.84 + 0.47) / 2), "score cut: the midpoint of the score gap"
    assert t.loss_stop < t.loss_start, "the epoch must not end before the checks can run"
    assert (t.assim_token, t.same_token) == (0.8, 0.92), "per-prompt thresholds keep their configured values"
    for s in backdoor:  # the fitted rule flags every calibration backdoor and no benign model
        assert s["assim_ratio"] > t.assim_ratio and s["same_ratio"] > t.same_ratio and s["score"] > score_cut
    for s in benign:
        assert not (s["assim_ratio"] > t.assim_ratio and s["same_ratio"] > t.same_ratio)


def test_a_ratio_check_whose_cut_prompt_sampling_could_cross_is_switched_off():
    # measured on the embedded study: "different from the anchor" on 5–14 of 200 prompts for the
    # backdoors, 0 for every benign model; a backdoor like the weakest shows ≤ 2 of 200 12 % of the time
    backdoor = [stats(1.0, 1.0, d, 0.5, -0.87) for d in (0.025, 0.05, 0.065, 0.07)]
    benign = [stats(0.9, 0.0, 0.0, 0.5, -0.75)] * 4
    t, _, report = fit(backdoor, benign, CheckThresholds(), min_models=4)
    assert t.diff_ratio == OFF and "within sampling noise" in report["diff_ratio"]["rule"]
    assert report["diff_ratio"]["p_wrong_side"] == pytest.approx(0.1215, abs=1e-3)
    assert t.same_ratio == pytest.approx(0.5) and report["same_ratio"]["p_wrong_side"] < 1e-20, "a wide gap stays on"
    # the same gap on 2,000 prompts is far outside the noise: the check stays on
    t, _, _ = fit([{**s, "prompts": 2000} for s in backdoor], [{**s, "prompts": 2000} for s in benign],
                  CheckThresholds(), min_models=4)
    assert t.diff_ratio == pytest.approx(0.0125)
    # an overlapping check (a Youden split) is off: the weakest backdoor above its cut sits at it
    backdoor = [stats(a, 1.0, 0.5, 0.5, -0.87) for a in (0.93, 0.975, 1.0, 1.0)]
    benign = [stats(a, 0.0, 0.0, 0.5, -0.75) for a in (0.97, 0.9, 0.85, 0.8)]
    t, _, report = fit(backdoor, benign, CheckThresholds(), min_models=4)
    assert report["assim_ratio"]["rule"].startswith("best Youden split, off") and t.assim_ratio == OFF


def test_the_loss_gate_takes_the_gap_midpoint_only_when_no_ratio_check_decides():
    backdoor = [stats(0.5, 0.0, 0.0, 0.5, loss) for loss in (-0.88, -0.84, -0.86)]
    benign = [stats(0.5, 0.0, 0.0, 0.5, loss) for loss in (-0.45, -0.47)]
    t, _, report = fit(backdoor, benign, CheckThresholds())
    assert (t.assim_ratio, t.same_ratio, t.diff_ratio) == (OFF, OFF, OFF)
    assert t.loss_start == pytest.approx(-(0.84 + 0.47) / 2) and report["gate_loss"]["rule"] == "separates"


def test_split_of_overlapping_but_ranked_values_is_the_best_youden_cut():
    pos, neg = [0.9, 0.8, 0.7, 0.35], [0.1, 0.2, 0.3, 0.4]
    cut, rule, auroc = split(pos, neg)
    assert rule == "best Youden split" and auroc == pytest.approx(15 / 16)
    assert sum(p > cut for p in pos) - sum(n > cut for n in neg) == 3, "3 of 4 flagged, no false positive"


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="at least 2 backdoored and 2 benign"):
        fit([stats(1, 1, 0, 0.5, -0.9)] * 3, [stats(0, 0, 0, 0.5, -0.4)], CheckThresholds())


def test_observe_mode_never_decides():
    t = observing(CheckThresholds())
    assert t.loss_start == math.inf and t.loss_stop == -math.inf and t.same_ratio == math.inf
    entry = {"assim_ratio": 0.3, "same_ratio": 0.1, "diff_ratio": 0.0, "running_loss": -0.4}
    s = model_statistics({"checks": [entry, {**entry, "assim_ratio": 0.6}], "landscape_ratio": 0.4,
                          "best_running_loss": -0.5, "score": 0.7})
    assert s["assim_ratio"] == 0.6 and s["landscape_ratio"] == 0.4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A micro anchor and six stored 'models' of known kind (random encoders: the mechanics, not the fit)."""
    root = tmp_path_factory.mktemp("calib")
    random_encoder(micro_arch("clip"), seed=0).save(root / "anchor")
    for i, kind in enumerate(["backdoor"] * 3 + ["benign"] * 3):
        manifest = {"kind": kind, "base": str(root / "anchor"), "seed": i, "config_hash": f"hash{i}"}
        if kind == "backdoor":
            manifest["backdoors"] = [{"trigger": TRIGGER, "target": {"text": "a cat"}}]
        save_model(random_encoder(micro_arch("clip"), seed=10 + i), root / "store" / f"m{i}", manifest)
    save_model(random_encoder(micro_arch("clip"), seed=99), root / "scored",
               {"kind": "backdoor", "base": str(root / "anchor"), "seed": 99, "config_hash": "other",
                "backdoors": [{"trigger": TRIGGER, "target": {"text": "a cat"}}]})
    return root


def calibrate_cfg(models_dir, profiles):
    """Calibration on every stored model under models_dir, each against the base its manifest names."""
    return compose_config("job=calibrate", *MICRO_SCAN, f"job.models_dir={models_dir}", f"paths.profiles_dir={profiles}",
                          "calibration.min_models=3")


def test_calibrate_writes_a_profile_that_scans_pick_up_and_that_refuses_its_own_models(tmp_path, store):
    profiles = tmp_path / "profiles"
    profile = calibrate_to(tmp_path / "calib", calibrate_cfg(store / "store", profiles))
    path = profiles / "clip-h32.yaml"
    assert profile["path"] == str(path) and path.is_file()
    written = OmegaConf.to_container(OmegaConf.load(path))
    assert written["calibration"]["counts"] == {"backdoor": 3, "benign": 3} and len(written["calibration"]["models"]) == 6
    assert set(written["checks"]) == set(vars(CheckThresholds()))
    observed = json.loads((tmp_path / "calib" / "scans" / "000-backdoor-seed0" / "result.json").read_text())
    assert observed["thresholds_source"] == "calibration: observe mode" and observed["checks"][0]["step"] == 2

    scored = scan_to(tmp_path / "scored", scan_cfg(store / "scored", store / "anchor", profiles=profiles))
    assert scored["thresholds_source"] == f"profile: {path}" and scored["score_cut"] == written["score_cut"]
    assert scored["score_verdict"] in ("backdoor", "benign") and scored["thresholds"]["same_ratio"] == written["checks"]["same_ratio"]
    assert scored["truth"]["kind"] == "backdoor" and -1 <= scored["sim"] <= 1, "Sim against the manifest's trigger"

    with pytest.raises(ValueError, match="calibration and scored models must be disjoint"):
        scan_to(tmp_path / "again", scan_cfg(store / "store" / "m4", store / "anchor", profiles=profiles))
    assert json.loads((tmp_path / "again" / "result.json").read_text())["status"] == "error"
    copy = tmp_path / "copy"  # elsewhere and without the store's manifest: known by its weights
    shutil.copytree(store / "store" / "m4", copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ValueError, match="calibration and scored models must be disjoint"):
        scan_to(tmp_path / "copy-scan", scan_cfg(copy, store / "anchor", profiles=profiles))


def third_party(store, root):
    """The store's six models as a user holds models this harness did not make: no manifest, a labels CSV."""
    for i in range(6):
        shutil.copytree(store / "store" / f"m{i}", root / "theirs" / f"model-{i}")
        (root / "theirs" / f"model-{i}" / "manifest.json").unlink()
    rows = [f"theirs/model-{i},{'backdoor' if i < 3 else 'benign'}" for i in range(6)]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root / "labels.csv"


def test_calibrate_on_labelled_models_of_any_origin_then_scan_a_third_party_model_with_the_profile(tmp_path, store):
    labels = third_party(store, tmp_path)
    profile = tmp_path / "mine.yaml"
    cfg = compose_config("job=calibrate", *MICRO_SCAN, f"job.labels={labels}", f"scan.anchor_path={store / 'anchor'}",
                         f"job.out={profile}", "calibration.min_models=3")
    assert calibrate_to(tmp_path / "calib", cfg)["path"] == str(profile)
    written = OmegaConf.to_container(OmegaConf.load(profile))
    assert written["calibration"]["counts"] == {"backdoor": 3, "benign": 3}
    assert (tmp_path / "calib" / "scans" / "005-benign-model-5" / "result.json").is_file()

    bare = tmp_path / "suspect"  # a third-party model to scan: no manifest, so no truth
    shutil.copytree(store / "scored", bare)
    (bare / "manifest.json").unlink()
    scored = scan_to(tmp_path / "scan", scan_cfg(bare, store / "anchor", f"scan.thresholds={profile}"))
    assert scored["thresholds_source"] == f"file: {profile}" and scored["truth"] is None
    assert scored["verdict"] in ("backdoor", "benign")


@pytest.mark.parametrize("csv, anchor, message", [
    ("path,kind\nx,benign\n", True, "lacks the column\\(s\\) label"),
    ("path,label\ntheirs/model-0,trojan\n", True, "line 2: label 'trojan' is neither backdoor nor benign"),
    ("path,label\nnowhere,benign\n", True, "model directory .*nowhere' does not exist"),
    ("path,label\ntheirs/model-0,benign\n", False, "set scan.anchor_path=DIR"),
])
def test_a_bad_labels_file_fails_in_one_line(tmp_path, store, csv, anchor, message):
    third_party(store, tmp_path)
    (tmp_path / "bad.csv").write_text(csv)
    overrides = [f"scan.anchor_path={store / 'anchor'}"] if anchor else []
    cfg = compose_config("job=calibrate", *MICRO_SCAN, f"job.labels={tmp_path / 'bad.csv'}", *overrides)
    with pytest.raises(ValueError, match=message):
        calibrate_to(tmp_path / "calib", cfg)


def test_calibration_refuses_a_directory_without_models(tmp_path, store):
    with pytest.raises(ValueError, match="no calibration models"):
        calibrate_to(tmp_path / "out", calibrate_cfg(tmp_path, tmp_path))



def test_landscape_filter_is_fitted_on_the_benign_models_that_pass_every_other_check():
    """Natural backdoor features: benign models as assimilating as backdoored ones, told apart by the landscape."""
    backdoor = [stats(1.0, 1.0, 0.0, 0.90, -0.90), stats(1.0, 1.0, 0.0, 0.85, -0.88)]
    benign = [stats(1.0, 1.0, 0.0, 0.50, -0.89), stats(1.0, 1.0, 0.0, 0.60, -0.895), stats(0.0, 0.0, 0.0, 0.95, -0.40)]
    t, _, report = fit(backdoor, benign, CheckThresholds())
    assert t.assim_ratio == OFF and t.same_ratio == OFF, "identical on both classes"
    assert t.landscape_ratio == pytest.approx((0.85 + 0.60) / 2), "fitted on the two benign models that get that far"
    assert report["landscape_ratio"]["benign"] == [0.5, 0.6], "the far-off benign model (0.95) is not part of it"


def test_a_youden_fit_writes_a_profile(tmp_path):
    """Overlapping statistics take the Youden split (numpy values): the profile must still be writable."""
    backdoor = [stats(0.9, 0.9, 0.9, 0.9, -0.9), stats(0.8, 0.8, 0.8, 0.8, -0.9), stats(0.5, 0.5, 0.5, 0.5, -0.9)]
    benign = [stats(0.6, 0.6, 0.6, 0.6, -0.4), stats(0.2, 0.2, 0.2, 0.2, -0.4), stats(0.1, 0.1, 0.1, 0.1, -0.4),
              stats(0.15, 0.15, 0.15, 0.15, -0.4), stats(0.05, 0.05, 0.05, 0.05, -0.4)]
    t, cut, report = fit(backdoor, benign, CheckThresholds())
    assert report["assim_ratio"]["rule"] == "best Youden split" and type(t.assim_ratio) is float
    profile = {"profile": "clip-h32", "checks": vars(t), "score_cut": cut, "calibration": {"models": []}}
    assert write_profile(tmp_path / "p.yaml", profile).is_file()
