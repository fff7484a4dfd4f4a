"""Model kinds as a registry (sweeps/kinds.py): a cell makes what cell.kinds[cell.kind] names."""

from __future__ import annotations

import pytest

from core.store import save_model
from sweeps.cell import run_cell
from sweeps.grid import plan
from sweeps.kinds import TextEncoderKind
from sweeps.validate import validate
from tests.test_sweeps import MICRO_STUDY

CELL = [*MICRO_STUDY, "experiment.calibration_seeds=null", "wandb.mode=disabled", "cell.detectors=[weight_distance]"]


def one_cell(tmp_path, *overrides):
    _, cells, _ = plan([*CELL, f"paths.output_dir={tmp_path}", *overrides])
    assert len(cells) == 1
    return cells[0]


class BaseCopy(TextEncoderKind):
    """A kind of nobody's: the clean base itself, stored as a benign model that never moved (a text
    encoder: loaded and scanned against its base as TextEncoderKind says)."""

    def make(self, cfg, out, anchor):
        return save_model(anchor, out / "model", {"kind": "benign", "seed": int(cfg.seed)}, overwrite=True)

    def coordinates(self, cfg):
        return {"copied_from": cfg.encoder.name}


def test_a_kind_registered_by_target_makes_the_cells_model_with_no_edit_to_the_cell(tmp_path):
    cell = one_cell(tmp_path, "cell.kind=base_copy", "+cell.kinds.base_copy._target_=tests.test_kinds.BaseCopy")
    cfg = cell.config()
    record = run_cell(cell.directory, cfg, cell.id)["weight_distance"]
    assert record["status"] == "ok" and record["score"] == 0.0, "the model is the base: no distance"
    assert record["cell"]["kind"] == "base_copy" and record["cell"]["copied_from"] == cfg.encoder.name
    assert record["truth"]["kind"] == "benign", "evaluation reads the manifest the kind wrote"


def test_an_unknown_kind_fails_in_one_line_naming_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown cell.kind 'nope'; choose one of backdoor, benign"):
        validate(one_cell(tmp_path, "cell.kind=nope").config())
