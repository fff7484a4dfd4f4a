"""Detectors as plugins (core/detectors.py): a detector defined outside the package runs in a sweep
beside AMDET and the baselines, and adding one to a finished sweep retrains nothing."""

from __future__ import annotations

import ast
import json
import textwrap

import pandas as pd
import pytest

from sweeps.__main__ import main as sweeps_main
from tests.test_imports import graph, modules

SMOKE = ["experiment=smoke"]
MINE = '''
import time
from core.drift import weight_distance


def detect(model_dir, anchor_dir, out, context, scale=1.0):
    """A detector of nobody's: the weight distance, scaled, with a verdict at a fixed cut."""
    t = time.perf_counter()
    score = scale * weight_distance(context.model, context.anchor)
    (out / "mine.txt").write_text(str(score))
    elapsed = time.perf_counter() - t
    return {"verdict": "backdoor" if score > 0.05 else "benign", "score": score, "times": {"all_s": elapsed},
            "time_s": elapsed, "files": {"note": "mine.txt"}}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """DIR/detector/mine.yaml naming mine_detector.detect, a module importable from DIR."""
    (tmp_path / "plugin" / "detector").mkdir(parents=True)
    (tmp_path / "plugin" / "mine_detector.py").write_text(textwrap.dedent(MINE))
    (tmp_path / "plugin" / "detector" / "mine.yaml").write_text("_target_: mine_detector.detect\nscale: 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    return tmp_path / "plugin"


def test_a_detector_defined_outside_the_package_runs_beside_amdet_and_a_baseline(tmp_path, plugin, capsys):
    out = tmp_path / "out"
    code = sweeps_main(["run", *SMOKE, f"paths.output_dir={out}", "cell.detectors=[amdet,weight_distance,mine]",
                        f"hydra.searchpath=[file://{plugin}]"])
    assert code == 0, capsys.readouterr()
    sweep = out / "sweeps" / "smoke"
    df = pd.read_parquet(sweep / "results.parquet")
    scored = df[~df["observe"].astype(bool)]
    assert sorted(scored["detector"].unique()) == ["amdet", "mine", "weight_distance"]
    assert scored.groupby("detector").size().tolist() == [4, 4, 4]  # one record per (model, detector)
    mine = scored[scored["detector"].eq("mine")].set_index("cell_id")
    distance = scored[scored["detector"].eq("weight_distance")].set_index("cell_id")
    assert (mine["score"] == 2.0 * distance["score"]).all(), "its config's params reach the function"
    (record,) = [json.loads(p.read_text()) for p in sweep.glob("*/detectors/mine/result.json")
                 if json.loads(p.read_text())["cell"]["kind"] == "backdoor" and not json.loads(p.read_text())["cell"]["observe"]][:1]
    assert record["schema"] == 2 and record["files"] == {"note": "mine.txt"} and record["provenance"]["code"]
    assert record["config"]["detector"]["mine"]["scale"] == 2.0
    table1 = (sweep / "report" / "report.md").read_text()
    assert "| mine |" in table1 and "| weight_distance |" in table1 and "| amdet |" in table1


def test_adding_a_detector_to_a_finished_sweep_retrains_nothing_and_writes_only_its_records(tmp_path, capsys):
    out = tmp_path / "out"
    first = ["run", *SMOKE, f"paths.output_dir={out}", "cell.detectors=[amdet]"]
    assert sweeps_main(first) == 0, capsys.readouterr()
    sweep = out / "sweeps" / "smoke"
    models = {p: p.stat().st_mtime_ns for p in sweep.rglob("model.safetensors")}
    amdet = {p: p.stat().st_mtime_ns for p in sweep.glob("*/detectors/amdet/result.json")}
    assert len(models) >= 8 and len(amdet) == 12  # 4 scored + 8 calibration cells
    assert not list(sweep.glob("*/detectors/output_drift"))

    capsys.readouterr()
    assert sweeps_main(["run", *SMOKE, f"paths.output_dir={out}", "cell.detectors=[amdet,output_drift]"]) == 0
    printed = capsys.readouterr().out
    assert "scored: 4 cells, 4 computed" in printed and "calibration: 8 cells, 8 computed" in printed
    assert "ASR" not in printed and "benign step" not in printed, "no attack or fine-tuning ran"
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("model.safetensors")} == models, "no model retrained"
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/detectors/amdet/result.json")} == amdet
    assert len(list(sweep.glob("*/detectors/output_drift/result.json"))) == 12
    assert sweeps_main(["run", *SMOKE, f"paths.output_dir={out}", "cell.detectors=[amdet,output_drift]"]) == 0
    assert "scored: 4 cells, 0 computed, 4 already done" in capsys.readouterr().out


def test_an_unknown_detector_fails_before_any_cell_naming_it_and_where_it_was_looked_for(tmp_path, capsys):
    assert sweeps_main(["run", *SMOKE, f"paths.output_dir={tmp_path}", "cell.detectors=[amdet,nope]"]) == 2
    err = capsys.readouterr().err
    assert "unknown detector 'nope'" in err and "hydra.searchpath" in err
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("package", ["baselines"])
def test_a_baseline_detector_never_sees_ground_truth(package):
    """No detector module imports the attack or benign code, or the store's manifest reader. (AMDET still
    computes Sim against the true trigger inside its scan; moving that to an evaluation step is open.)"""
    edges, _ = graph()
    paths = modules()
    for module, deps in edges.items():
        if module == package or module.startswith(package + "."):
            assert not {d for d in deps if d.split(".")[0] in ("attacks", "benign_ft")}, module
            names = {a.name for n in ast.walk(ast.parse(paths[module].read_text())) if isinstance(n, ast.ImportFrom)
                     for a in n.names}
            assert "read_manifest" not in names, module
