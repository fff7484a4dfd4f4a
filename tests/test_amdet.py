"""The AMDET scan on micro encoders: insertion, split, checks, landscape maths, result.json contract."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from amdet.checks import CheckThresholds, evaluate_checks
from amdet.inversion import LossWeights, insert, row_losses, screen_losses, shallow_set, token_rows, vocabulary_start
from amdet.job import scan_to
from amdet.landscape import grid_losses, hessian_eigenvalues
from core.tiny.architectures import random_encoder
from tests.helpers import PROMPTS, compose_config, micro_arch

MICRO_SCAN = [
    "scan.prompts=40", "scan.inversion.batch_size=4", "scan.inversion.epochs=1", "scan.inversion.check_every=2",
    "scan.checks.loss_start=10", "scan.landscape.points=6", "scan.landscape.batch=7", "progress=false",
    "scan.inversion.screen_prompts=1", "scan.inversion.screen_positions=4",  # the vocabulary start at 1/4 of its cost
]


def test_insert_puts_v_after_bos_and_keeps_the_length(micro_encoder):
    ids = micro_encoder.tokenize(PROMPTS)
    h = micro_encoder.embed(ids)
    v = torch.randn(2, h.shape[-1])
    h_v = insert(h, v, micro_encoder.insert_position)
    p = micro_encoder.insert_position
    assert h_v.shape == h.shape
    assert torch.equal(h_v[:, :p], h[:, :p]) and torch.equal(h_v[:, p : p + 2], v.expand(3, 2, -1))
    assert torch.equal(h_v[:, p + 2 :], h[:, p : -2]), "the rest shifts right and the last two fall off"


def test_shallow_split_is_seeded_and_disjoint(micro_encoder):
    prompts = [f"a photo of thing {i}" for i in range(30)]
    a, b = shallow_set(micro_encoder, prompts, 0.2, seed=1), shallow_set(micro_encoder, prompts, 0.2, seed=1)
    c = shallow_set(micro_encoder, prompts, 0.2, seed=2)
    assert torch.equal(a.test, b.test) and not torch.equal(a.test, c.test)
    assert len(a.test) == 6 and sorted(torch.cat([a.train, a.test]).tolist()) == list(range(30))
    ids = micro_encoder.tokenize(prompts[:2])
    assert torch.allclose(a.output[:2], micro_encoder(ids), atol=1e-6)


def test_same_target_counts_every_other_prompt(micro_encoder):
    """Identical outputs give a same-target ratio of exactly 1 (upstream's is capped at (n−1)/n)."""
    h = micro_encoder.embed(micro_encoder.tokenize(["a photo of a cat"] * 5))
    stats = evaluate_checks(micro_encoder, micro_encoder, h, torch.randn(1, h.shape[-1]), CheckThresholds(), batch=2)
    assert stats["same_ratio"] == 1.0 and stats["same_pass"]
    assert stats["diff_ratio"] == 0.0, "an encoder is never different from itself"


def test_token_rows_are_the_tokens_as_the_embedding_layer_places_them(micro_encoder):
    rows = token_rows(micro_encoder)
    p = micro_encoder.insert_position
    ids = micro_encoder.tokenize(["a photo of a cat"])
    assert rows.shape == (micro_encoder.config.vocab_size, micro_encoder.hidden_size)
    assert torch.allclose(rows[ids[0, p]], micro_encoder.embed(ids)[0, p])


def test_the_screen_scores_each_token_as_the_inversion_loss_of_it_alone(micro_encoder, family, monkeypatch):
    anchor = random_encoder(micro_arch(family), seed=1)
    monkeypatch.setattr(type(micro_encoder), "rows_per_pass", property(lambda self: 3))  # several passes
    data = shallow_set(micro_encoder, PROMPTS * 3, 0.3, 0)
    rows, idx, w = token_rows(micro_encoder)[:20], data.train[:2], LossWeights()
    batched = screen_losses(micro_encoder, anchor, data.hidden[idx, :8], data.output[idx, :8], rows, w)
    for t in (0, 7, 19):
        alone = row_losses(micro_encoder, anchor, data.hidden[idx, :8], data.output[idx, :8], rows[t][None], w)[0]
        assert batched[t].item() == pytest.approx(alone.mean().item(), abs=1e-5)


def test_the_vocabulary_start_is_the_full_loss_best_of_the_screens_candidates(micro_encoder, family):
    anchor = random_encoder(micro_arch(family), seed=1)
    data = shallow_set(micro_encoder, PROMPTS * 3, 0.3, 0)
    w = LossWeights()
    start = vocabulary_start(micro_encoder, anchor, data, k=2, weights=w, prompts=2, positions=8, candidates=6, batch=3)
    rows = token_rows(micro_encoder)
    assert start.v.shape == (2, micro_encoder.hidden_size) and torch.equal(start.v, rows[start.token_ids])
    assert start.loss == sorted(start.loss) and len(set(start.token_ids)) == 2
    idx = data.train[:3]  # no token scores below the chosen one on stage 2's prompts
    best = row_losses(micro_encoder, anchor, data.hidden[idx], data.output[idx], start.v[:1], w)[0].mean().item()
    assert best == pytest.approx(start.loss[0], abs=1e-5)


def test_the_screen_takes_only_the_first_prompts_best_to_the_other_prompts(micro_encoder, family):
    anchor = random_encoder(micro_arch(family), seed=1)
    data = shallow_set(micro_encoder, PROMPTS * 3, 0.3, 0)
    w, rows = LossWeights(), token_rows(micro_encoder)
    args = dict(k=2, weights=w, prompts=2, positions=8, candidates=6, batch=3)
    every = vocabulary_start(micro_encoder, anchor, data, **args, keep=None)
    assert vocabulary_start(micro_encoder, anchor, data, **args, keep=len(rows)).token_ids == every.token_ids
    few = vocabulary_start(micro_encoder, anchor, data, **args, keep=6)
    idx, screen = data.train[:2], LossWeights(anchor=0.0)
    first = screen_losses(micro_encoder, anchor, data.hidden[idx[:1], :8], data.output[idx[:1], :8], rows, screen)
    assert set(few.token_ids) <= set(first.argsort()[:6].tolist())  # nothing the first prompt left out
    both = screen_losses(micro_encoder, anchor, data.hidden[idx, :8], data.output[idx, :8], rows[few.token_ids], screen)
    assert few.screen_loss == pytest.approx(both.tolist(), abs=1e-5)  # the kept ones: their mean over both prompts


def test_hessian_eigenvalues_of_a_bowl_and_a_saddle():
    x = torch.linspace(-1, 1, 21, dtype=torch.float64)
    a, b = torch.meshgrid(x, x, indexing="ij")
    step = (x[1] - x[0]).item()
    bowl = hessian_eigenvalues(3 * a**2 + 0.5 * b**2, step)
    assert torch.allclose(bowl.sort().values, torch.tensor([1.0] * 361 + [6.0] * 361, dtype=torch.float64), atol=1e-6)
    saddle = hessian_eigenvalues(a**2 - b**2 + a * b, step)
    assert (saddle > 1e-6).double().mean() == 0.5


def test_landscape_grid_does_not_depend_on_the_batch(micro_encoder):
    h = micro_encoder.embed(micro_encoder.tokenize(PROMPTS[:1]))
    out = micro_encoder.encode(h)
    v, d1, d2 = (torch.randn(1, h.shape[-1]) for _ in range(3))
    alphas = torch.linspace(-1, 1, 5)
    w = LossWeights()
    batched = grid_losses(micro_encoder, micro_encoder, h, out, v, d1, d2, alphas, w, batch=7)
    single = grid_losses(micro_encoder, micro_encoder, h, out, v, d1, d2, alphas, w, batch=1)
    assert torch.allclose(batched, single, atol=1e-5)
    with torch.no_grad():
        corner, _ = row_losses(micro_encoder, micro_encoder, h, out, v - d1 - d2, w)
    assert batched[0, 0] == pytest.approx(corner.item(), abs=1e-5)


def scan_cfg(model, anchor, *overrides, profiles=None):
    """A micro scan; profiles: where calibrated profiles are looked up (none by default, so that a
    profile lying in outputs/ never changes a test)."""
    return compose_config("job=scan", *MICRO_SCAN, f"scan.model_path={model}", f"scan.anchor_path={anchor}",
                          f"paths.profiles_dir={profiles or 'null'}", *overrides)


def test_scan_writes_the_result_contract_and_is_deterministic(tmp_path, pair):
    first = scan_to(tmp_path / "a", scan_cfg(*pair))
    second = scan_to(tmp_path / "b", scan_cfg(*pair))
    stored = json.loads((tmp_path / "a" / "result.json").read_text())
    assert stored["status"] == "ok" and stored["verdict"] in ("backdoor", "benign")
    assert isinstance(stored["score"], float) and stored["time_s"] > 0
    assert {"load_s", "features_s", "inversion_s", "checks_s", "landscape_s"} <= set(stored["times"])
    assert stored["checks"], "with loss_start above any loss, the checks run on their cadence"
    assert {"assim_ratio", "same_ratio", "diff_ratio", "running_loss", "step"} <= set(stored["checks"][0])
    assert stored["thresholds_source"] == "config: paper-clip-l" and stored["thresholds"]["same_ratio"] == 0.995
    assert (first["verdict"], first["score"]) == (second["verdict"], second["score"])
    assert stored["start"]["tokens"] == second["start"]["tokens"] and len(stored["start"]["token_ids"]) == 1
    assert stored["times"]["init_s"] > 0
    v = load_file(tmp_path / "a" / "v.safetensors")["v"]
    assert v.shape == (1, 32) and torch.equal(load_file(tmp_path / "a" / "learned_embeds.safetensors")["<amdet-v>"], v)
    assert load_file(tmp_path / "a" / "landscape.safetensors")["grid"].shape == (6, 6)
    assert (tmp_path / "a" / "landscape.png").stat().st_size > 0 and (tmp_path / "a" / "hessian_spectrum.png").exists()


def test_a_normal_start_is_the_papers_and_an_unknown_start_is_refused(tmp_path, pair):
    assert scan_to(tmp_path / "n", scan_cfg(*pair, "scan.inversion.init=normal"))["start"] is None
    with pytest.raises(ValueError, match="scan.inversion.init must be one of vocabulary, normal, got 'tokens'"):
        scan_to(tmp_path / "x", scan_cfg(*pair, "scan.inversion.init=tokens"))
    assert json.loads((tmp_path / "x" / "result.json").read_text())["status"] == "error"


def test_observed_scans_make_full_check_passes_even_with_early_exit(tmp_path, pair, monkeypatch):
    from core.encoders import TextEncoder

    monkeypatch.setattr(TextEncoder, "rows_per_pass", property(lambda self: 2))  # 4 batches of the 8 test prompts
    cfg = scan_cfg(*pair, "scan.inversion.check_early_exit=true")
    decided = scan_to(tmp_path / "scan", cfg)
    observed = scan_to(tmp_path / "observe", cfg, observe=True)
    assert min(c["checked"] for c in decided["checks"]) < 8, "the paper's thresholds fail on a micro model"
    assert {c["checked"] for c in observed["checks"]} == {8}, "calibration fits on full statistics"


def test_thresholds_file_overrides_and_is_recorded(tmp_path, pair):
    (tmp_path / "t.yaml").write_text("checks:\n  same_ratio: 0.5\n")
    result = scan_to(tmp_path / "out", scan_cfg(*pair, f"scan.thresholds={tmp_path}/t.yaml"))
    assert result["thresholds"]["same_ratio"] == 0.5 and result["thresholds_source"] == f"file: {tmp_path}/t.yaml"


def error_result(out, cfg, error):
    with pytest.raises(error):
        scan_to(out, cfg)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "error" and "\n" not in result["reason"] and "verdict" not in result
    return result["reason"]


def test_mismatched_anchor_ends_in_an_error_result(tmp_path, pair):
    random_encoder(micro_arch("clip", hidden=48, heads=2), seed=0).save(tmp_path / "wide")
    reason = error_result(tmp_path / "out", scan_cfg(pair[0], tmp_path / "wide"), ValueError)
    assert "model and anchor differ in hidden size (32 vs 48)" in reason


def test_corrupt_weights_end_in_an_error_result(tmp_path, pair):
    import shutil

    shutil.copytree(pair[0], tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    reason = error_result(tmp_path / "out", scan_cfg(tmp_path / "bad", pair[1]), ValueError)
    assert "corrupt or unreadable safetensors" in reason


def test_nan_loss_ends_in_an_error_result(tmp_path, pair):
    import shutil

    shutil.copytree(pair[0], tmp_path / "nan")
    weights = load_file(tmp_path / "nan" / "model.safetensors")
    key = "text_model.final_layer_norm.weight"
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, tmp_path / "nan" / "model.safetensors", metadata={"format": "pt"})
    reason = error_result(tmp_path / "out", scan_cfg(tmp_path / "nan", pair[1]), FloatingPointError)
    assert "inversion loss became nan" in reason
