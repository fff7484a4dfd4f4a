"""The FLOP cost model (sweeps/flops.py) and the plan's GPU-hours per family."""

from __future__ import annotations

import pytest

from core.real_shapes import SHAPES
from sweeps.__main__ import main as sweeps_main
from sweeps.flops import GPUS, cell_flops, gpu_seconds, text_shape
from tests.helpers import compose_config


def test_forward_flops_count_the_layers_matrix_products_and_attention():
    clip = text_shape(SHAPES["clip-l"].text)
    assert clip.layer_params == 12 * (4 * 768**2 + 2 * 768 * 3072)  # 84.9 M: CLIP-L's text layers
    assert clip.forward == 2 * clip.layer_params * 77 + 4 * 12 * 77**2 * 768


def test_longclip_and_siglip_cells_cost_what_their_shapes_say_not_what_clip_l_costs():
    cfg = compose_config("encoder=clip-l")
    per_cell = {name: sum(p.flops for p in cell_flops(cfg, "backdoor", text_shape(SHAPES[name].text))) for name in SHAPES}
    assert per_cell["longclip-l"] / per_cell["clip-l"] == pytest.approx(3.3, abs=0.1)  # 248 positions
    assert per_cell["siglip"] / per_cell["clip-l"] == pytest.approx(4.0, abs=0.1)  # 27 × 1152


def test_gpu_time_divides_by_the_peak_at_the_precision_and_keeps_the_landscape_in_float64():
    phases = cell_flops(compose_config("encoder=clip-l"), "benign", text_shape(SHAPES["clip-l"].text))
    bf16, fp32 = gpu_seconds(phases, "h100", "bf16", 0.5), gpu_seconds(phases, "h100", "fp32", 0.5)
    landscape = next(p for p in phases if p.name == "landscape")
    assert landscape.precision == "fp64" and fp32 > bf16 > landscape.flops / (GPUS["h100"]["fp64"] * 1e12 * 0.5)
    with pytest.raises(ValueError, match="unknown GPU 'tpu'"):
        gpu_seconds(phases, "tpu")


def test_the_plan_prints_gpu_hours_per_family_from_flops(capsys):
    assert sweeps_main(["plan", "experiment=table1", "seed=0", "--gpu", "a100", "--precision", "tf32"]) in (0, None)
    out = capsys.readouterr().out
    assert "FLOP model (sweeps/flops.py) on one A100 at tf32" in out and "assumed" in out
    for family in SHAPES:
        assert f"    {family}: 180 cells" in out  # seed 0's 60 scored cells, and 120 calibration cells
    assert "GPU-hours" in out and "dearest cell:" in out


def test_the_vocabulary_screen_tries_every_token_on_one_short_row_its_best_on_the_others_and_a_normal_start_costs_nothing():
    shape = text_shape(SHAPES["clip-l"].text)
    cfg = compose_config("encoder=clip-l")
    inv = cfg.scan.inversion
    screen = next(p for p in cell_flops(cfg, "benign", shape) if p.name == "vocabulary screen")
    short = (49408 + inv.screen_keep * (inv.screen_prompts - 1)) * shape.forward_at(inv.screen_positions)
    assert screen.flops == pytest.approx(short + inv.screen_candidates * inv.batch_size * shape.forward * 2)
    normal = cell_flops(compose_config("encoder=clip-l", "scan.inversion.init=normal"), "benign", shape)
    assert "vocabulary screen" not in [p.name for p in normal]
