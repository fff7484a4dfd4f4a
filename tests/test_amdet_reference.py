"""The fast AMDET path computes what the step-by-step reference (tests/reference_amdet.py) computes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from amdet.checks import CheckThresholds, evaluate_checks
from amdet.inversion import LossWeights, inversion_loss, shallow_set
from amdet.landscape import LandscapeConfig, landscape
from amdet.scan import ScanConfig, scan
from core.tiny.architectures import random_encoder
from tests import reference_amdet as ref
from tests.helpers import micro_arch

PROMPTS = [f"a {c} painting of a {t} at dusk, highly detailed" for c in ("red", "blue", "green", "old", "tiny")
           for t in ("cat", "tower", "ship", "forest")]


@pytest.fixture
def models(family):
    return random_encoder(micro_arch(family), seed=0), random_encoder(micro_arch(family), seed=1)


@pytest.fixture
def data(models):
    return shallow_set(models[0], PROMPTS, 0.25, seed=0)


def test_features_match(models, data):
    model, _ = models
    slow = ref.shallow_set(model, PROMPTS, 0.25, seed=0)
    assert torch.equal(data.train, slow.train) and torch.equal(data.test, slow.test)
    assert torch.allclose(data.hidden, slow.hidden, atol=1e-6)
    assert torch.allclose(data.output, slow.output, atol=1e-5)


@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(assim=1.0, dev=0.0, anchor=0.3)])
def test_loss_and_gradient_match(models, data, weights):
    model, anchor = models
    v = torch.randn(2, model.hidden_size, requires_grad=True)
    idx = data.train[:5]
    fast, _ = inversion_loss(model, anchor, data.hidden[idx], data.output[idx], v, weights)
    (g_fast,) = torch.autograd.grad(fast, v)
    slow = ref.batch_loss(model, anchor, data.hidden[idx], data.output[idx], v, weights)
    (g_slow,) = torch.autograd.grad(slow, v)
    assert fast.item() == pytest.approx(slow.item(), abs=1e-5)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)


def test_checks_match(models, data):
    model, anchor = models
    v = torch.randn(1, model.hidden_size)
    hidden = data.hidden[data.test]
    probe = evaluate_checks(model, anchor, hidden, v, CheckThresholds())
    # thresholds at the means, so that each ratio is strictly between 0 and 1 and can disagree
    t = CheckThresholds(assim_token=probe["assim_mean"], same_token=probe["same_mean"], diff_token=probe["anchor_cos_mean"])
    fast = evaluate_checks(model, anchor, hidden, v, t, batch=3)
    slow = ref.checks(model, anchor, hidden, v, t)
    for key in ("assim_ratio", "same_ratio", "diff_ratio"):
        assert fast[key] == pytest.approx(slow[key]), key


def test_landscape_matches(models, data):
    model, anchor = models
    v = torch.randn(1, model.hidden_size)
    cfg = LandscapeConfig(points=7, span=2.0, relative=True, batch=10)
    i = data.test[:1]
    fast = landscape(model, anchor, data.hidden[i], data.output[i], v, LossWeights(), cfg)
    slow = ref.landscape(model, anchor, data.hidden[i[0]], data.output[i[0]], v, LossWeights(), cfg)
    assert fast["dtype"] == "float64" and fast["grid"].dtype == slow["grid"].dtype == torch.float64
    # both in float64 on the same directions: batching is the only difference left (float32: 1e-5, 1e-2)
    assert torch.allclose(fast["grid"], slow["grid"], rtol=0, atol=1e-12)
    assert torch.allclose(fast["eigenvalues"].sort().values, slow["eigenvalues"].sort().values, rtol=0, atol=1e-10)
    assert fast["positive_ratio"] == slow["positive_ratio"]


def test_whole_scan_matches(models):
    model, anchor = models
    # the reference implements the paper's scan, whose v starts at N(0, 1)
    cfg = ScanConfig(batch_size=4, epochs=2, check_every=2, seed=3, test_share=0.25, init="normal",
                     thresholds=replace(CheckThresholds(), loss_start=10.0),
                     landscape=LandscapeConfig(points=5, batch=8))
    fast = scan(model, anchor, PROMPTS, cfg, progress=False)
    slow = ref.scan(model, anchor, ref.shallow_set(model, PROMPTS, cfg.test_share, cfg.seed), cfg)
    assert fast["steps"] == slow["steps"] and fast["verdict"] == slow["verdict"]
    assert fast["final_assimilation"] == pytest.approx(slow["score"], abs=1e-5)  # the reference scores the final v
    assert torch.allclose(fast["v"], slow["v"], atol=1e-4)
    assert [round(c["assim_ratio"], 6) for c in fast["checks"]] == [round(c["assim_ratio"], 6) for c in slow["checks"]]


@pytest.mark.parametrize("passing", [False, True])
def test_early_exit_decides_as_the_full_pass(models, data, passing):
    model, anchor = models
    v = torch.randn(1, model.hidden_size)
    hidden = data.hidden[data.test]
    probe = evaluate_checks(model, anchor, hidden, v, CheckThresholds())
    # failing: about half the prompts are "different" against a 0.95 ratio; passing: every ratio threshold off
    t = (CheckThresholds(assim_ratio=-1.0, same_ratio=-1.0, diff_ratio=-1.0) if passing
         else CheckThresholds(diff_token=probe["anchor_cos_mean"]))
    full = evaluate_checks(model, anchor, hidden, v, t, batch=1)
    quick = evaluate_checks(model, anchor, hidden, v, t, batch=1, early_exit=True)
    assert quick["all_pass"] == full["all_pass"] == passing
    assert quick["checked"] < full["checked"] == len(hidden)
    for key in ("assim_pass", "same_pass", "diff_pass"):
        assert quick[key] in (full[key], None), key


@pytest.mark.parametrize("passing", [False, True])
def test_early_exit_scan_reaches_the_same_result(models, monkeypatch, passing):
    model, anchor = models
    monkeypatch.setattr(type(model), "rows_per_pass", property(lambda self: 2))  # several batches per check pass
    off = -1.0 if passing else None
    thresholds = replace(CheckThresholds(), loss_start=10.0, **({} if off is None else
                         {"assim_ratio": off, "same_ratio": off, "diff_ratio": off, "landscape_ratio": off}))
    # a v from N(0, 1): the failing passes it was written for settle early (a vocabulary start's need not)
    cfg = ScanConfig(batch_size=4, epochs=2, check_every=2, seed=3, test_share=0.25, thresholds=thresholds,
                     init="normal", landscape=LandscapeConfig(points=5, batch=8))
    full = scan(model, anchor, PROMPTS, cfg, progress=False)
    quick = scan(model, anchor, PROMPTS, replace(cfg, check_early_exit=True), progress=False)
    assert (quick["steps"], quick["verdict"], quick["score"]) == (full["steps"], full["verdict"], full["score"])
    assert full["verdict"] == ("backdoor" if passing else "benign")
    assert (full["decision"] is not None) == passing  # a flagged scan records what it decided on
    if passing:
        assert full["decision"]["step"] == full["steps"] and isinstance(full["decision"]["stable"], bool)
        assert -1 <= full["decision"]["stability"] <= 1 and full["decision"]["compared_with_step"] < full["steps"]
    assert torch.equal(quick["v"], full["v"])
    assert [c["all_pass"] for c in quick["checks"]] == [c["all_pass"] for c in full["checks"]]
    assert sum(c["checked"] for c in quick["checks"]) < sum(c["checked"] for c in full["checks"])
