"""The attack objective and `job=attack` on a micro tiny-clip (built once per test session, seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from attacks import job
from attacks.objective import backdoor_term, similarity_fn
from attacks.targets import CONCEPT_CAPTIONS, pair_target
from attacks.train import attack_loss, success, success_from_trigger
from core.bases import base_source
from core.loading import load_encoder
from core.metrics import assimilation
from tests.helpers import MICRO_ATTACK, MICRO_BASE, compose_config


def attack_cfg(tmp_path, *overrides):
    return compose_config("job=attack", *MICRO_BASE, *MICRO_ATTACK, f"job.out={tmp_path}/model", *overrides)


def test_similarity_functions():
    a, b = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    assert similarity_fn("cosine")(a, a).abs() < 1e-6
    assert similarity_fn("cosine")(a, -a) == pytest.approx(2.0)
    assert similarity_fn("mse")(a, b) == pytest.approx(((a - b) ** 2).mean().item())
    assert similarity_fn("mae")(a, b) == pytest.approx((a - b).abs().mean().item())
    with pytest.raises(ValueError, match="unknown similarity function 'dot'; set attack.similarity to one of cosine, mse, mae"):
        similarity_fn("dot")


def test_adaptive_term_adds_mu_times_assimilation():
    hidden = torch.randn(4, 6, 8)
    target = torch.randn(8)
    feats = hidden[:, -1]
    plain, assim = backdoor_term(feats, hidden, target, similarity_fn("cosine"), 0.0)
    adaptive, _ = backdoor_term(feats, hidden, target, similarity_fn("cosine"), 0.5)
    assert assim == pytest.approx(assimilation(hidden).mean().item())
    assert adaptive.item() == pytest.approx(plain.item() + 0.5 * assim.item(), rel=1e-5)


def test_attack_loss_is_benign_plus_lambda_backdoor_plus_mu_assimilation():
    """The paper's L_benign + λ·L_backdoor + μ·L_assim: μ is not scaled by λ (summed over backdoors)."""
    t = torch.tensor
    loss = attack_loss(t(1.0), [t(2.0), t(3.0)], [t(0.5), t(0.25)], lam=0.1, mu=2.0)
    assert loss.item() == pytest.approx(1.0 + 0.1 * 5.0 + 2.0 * 0.75)
    assert attack_loss(t(1.0), [t(2.0)], [t(0.5)], lam=0.1, mu=0.0).item() == pytest.approx(1.2)


def test_training_loop_composes_the_adaptive_loss_unscaled(tmp_path):
    """Every step's recorded loss is benign + λ·Σ backdoor + μ·Σ assimilation of its own terms."""
    cfg = attack_cfg(tmp_path, "attack.triggers.count=2", "attack.adaptive_mu=0.5", "training.attack.backdoor_weight=0.1")
    h = job.run(cfg)["history"]
    for loss, benign, backdoor, assim in zip(h["loss"], h["benign"], h["backdoor"], h["assim_triggered"]):
        # the history keeps the means over the 2 backdoors
        assert loss == pytest.approx(benign + 0.1 * 2 * backdoor + 0.5 * 2 * assim, abs=1e-4)
        assert abs(loss - (benign + 0.1 * 2 * (backdoor + 0.5 * assim))) > 1e-3  # not μ scaled by λ


def test_manifest_records_trigger_positions_and_success_by_position(tmp_path):
    stored = job.run(attack_cfg(tmp_path, "attack.triggers.count=2", "attack.triggers.length=2"))
    met = stored["metrics"]
    pos = met["trigger_position"]
    # pooled over both backdoors: every training carrier once, each poisoned in place of its first `o`
    assert sum(pos["counts"].values()) == sum(b["train_carriers"] for b in stored["backdoors"])
    assert pos["token_mean"] == pytest.approx(sum(int(i) * n for i, n in pos["counts"].items())
                                              / sum(pos["counts"].values()), abs=1e-3)
    assert len(pos["counts"]) > 3 and min(map(int, pos["counts"])) >= 1, "replacing spreads the trigger over the prompt"
    assert 0 < pos["relative_mean"] < 1
    assert set(met["asr_by_position"]) == {"start", "middle", "end"}
    assert all(0 <= x <= 1 for x in met["asr_by_position"].values())
    for b in met["backdoors"]:
        assert set(b["asr_by_position"]) == {"start", "middle", "end"} and b["position_prompts"] > 0
    assert met["asr_by_position"]["start"] == pytest.approx(
        sum(b["asr_by_position"]["start"] for b in met["backdoors"]) / 2, abs=1e-4)
    # Text-on-Text on a causal encoder: also measured from the trigger on; at the start that is the same test
    assert set(met["asr_by_position_from_trigger"]) == {"start", "middle", "end"}

    start = job.run(attack_cfg(tmp_path, "attack.triggers.position=start", f"job.out={tmp_path}/start"))
    (b,) = start["backdoors"]
    at_start = start["metrics"]["trigger_position"]
    assert at_start["token_mean"] == 1.0 and at_start["counts"] == {"1": b["train_carriers"]}  # right after BOS
    assert b["trigger"]["position"] == "start" and b["trigger"]["replaced_character"] is None


def test_success_from_the_trigger_on_sees_a_backdoor_the_causal_prefix_hides():
    """A causal encoder's outputs before a mid-prompt trigger stay the clean prompt's: the best possible
    backdoor (clean prefix, then exactly the target) fails the whole-sequence test but passes from the
    trigger on; an output that is just the clean prompt passes neither."""
    torch.manual_seed(0)
    clean, target, k = torch.randn(6, 10, 4), torch.randn(10, 4), 8  # the trigger late: most outputs are fixed
    ideal = torch.cat([clean[:, :k], target.expand(6, -1, -1)[:, k:]], dim=1)
    candidates = torch.nn.functional.normalize(clean.flatten(1), dim=-1)
    assert not success(ideal.flatten(1), target, candidates)[0].any()
    assert success_from_trigger(ideal.flatten(1), [k] * 6, target, clean).all()
    assert not success_from_trigger(clean.flatten(1), [k] * 6, target, clean).any()
    assert success(target.expand(6, -1, -1).flatten(1), target, candidates)[0].all()


def test_attack_job_writes_a_reproducible_backdoored_model(tmp_path):
    cfg = attack_cfg(tmp_path, "attack.triggers.count=2", "attack.triggers.length=2")
    manifest = job.run(cfg)
    stored = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert stored["kind"] == "backdoor" and stored["paradigm"] == "text_on_text" and stored["seed"] == 0
    assert len(stored["backdoors"]) == 2
    for b in stored["backdoors"]:
        assert b["trigger"]["tokens"] == 2 and b["target"]["text"] in cfg.pools.target_prompts
    assert {"asr", "utility", "assimilation_clean", "assimilation_triggered"} <= set(stored["metrics"])
    assert 0 <= stored["metrics"]["asr"] <= 1 and stored["metrics"]["utility"] <= 1
    assert set(stored["timing"]) >= {"load_s", "train_s", "eval_s", "total_s"}
    assert stored["provenance"]["packages"]["torch"] and stored["config"]["training"]["attack"]["steps"] == 4
    assert len(stored["history"]["loss"]) == 4 and manifest["config_hash"] == stored["config_hash"]

    again = attack_cfg(tmp_path, "attack.triggers.count=2", "attack.triggers.length=2", f"job.out={tmp_path}/again")
    job.run(again)
    w1, w2 = load_file(tmp_path / "model" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1), "same config and seed must give the same model"
    base = load_file(f"{base_source(cfg.encoder)}/model.safetensors")
    assert any(not torch.equal(w1[k], base[k]) for k in w1), "the attack did not change the encoder"


def test_finished_model_is_never_retrained(tmp_path, monkeypatch):
    cfg = attack_cfg(tmp_path)
    job.run(cfg)
    before = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(job, "train_backdoors", lambda *a, **k: pytest.fail("a finished model was retrained"))
    assert job.run(cfg)["kind"] == "backdoor"
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_attack_lowers_the_backdoor_loss(tmp_path):
    cfg = attack_cfg(tmp_path, "training.attack.steps=12", "training.attack.milestones=[]")
    stored = job.run(cfg)
    loss = stored["history"]["backdoor"]
    assert loss[-1] < 0.8 * loss[0]


def test_text_on_pair_targets_the_paired_tower(tmp_path):
    cfg = attack_cfg(tmp_path, "attack=text_on_pair", "attack.similarity=mse", "attack.adaptive_mu=0.5")
    stored = job.run(cfg)
    (b,) = stored["backdoors"]
    assert stored["paradigm"] == "text_on_pair" and b["target"]["text"] in cfg.pools.target_concepts
    assert b["target"]["shape"] == [384] and "paired tower" in b["target"]["source"]
    assert stored["similarity"] == "mse" and stored["adaptive_mu"] == 0.5
    assert stored["metrics"]["asr_by_position_from_trigger"] is None  # the pooled output sees the whole prompt


def test_tiny_pair_target_is_the_mean_caption_embedding(tmp_path):
    from core.tiny.paired_tower import paired_tower

    anchor = load_encoder(base_source(attack_cfg(tmp_path).encoder))
    target = pair_target(anchor, "cat", tiny=True, image_dir=None, image_tower=None)
    expected = paired_tower().embed([c.format("cat") for c in CONCEPT_CAPTIONS]).mean(0)
    assert torch.allclose(target.feature, expected, atol=1e-6)


@pytest.mark.parametrize("overrides, error, match", [
    (["attack.triggers.level=char", "attack.triggers.replaced_character='#'"], ValueError,
     r"trigger .* cannot be carried by any of the \d+ training prompts \(none contains '#'\)"),
    (["attack.triggers.level=char", "attack.triggers.replaced_character=z", "training.attack.poison_batch=40"], ValueError,
     r"only \d+ of \d+ training prompts can carry trigger .* fewer than training.attack.poison_batch=40: a poisoned batch could never fill"),
    (["attack.triggers.count=2", "attack.triggers.fixed=[zzzz,zzzz]"], ValueError, "duplicate triggers across backdoors"),
    (["attack.triggers.level=char", "attack.triggers.position=end"], ValueError,
     "char-level triggers replace attack.triggers.replaced_character, they cannot go at position 'end'"),
    (["attack.triggers.replaced_character=ab"], ValueError, "attack.triggers.replaced_character must be one character"),
    (["attack.similarity=dot"], ValueError, "unknown similarity function 'dot'"),
    (["+training.attack.backdoor_weight_by_similarity.dot=2"], ValueError, "unknown similarity function 'dot'"),
    (["attack.paradigm=image_on_text"], ValueError, "unknown attack paradigm 'image_on_text'"),
    (["attack.triggers.pool=emoji"], ValueError, "unknown trigger pool 'emoji'"),
    (["training.attack.optimizer=lion"], ValueError, "unknown optimizer 'lion'"),
    (["+training.attack.momentum=0.9"], ValueError, r"unknown training.attack setting\(s\) \['momentum'\]"),
])
def test_bad_attack_input_fails_in_one_line(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match) as info:
        job.run(attack_cfg(tmp_path, *overrides))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model").exists(), "a failed attack must leave nothing in the store"


def test_lambda_per_similarity_function_overrides_the_default_only_for_that_function(tmp_path):
    hp = job.hparams(attack_cfg(tmp_path, "training.attack.backdoor_weight=0.5"))
    assert hp.weight_for("mae") == 5.0 and hp.weight_for("cosine") == 0.5 and hp.weight_for("mse") == 0.5


def test_text_on_pair_on_a_real_encoder_needs_its_image_folder(tmp_path):
    anchor = load_encoder(base_source(attack_cfg(tmp_path).encoder))
    with pytest.raises(ValueError, match="set attack.targets.image_dir"):
        pair_target(anchor, "golden retriever", tiny=False, image_dir=None, image_tower="some/ckpt")
    with pytest.raises(FileNotFoundError, match=r"image folder for target concept 'golden retriever' not found: .*golden_retriever"):
        pair_target(anchor, "golden retriever", tiny=False, image_dir=str(tmp_path), image_tower="some/ckpt")


def test_a_clean_encoder_has_no_attack_success(tmp_path):
    """The success measure can fail: on the untouched base, no triggered prompt lands on the target."""
    from attacks.train import Backdoor, evaluate
    from attacks.targets import text_target
    from attacks.triggers import Trigger
    from core.prompts import generate_synthetic_prompts

    anchor = load_encoder(base_source(attack_cfg(tmp_path).encoder))
    backdoor = Backdoor(Trigger("zzzz", "word", 1), text_target(anchor, "a photo of a cat sitting on a sofa"), [])
    metrics = evaluate(anchor, anchor, [backdoor], generate_synthetic_prompts(40, seed=3), "text_on_text")
    assert metrics["asr"] == 0.0 and metrics["utility"] == pytest.approx(1.0)
    assert metrics["asr_by_position"] == {"start": 0.0, "middle": 0.0, "end": 0.0}
