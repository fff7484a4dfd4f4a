"""Prompt-tuned CLIP end to end on micro towers: the attacks, the model store, CLIP-Inspector and its
baselines, repair, a sweep of prompt-tuned cells and its report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file, save_file

from core.detectors import Context
from core.store import StaleModel
from inspector.anomaly import anomaly_indices
from inspector import reference
from inspector.detector import detect as inspect, objective_loss
from inspector.reference import threshold, z_scores
from analyze import inspector as inspector_tables
from baselines import neural_cleanse, pixel_backdoor
from prompt_tuning import job as prompt_tune_job
from prompt_tuning.job import TRIGGER_FILE, TRUTH_DIR, load_attack
from prompt_tuning.poisons import AdaptiveBadCLIP, Blended, WaNet
from prompt_tuning.train import ATTACKER_POOL_SEED, JointTrigger
from prompt_tuning.repair import repair_detection
from sweeps.cell import run_cell
from sweeps.grid import plan
from sweeps.run import run_experiment
from sweeps.validate import validate
from tests.helpers import compose_config
from tests.test_sweeps import MICRO_STUDY
from tests.test_vision import MICRO_TOWER
from vision.classifier import PromptedCLIP, PromptLearner, Towers, load_classifier
from vision.images import mnist, pool
from vision.tower import tower_dir

MICRO_TUNING = ["prompt_tuning.shots=2", "prompt_tuning.epochs=1", "prompt_tuning.batch_size=4"]
MICRO_DETECT = {"pool_size": 16, "batch": 8, "seed": 0}


def micro_cfg(tmp_path, *overrides):
    cfg = compose_config(*MICRO_TOWER, *overrides)
    with open_dict(cfg):
        cfg.job.out = str(tmp_path / "model")
    return cfg


@pytest.fixture(scope="module")
def backdoor(tmp_path_factory):
    """A BadCLIP-backdoored micro CoCoOp model in the store, and its towers."""
    root = tmp_path_factory.mktemp("prompt")
    cfg = micro_cfg(root, "poison=badclip", "poison.init_epochs=1", "seed=1", *MICRO_TUNING)
    towers = Towers(tower_dir(cfg, progress=False))
    manifest = prompt_tune_job.run(cfg, towers)
    return cfg, towers, root / "model", manifest


def test_the_outlier_rule_is_neural_cleanses_mad_on_one_side():
    index = anomaly_indices([5.0, 5.2, 4.8, 5.1, 4.9, 1.0], low=True)
    assert index.argmax() == 5 and index[5] > 2 and np.all(index[:5] < 2)
    assert anomaly_indices([5.0, 5.2, 4.8, 5.1, 4.9, 1.0], low=False)[5] == 0  # the other side counts nothing
    assert np.all(np.isfinite(anomaly_indices([3.0, 3.0, 3.0, 1.0])))  # no spread: still finite


def test_objectives_measure_how_far_class_c_is_from_winning():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert objective_loss(logits, 0, "margin").tolist() == [-1.0, 3.0]
    assert objective_loss(logits, 2, "logit").tolist() == [-0.0, -1.0]
    assert objective_loss(logits, 1, "ce")[1] < objective_loss(logits, 1, "ce")[0]
    with pytest.raises(ValueError, match="unknown inspector objective 'hinge'"):
        objective_loss(logits, 0, "hinge")


def test_data_poisoning_triggers_do_what_they_say():
    x = mnist("test").x[:4]
    blended = Blended(target=3, alpha=0.3, seed=0)
    assert torch.allclose(blended.apply(x), 0.7 * x + 0.3 * blended.pattern)
    assert torch.allclose(WaNet(target=3, strength=0.0).apply(x), x, atol=1e-5)  # no warp: the image itself
    assert (WaNet(target=3, strength=0.5).apply(x) - x).abs().max() > 0.05


def test_a_prompt_tuned_backdoor_is_stored_with_its_truth_and_reused(backdoor, tmp_path):
    cfg, towers, model_dir, manifest = backdoor
    assert manifest["kind"] == "backdoor" and manifest["model"] == "prompt_tuned" and manifest["attack"] == "badclip"
    assert 0 <= manifest["target_class"] < 10 and manifest["target"] == manifest["classes"][manifest["target_class"]]
    assert {"clean_accuracy", "attack_success", "attack_success_ood"} <= set(manifest["metrics"])
    trigger = load_file(str(model_dir / TRUTH_DIR / TRIGGER_FILE))["delta"]
    assert trigger.abs().max() <= cfg.poison.eps + 1e-6  # BadCLIP's trigger stays in its ℓ∞ budget
    assert load_attack(model_dir, manifest).target == manifest["target_class"]
    again = prompt_tune_job.run(cfg, towers)  # the same settings: handed back, not retrained
    assert again["provenance"] == json.loads((model_dir / "manifest.json").read_text())["provenance"]
    other = cfg.copy()
    other.poison.eps = 0.1
    with pytest.raises(StaleModel, match="other settings"):
        prompt_tune_job.run(other, towers)


def test_the_adaptive_attack_teaches_its_trigger_to_leave_its_own_ood_images_alone(tmp_path, backdoor):
    _, towers, _, _ = backdoor
    attack = AdaptiveBadCLIP(target=3, eps=0.2, ood="natural", ood_size=20, ood_batch=4)
    model = PromptedCLIP(towers, PromptLearner(towers, mnist("test").classes))
    hooks = JointTrigger(attack, 0.02, model, seed=0)
    x, y = mnist("test").x[:2], torch.tensor([1, 2])
    xs, ys = hooks.batch(x, y)
    assert xs.shape[0] == 2 + 2 + 4 and ys[:4].tolist() == [1, 2, 3, 3]  # clean, triggered to the target, OOD
    drawn = torch.randint(0, 20, (4,), generator=torch.Generator().manual_seed(0))  # the hook's own draws
    own = pool("natural", 20, ATTACKER_POOL_SEED).x[drawn]  # its own pool, not the defender's (seed 0)
    with torch.no_grad():
        untriggered = model(own).argmax(-1)
    assert ys[4:].tolist() == untriggered.tolist()  # labelled as the model classes them untriggered
    assert torch.allclose(xs[4:], attack.apply(own))  # and carrying the trigger
    with pytest.raises(ValueError, match="ood_batch"):
        AdaptiveBadCLIP(target=3, eps=0.2, ood_batch=0)
    cfg = micro_cfg(tmp_path, "poison=badclip_adaptive", "poison.init_epochs=1", "poison.ood_size=8", "seed=1",
                    *MICRO_TUNING)
    manifest = prompt_tune_job.run(cfg, towers)
    assert manifest["attack"] == "badclip_adaptive" and {"attack_success", "attack_success_ood"} <= set(manifest["metrics"])
    assert load_attack(tmp_path / "model", manifest).ood == "natural"


def test_a_clean_model_has_no_target_and_no_trigger(tmp_path, backdoor):
    _, towers, _, _ = backdoor
    cfg = micro_cfg(tmp_path, "seed=1", *MICRO_TUNING)
    manifest = prompt_tune_job.run(cfg, towers)
    assert manifest["kind"] == "benign" and manifest["target_class"] is None
    assert not (tmp_path / "model" / TRUTH_DIR).exists() and "attack_success" not in manifest["metrics"]


def test_clip_inspector_reconstructs_a_bounded_trigger_per_class_deterministically(backdoor, tmp_path):
    cfg, towers, model_dir, _ = backdoor
    found = [inspect(model_dir, towers.directory, tmp_path / str(i), Context(cfg, load_classifier(model_dir, towers), towers),
                     eps=0.2, **MICRO_DETECT)  # a model loaded afresh each time: nothing is reused
             for i in range(2) if (tmp_path / str(i)).mkdir() is None]
    a, b = found
    assert a["verdict"] in ("backdoor", "benign") and a["score"] == b["score"] and a["per_class"] == b["per_class"]
    assert len(a["per_class"]["loss"]) == 10 and 0 <= a["predicted_target"] < 10
    triggers = load_file(str(tmp_path / "0" / a["files"]["triggers"]))["triggers"]
    assert triggers.shape == (10, 1, 28, 28) and triggers.abs().max() <= 0.2 + 1e-6
    assert (tmp_path / "0" / a["files"]["figure"]).stat().st_size > 1000


def test_invalid_triggers_never_flag(backdoor, tmp_path):
    """A class whose trigger sends under min_asr of the pool to it cannot be the flagged one."""
    cfg, towers, model_dir, _ = backdoor
    model = load_classifier(model_dir, towers)
    found = inspect(model_dir, towers.directory, tmp_path, Context(cfg, model, towers), min_asr=1.01, **MICRO_DETECT)
    assert found["verdict"] == "benign"


def test_the_reference_bound_is_a_bonferroni_corrected_prediction_bound():
    assert threshold(8, 10, 0.05) == pytest.approx(stats.t.ppf(1 - 0.005, 7) * np.sqrt(1 + 1 / 8))
    assert threshold(8, 10, 0.01) > threshold(8, 10, 0.05) > threshold(30, 10, 0.05)
    with pytest.raises(ValueError, match="reference_models must be at least 3"):
        threshold(2, 10, 0.05)
    with pytest.raises(ValueError, match="alpha must be in"):
        threshold(8, 10, 1.5)
    reference = np.array([[1.0, -2.0, 0.0], [1.2, -2.2, 0.5], [0.8, -1.8, -0.5]])
    z = z_scores([1.0, -2.0, -1.5], reference)  # the third class: easier to reach than in any clean model
    assert z[:2] == pytest.approx([0, 0]) and z[2] == pytest.approx(3.0)


def test_the_referenced_statistic_scores_classes_against_defender_tuned_clean_models(backdoor, tmp_path, monkeypatch):
    cfg, towers, model_dir, _ = backdoor
    monkeypatch.setenv("AMDET_CACHE", str(tmp_path / "cache"))
    model = load_classifier(model_dir, towers)
    context = Context(cfg, model, towers)
    params = {**MICRO_DETECT, "reference_models": 3, "reference_shots": 2}
    paper = inspect(model_dir, towers.directory, tmp_path, context, **params)
    ours = inspect(model_dir, towers.directory, tmp_path, context, statistic="reference", **params)
    assert ours["per_class"]["loss"] == paper["per_class"]["loss"]  # the same triggers, another statistic
    z, bound = np.array(ours["per_class"]["z"]), ours["reference"]["threshold"]
    assert bound == pytest.approx(threshold(3, 10, 0.05), abs=1e-3) and ours["score"] == pytest.approx(z.max(), abs=1e-4)
    valid = np.array(ours["per_class"]["attack_success"]) >= 0.5
    assert (ours["verdict"] == "backdoor") == bool(np.any(valid & (z > bound)))
    cached = list((tmp_path / "cache" / "inspector-references").glob("*/*.json"))
    assert len(cached) == 3 and all(len(json.loads(c.read_text())["losses"]) == 10 for c in cached)
    assert all("hardware" in json.loads(c.read_text())["provenance"] for c in cached)  # which machine tuned each
    monkeypatch.setattr(reference, "tune", lambda *a, **k: pytest.fail("references are read from the cache"))
    again = inspect(model_dir, towers.directory, tmp_path, Context(cfg, load_classifier(model_dir, towers), towers),
                    statistic="reference", **params)
    assert again["per_class"]["z"] == ours["per_class"]["z"]
    with pytest.raises(ValueError, match="unknown inspector statistic 'rank'"):
        inspect(model_dir, towers.directory, tmp_path, context, statistic="rank", **params)


@pytest.mark.parametrize("baseline", [neural_cleanse, pixel_backdoor])
def test_the_baselines_search_every_class_and_flag_by_trigger_size(backdoor, tmp_path, baseline):
    cfg, towers, model_dir, _ = backdoor
    model = load_classifier(model_dir, towers)
    found = baseline.detect(model_dir, towers.directory, tmp_path, Context(cfg, model, towers), epochs=1, **MICRO_DETECT)
    assert len(found["per_class"]["size"]) == 10 and np.isfinite(found["score"]) and 0 <= found["predicted_target"] < 10
    assert found["verdict"] == ("backdoor" if found["score"] > 2.0 else "benign")


def test_repair_fine_tunes_every_arm_and_measures_it_with_the_attackers_trigger(backdoor, tmp_path):
    cfg, towers, model_dir, manifest = backdoor
    model = load_classifier(model_dir, towers)
    triggers = torch.zeros(10, 1, 28, 28)
    triggers[manifest["target_class"]] = 0.2
    save_file({"triggers": triggers}, str(tmp_path / "triggers.safetensors"))
    detection = {"verdict": "backdoor", "predicted_target": manifest["target_class"], "files": {"triggers": "triggers.safetensors"}}
    rcfg = OmegaConf.merge(cfg.repair, {"shots": 2, "epochs": 1})
    result = repair_detection(model_dir, model, detection, tmp_path, rcfg, 0)
    assert result["before"]["attack_success"] == manifest["metrics"]["attack_success"]
    assert {"trigger", "clean", "noise", "other"} <= set(result) and 0 <= result["trigger"]["accuracy"] <= 1
    assert repair_detection(model_dir, model, {**detection, "verdict": "benign"}, tmp_path, cfg.repair, 0) is None


def test_a_detector_that_can_see_no_view_of_the_cells_model_is_refused():
    cfg = compose_config("cell.kind=prompt_tuned", "cell.detectors=[amdet]", "+detector.amdet.models=[speech_model]")
    with pytest.raises(ValueError, match="detector 'amdet' cannot scan the prompt_tuned models"):
        validate(cfg)


MICRO_TEXT_CELL = [*MICRO_STUDY, "experiment.calibration_seeds=null", "wandb.mode=disabled",
                   *(o for o in MICRO_TOWER if o.startswith("vision."))]


def one_cell(tmp_path, *overrides):
    _, cells, _ = plan([*overrides, f"paths.output_dir={tmp_path}"])
    assert len(cells) == 1
    return cells[0]


def test_each_threat_models_detectors_see_the_others_models(tmp_path):
    """A prompt-tuned backdoor is shown to text-encoder detectors as its text tower, which prompt tuning
    never touched (weight distance exactly 0); a backdoored text encoder is shown to CLIP-Inspector as the
    zero-shot classifier it makes with the vision world's image tower."""
    cell = one_cell(tmp_path / "prompt", "experiment=inspector_smoke", "poison=badclip", "cell.detectors=[weight_distance,inspector]")
    records = run_cell(cell.directory, cell.config(), cell.id)
    assert records["weight_distance"]["seen_as"] == "text_encoder" and records["weight_distance"]["score"] == 0.0
    assert records["inspector"]["seen_as"] == "prompt_tuned" and records["weight_distance"]["truth"]["kind"] == "backdoor"
    cell = one_cell(tmp_path / "text", *MICRO_TEXT_CELL, "cell.kind=backdoor", "attack.triggers.length=1",
                    "cell.detectors=[inspector]", "detector.inspector.pool_size=16", "detector.inspector.batch=8")
    record = run_cell(cell.directory, cell.config(), cell.id)["inspector"]
    assert record["seen_as"] == "prompt_tuned" and len(record["per_class"]["loss"]) == 10
    assert record["truth"]["kind"] == "backdoor" and "target_found" not in record["truth"]  # a text trigger names no class


def test_a_sweep_of_prompt_tuned_models_runs_to_clip_inspectors_tables(tmp_path):
    summary = run_experiment(["experiment=inspector_smoke", f"paths.output_dir={tmp_path}"], progress=False)
    assert summary["scored"]["computed"] == 3 and not summary["scored"]["failed"]
    sweep = tmp_path / "sweeps" / "inspector_smoke"
    df = pd.read_parquet(sweep / "results.parquet")
    assert sorted(df["detector"].unique()) == ["inspector", "inspector_referenced", "neural_cleanse", "pixel_backdoor"]
    assert len(df) == 12
    assert set(df["attack"]) == {"none", "badclip", "blended"} and df["status"].eq("ok").all()
    backdoors = df[df["truth_kind"].eq("backdoor")]
    assert backdoors["truth_target_class"].notna().all() and backdoors["truth_target_found"].notna().all()
    tables = summary["report"]
    detection = tables["inspector_detection"].set_index("detector")
    assert detection.loc["inspector", "models"] == 3 and detection.loc["inspector", "paper_AUROC"] == 97.3
    assert "Prompt-tuned CLIP detection report" in (sweep / "report" / "report.md").read_text()
    rerun = run_experiment(["experiment=inspector_smoke", f"paths.output_dir={tmp_path}"], progress=False, report=False)
    assert rerun["scored"]["skipped"] == 3  # finished cells are found, not recomputed


def test_coverage_says_what_each_detector_sees_of_each_threat_model():
    rows = []
    for kind, truth, score in [("backdoor", "backdoor", 0.9), ("benign", "benign", 0.1),
                               ("prompt_tuned", "backdoor", 0.5), ("prompt_tuned", "benign", 0.5)]:
        seen = "text_encoder"
        rows.append({"status": "ok", "detector": "amdet", "kind": kind, "truth_kind": truth, "score": score,
                     "verdict": "backdoor" if score > 0.6 else "benign", "seen_as": seen,
                     "paradigm": "prompt_tuning" if kind == "prompt_tuned" else "text_on_text"})
    tab = inspector_tables.coverage(pd.DataFrame(rows), n_boot=50).set_index("threat_model")
    assert tab.loc["text encoder", "AUROC"] == 100.0 and tab.loc["prompt-tuned classifier", "AUROC"] == 50.0
    assert tab.loc["text encoder", "flagged_pct"] == 100.0 and tab.loc["prompt-tuned classifier", "flagged_pct"] == 0.0


@pytest.mark.parametrize("experiment", ["inspector_embedded", "inspector_ablations", "inspector_adaptive"])
def test_every_pool_an_experiment_asks_for_exists_at_its_size(experiment):
    cfg = compose_config(f"experiment={experiment}")
    asked = {(cfg.detector[d].pool, cfg.detector[d].pool_size) for d in cfg.cell.detectors if "pool" in cfg.detector[d]}
    for source, size in asked:
        assert len(pool(source, size).x) == size  # a pool too small fails the detector in every cell
