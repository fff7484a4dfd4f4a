"""Detectors as plugins (core/detectors.py): a detector defined outside the package runs in a sweep
beside AMDET and the baselines, and adding detectors to a finished sweep retrains nothing."""

from __future__ import annotations

import ast
import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from safetensors.torch import load_file

from amdet.inversion import LossWeights
from baselines import gcg
from core.detectors import Context

from sweeps.__main__ import main as sweeps_main
from tests.helpers import compose_config
from tests.test_imports import graph, modules

SMOKE = ["experiment=smoke"]
CONF = Path(__file__).resolve().parents[1] / "conf"
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


def test_detectors_added_to_a_finished_sweep_one_defined_outside_the_package_retrain_nothing(tmp_path, plugin, capsys):
    """One smoke sweep with AMDET alone, then the same sweep with a baseline and a plugin detector beside it:
    only their records are written, no model is retrained, no AMDET record rewritten."""
    out = tmp_path / "out"
    smoke = [*SMOKE, "attack=text_on_text"]  # one paradigm: half the grid, the same steps
    assert sweeps_main(["run", *smoke, f"paths.output_dir={out}", "cell.detectors=[amdet]"]) == 0, capsys.readouterr()
    sweep = out / "sweeps" / "smoke"
    models = {p: p.stat().st_mtime_ns for p in sweep.rglob("model.safetensors")}
    amdet = {p: p.stat().st_mtime_ns for p in sweep.glob("*/detectors/amdet/result.json")}
    assert len(models) >= 4 and len(amdet) == 6  # 2 scored + 4 calibration cells
    assert not list(sweep.glob("*/detectors/weight_distance"))

    capsys.readouterr()
    more = ["run", *smoke, f"paths.output_dir={out}", "cell.detectors=[amdet,weight_distance,mine]",
            f"hydra.searchpath=[file://{plugin}]"]
    assert sweeps_main(more) == 0
    printed = capsys.readouterr().out
    # calibration cells run the profiled detectors only (AMDET): nothing new for them to do
    assert "scored: 2 cells, 2 computed" in printed and "calibration: 4 cells, 0 computed, 4 already done" in printed
    assert "ASR" not in printed and "benign step" not in printed, "no attack or fine-tuning ran"
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("model.safetensors")} == models, "no model retrained"
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/detectors/amdet/result.json")} == amdet
    assert not list(sweep.glob("*cell.observe=True*/detectors/weight_distance")), "a baseline never runs in a calibration cell"

    df = pd.read_parquet(sweep / "results.parquet")
    scored = df[~df["observe"].astype(bool)]
    assert sorted(scored["detector"].unique()) == ["amdet", "mine", "weight_distance"]
    assert scored.groupby("detector").size().tolist() == [2, 2, 2]  # one record per (model, detector)
    mine = scored[scored["detector"].eq("mine")].set_index("cell_id")
    distance = scored[scored["detector"].eq("weight_distance")].set_index("cell_id")
    assert (mine["score"] == 2.0 * distance["score"]).all(), "its config's params reach the function"
    (record,) = [json.loads(p.read_text()) for p in sweep.glob("*/detectors/mine/result.json")
                 if json.loads(p.read_text())["cell"]["kind"] == "backdoor" and not json.loads(p.read_text())["cell"]["observe"]][:1]
    assert record["schema"] == 2 and record["files"] == {"note": "mine.txt"} and record["provenance"]["code"]
    assert record["config"]["detector"]["mine"]["scale"] == 2.0
    table1 = (sweep / "report" / "report.md").read_text()
    assert "| mine |" in table1 and "| weight_distance |" in table1 and "| amdet |" in table1

    assert sweeps_main(more) == 0
    assert "scored: 2 cells, 0 computed, 2 already done" in capsys.readouterr().out


def test_an_unknown_detector_fails_before_any_cell_naming_it_and_where_it_was_looked_for(tmp_path, capsys):
    assert sweeps_main(["run", *SMOKE, f"paths.output_dir={tmp_path}", "cell.detectors=[amdet,nope]"]) == 2
    err = capsys.readouterr().err
    assert "unknown detector 'nope'" in err and "hydra.searchpath" in err
    assert not list(tmp_path.rglob("result.json"))


def closure(module: str, edges: dict[str, set[str]]) -> set[str]:
    """The project modules `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for dep in edges.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("detector", sorted(p.stem for p in (CONF / "detector").glob("*.yaml")))
def test_a_detector_never_sees_ground_truth(detector):
    """Nothing a registered detector's function imports, however indirectly, is the attack, benign or
    prompt-tuning code (which holds the attacker's trigger), the evaluation step, or the store's manifest:
    the truth meets the detection only in evaluation/."""
    target = compose_config().detector[detector]["_target_"]  # composed: a variant takes its base's through defaults
    edges, paths = graph()[0], modules()
    module = target.rpartition(".")[0]
    reached = closure(module, edges) | {module}
    assert len(reached) > 3 and module in paths, "the walk finds the detector's module and what it imports"
    forbidden = {m for m in reached if m.split(".")[0] in ("attacks", "benign_ft", "evaluation", "prompt_tuning")}
    assert not forbidden, f"detector {detector} ({module}) reaches {sorted(forbidden)}"
    for m in reached:
        names = {a.name for n in ast.walk(ast.parse(paths[m].read_text())) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & {"read_manifest", "MANIFEST"}, f"detector {detector} reaches the manifest through {m}"


def test_the_discrete_trigger_search_is_deterministic_and_writes_its_trigger_as_a_reversed_feature(tmp_path, micro_encoder):
    from_base = micro_encoder  # the base scanned against itself: a search that runs, not one that finds anything
    cfg = compose_config("progress=false")
    context = Context(cfg=cfg, model=from_base, anchor=from_base)
    kw = dict(tokens=2, steps=4, top_k=8, candidates=8, batch=4, prompts=20, weights=dict(cfg.scan.weights))
    for d in "ab":
        (tmp_path / d).mkdir()
    first = gcg.detect(tmp_path, tmp_path, tmp_path / "a", context, **kw)
    second = gcg.detect(tmp_path, tmp_path, tmp_path / "b", context, **kw)
    assert first["token_ids"] == second["token_ids"] and first["score"] == second["score"], "same seed, same search"
    assert len(first["losses"]) == 4 and all(math.isfinite(x) for x in first["losses"])
    assert (tmp_path / "a" / "trigger.txt").read_text().strip() == first["trigger"]
    v = load_file(str(tmp_path / "a" / first["files"]["v"]))["v"]
    assert v.shape == (2, from_base.hidden_size) and first["verdict"] is None and 0 < first["score"] <= 1
    special = set(from_base.tokenizer.all_special_ids)
    assert not special & set(first["token_ids"]), "never BOS, EOS or padding"
    with pytest.raises(ValueError, match="detector.gcg.steps must be positive"):
        gcg.detect(tmp_path, tmp_path, tmp_path / "c", context, **{**kw, "steps": 0})


def test_the_discrete_trigger_search_picks_only_tokens_the_tokenizer_can_spell(micro_encoder):
    """An embedding table with rows beyond the tokenizer's pieces (padded tables; the SigLIP stand-in's
    sentencepiece model is smaller than its 32,000 rows): those rows are never chosen."""
    vocab = len(micro_encoder.tokenizer)
    table = gcg.token_table(micro_encoder).detach()
    padded = torch.cat([table, torch.randn(64, table.shape[1]) * 100])  # rows a gradient would favour
    micro_encoder.text.embeddings.token_embedding.weight = torch.nn.Parameter(padded, requires_grad=False)
    h = micro_encoder.embed(micro_encoder.tokenize(["a photo of a cat", "a red bus", "two dogs", "an apple"]))
    ids, _ = gcg.search(micro_encoder, micro_encoder, h, micro_encoder.encode(h), LossWeights(), tokens=3, steps=3,
                        top_k=8, candidates=8, batch=2, seed=0)
    assert (ids < vocab).all()
