"""How a result was computed (result.json "compute": device, precision, threads), and a sweep that
refuses to mix cells computed on another device type or in another precision."""

from __future__ import annotations

import json
import re

import pytest
import torch

from core.provenance import compute_mismatch, compute_record
from sweeps.__main__ import main as sweeps_main
from sweeps.run import MixedCompute, run_experiment
from tests.helpers import compose_config
from tests.test_sweeps import MICRO_STUDY


def test_the_compute_record_resolves_the_device_and_reads_precision_and_threads():
    assert compute_record(compose_config()) == {"device": "cpu", "precision": "fp32", "threads": torch.get_num_threads()}
    index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert compute_record(compose_config("device=cuda"))["device"] == f"cuda:{index}"
    assert compute_record(compose_config("device=cuda:1"))["device"] == "cuda:1"
    assert compute_record(compose_config("precision=bf16"))["precision"] == "bf16"


@pytest.mark.parametrize("recorded, overrides, expected", [
    ({"device": "cpu", "precision": "fp32", "threads": 1}, [], None),  # threads may differ
    ({"device": "cuda:1", "precision": "fp32"}, ["device=cuda:0"], None),  # so may the GPU's index
    ({"device": "cuda:0", "precision": "fp32"}, [], ("device type", "cuda", "cpu")),
    ({"device": "cpu", "precision": "bf16"}, [], ("precision", "bf16", "fp32")),
    ({"device": "cpu"}, ["precision=bf16"], ("precision", "fp32", "bf16")),
    (None, ["device=cuda"], None),  # a result written before the record: taken as it is
])
def test_a_mismatch_is_a_device_type_or_a_precision(recorded, overrides, expected):
    assert compute_mismatch(recorded, compose_config(*overrides)) == expected


@pytest.mark.parametrize("override, key", [
    ("precision=fp8", "precision"), ("experiment.allow_mixed_compute=maybe", "experiment.allow_mixed_compute"),
    ("device=gpu", "device"),
])
def test_bad_compute_settings_fail_before_any_cell(override, key, capsys, tmp_path):
    assert sweeps_main(["run", *MICRO_STUDY, f"paths.output_dir={tmp_path}", override]) == 2
    assert key in capsys.readouterr().err and not list(tmp_path.rglob("result.json"))


def test_a_sweep_records_how_each_cell_computed_and_refuses_to_mix_device_types_or_precisions(tmp_path, capsys):
    sweep = [*MICRO_STUDY, f"paths.output_dir={tmp_path}", "experiment.calibration_seeds=null", "cell.kind=benign",
             "wandb.mode=disabled"]  # one micro benign cell
    assert run_experiment(sweep, progress=False, report=False)["scored"]["computed"] == 1
    (path,) = (tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json")
    record = json.loads(path.read_text())
    assert record["compute"] == {"device": "cpu", "precision": "fp32", "threads": torch.get_num_threads()}
    before = path.read_text()

    assert sweeps_main(["run", *sweep, "device=cuda"]) == 2  # continued on a GPU
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and path.parents[2].name in err and "device type 'cpu'" in err and "'cuda'" in err, err
    assert "experiment.allow_mixed_compute=true" in err and path.read_text() == before

    for allowed in (["device=cuda", "experiment.allow_mixed_compute=true"], ["threads=1"]):  # the same cell dir
        summary = run_experiment([*sweep, *allowed], progress=False, report=False)["scored"]
        assert (summary["computed"], summary["skipped"]) == (0, 1), allowed

    path.write_text(json.dumps({**record, "compute": {**record["compute"], "precision": "bf16"}}))
    with pytest.raises(MixedCompute, match=rf"{re.escape(path.parents[2].name)}.*precision 'bf16' but the current config computes with 'fp32'"):
        run_experiment(sweep, progress=False, report=False)
