"""`precision`: fp32 | tf32 | bf16 autocast, checked before anything runs, part of the settings keys
when not fp32, and never reaching the landscape (float64 whatever the run's precision)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from amdet.inversion import LossWeights
from amdet.landscape import LandscapeConfig, landscape
from core.precision import computing_in, precision_of
from core.store import model_settings_key
from sweeps.cell import settings_key
from sweeps.grid import compose_config
from tests.helpers import PROMPTS


@pytest.mark.parametrize("precision, device, message", [
    ("fp16", "cpu", "unknown precision 'fp16'"),
    ("tf32", "cpu", "precision=tf32 needs a CUDA device"),
])
def test_a_precision_that_cannot_run_fails_in_one_line(precision, device, message):
    with pytest.raises(ValueError, match=message):
        precision_of(OmegaConf.create({"precision": precision, "device": device}))


def test_bf16_autocasts_matrix_products_and_restores_the_settings_after():
    a = torch.randn(4, 4)
    with computing_in(OmegaConf.create({"precision": "bf16", "device": "cpu"})) as precision:
        assert precision == "bf16" and (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with computing_in(OmegaConf.create({"precision": "fp32", "device": "cpu"})):
        assert (a @ a).dtype == torch.float32


def test_the_landscape_stays_float64_under_bf16(micro_encoder):
    h = micro_encoder.embed(micro_encoder.tokenize(PROMPTS[:1]))
    out = micro_encoder.encode(h)
    v = torch.randn(1, h.shape[-1], generator=torch.Generator().manual_seed(0))
    cfg = LandscapeConfig(points=5, span=3.0, batch=5)
    exact = landscape(micro_encoder, micro_encoder, h, out, v, LossWeights(), cfg)
    with computing_in(OmegaConf.create({"precision": "bf16", "device": "cpu"})):
        under_bf16 = landscape(micro_encoder, micro_encoder, h, out, v, LossWeights(), cfg)
    assert under_bf16["grid"].dtype == torch.float64 and torch.equal(under_bf16["grid"], exact["grid"])


def test_precision_is_in_the_settings_keys_and_fp32_keys_are_unchanged():
    fp32, bf16 = compose_config([]), compose_config(["precision=bf16"])
    unset = compose_config([])
    OmegaConf.set_struct(unset, False)
    del unset["precision"]  # a config from before the setting existed
    assert model_settings_key(fp32, "backdoor") == model_settings_key(unset, "backdoor")
    assert model_settings_key(fp32, "backdoor") != model_settings_key(bf16, "backdoor")
    assert settings_key(fp32, "amdet") == settings_key(unset, "amdet") != settings_key(bf16, "amdet")
