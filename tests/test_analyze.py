"""analyze/: collect result.json trees into a table, compute the paper's metrics, write the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyze import metrics, paper, tables
from analyze.__main__ import main
from analyze.collect import collect, flatten
from analyze.report import NoResults, report

FIGURES = ("roc", "recall_vs_trigger_length", "detection_time", "assimilation")


def write_result(root: Path, kind: str, verdict: str, score: float, *, encoder="tiny-clip", family="clip",
                 paradigm="text_on_text", length=3, seed=0, experiment="table1", variant=None,
                 status="ok", benign_step=None) -> Path:
    """One job's result.json as the scan job writes it (only the fields the analysis reads)."""
    backdoor = kind == "backdoor"
    cell_id = f"{experiment}/{encoder}/{kind}/{paradigm if backdoor else 'benign'}/len{length}/seed{seed}"
    cell_id += "".join(f"/{k}={v}" for k, v in (variant or {}).items())
    record = {
        "status": status, "experiment": experiment,
        "cell": {"id": cell_id, "kind": kind, "encoder": encoder, "family": family,
                 "paradigm": paradigm if backdoor else None, "trigger_level": "word" if backdoor else None,
                 "trigger_length": length if backdoor else None, "trigger_count": 1 if backdoor else None,
                 "similarity": "cosine" if backdoor else None, "adaptive_mu": None, "seed": seed,
                 "benign_run": None if backdoor else "run0", "benign_step": benign_step, "variant": variant or {}},
        "truth": {"kind": kind, "triggers": ["kz", "qq"] if backdoor else [], "targets": ["a cat"] if backdoor else []},
        "attack": ({"asr": 0.9, "utility": 0.8, "assimilation_clean": 0.3, "assimilation_triggered": 0.8}
                   if backdoor else None),
        "provenance": {"code": {"git_commit": "abc123", "git_dirty": False}, "packages": {},
                       "hardware": {"hostname": "node1", "cpu": "x86"}},
        "config": {"scan": {"prompts": 4000}},
    }
    if status == "ok":
        record.update(verdict=verdict, score=score, sim=0.85 if backdoor else None, landscape_ratio=0.9, steps=40,
                      assimilation={"clean": [0.2, 0.3, 0.35], "triggered": [0.8, 0.85]} if backdoor else None,
                      times={"load_s": 1.0, "inversion_s": 10.0}, time_s=20.0 + seed, thresholds_source="profile: test")
    else:
        record.update(reason="RuntimeError: out of memory", traceback="Traceback ...")
    path = root / cell_id / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def confusion_sweep(root: Path, tp=3, fn=2, fp=1, tn=4, **kw) -> Path:
    """A sweep with a known confusion matrix; scores put every backdoor above every benign model."""
    cells = [("backdoor", "backdoor")] * tp + [("backdoor", "benign")] * fn + \
            [("benign", "backdoor")] * fp + [("benign", "benign")] * tn
    for i, (kind, verdict) in enumerate(cells):
        write_result(root, kind, verdict, score=(1.0 if kind == "backdoor" else 0.0) + i / 100,
                     seed=i, length=1 + i % 3, benign_step=10 * i, **kw)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two paradigms sharing one benign pool, a second encoder, a failed job and a corrupt file."""
    root = tmp_path_factory.mktemp("sweep")
    confusion_sweep(root)
    for i in range(3):
        write_result(root, "backdoor", "backdoor", 0.9, paradigm="text_on_pair", seed=i)
        siglip = dict(encoder="tiny-siglip", family="siglip", seed=i)
        write_result(root, "backdoor", "backdoor" if i else "benign", 0.8, **siglip)
        write_result(root, "benign", "benign", 0.1, **siglip)
    write_result(root, "backdoor", None, 0.0, seed=99, status="error")
    (root / "broken").mkdir()
    (root / "broken" / "result.json").write_text('{"status": "ok", "cell": {')
    return root


@pytest.fixture(scope="module")
def reported(sweep):
    return report(sweep, n_boot=200)


def test_prf_of_a_known_confusion_matrix():
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 0], bool)  # tp 3, fn 2, fp 1, tn 4
    p, r, f1 = metrics.prf(y, pred)
    assert p == pytest.approx(75.0) and r == pytest.approx(60.0) and f1 == pytest.approx(200 * 3 / 9)


def test_table1_counts_benign_models_as_negatives_of_every_paradigm_row(reported):
    t1 = reported["table1"]
    clip = t1[t1["encoder"].eq("tiny-clip")].set_index("paradigm")
    assert clip["n_benign"].tolist() == [5, 5]  # the same 5 benign models (1 false positive) in both rows
    assert clip.loc["text_on_text", ["P", "R"]].tolist() == pytest.approx([75.0, 60.0])
    assert clip.loc["text_on_pair", "P"] == pytest.approx(75.0)  # 3 tp, the shared fp
    assert clip.loc["text_on_pair", "R"] == pytest.approx(100.0)
    assert clip.loc["text_on_text", "paper_row"] == "CLIP · Text-on-Text (family)"
    assert clip.loc["text_on_text", "P (paper)"] == pytest.approx(87.30)
    avg = t1[t1["encoder"].eq("Average")].iloc[0]
    rows = t1[t1["encoder"].ne("Average")]
    assert avg["F1"] == pytest.approx(rows["F1"].mean())
    assert avg["n_backdoor"] == 11 and avg["n_benign"] == 8


def test_confidence_intervals_contain_the_estimate(reported):
    t1 = reported["table1"]
    for name in ("P", "R", "F1"):
        ok = t1[name].notna() & t1[f"{name}_lo"].notna()
        assert ok.any()
        assert (t1.loc[ok, f"{name}_lo"] <= t1.loc[ok, name] + 1e-9).all()
        assert (t1.loc[ok, name] <= t1.loc[ok, f"{name}_hi"] + 1e-9).all()


def test_auroc_is_100_for_perfectly_separated_scores(reported):
    t1 = reported["table1"].set_index(["encoder", "paradigm"])
    row = t1.loc[("tiny-clip", "text_on_text")]
    assert row["AUROC"] == pytest.approx(100.0)
    assert row["AUROC_lo"] == pytest.approx(100.0)  # every resample is separated too


def test_bootstrap_auroc_matches_sklearn_on_the_identity_resample():
    rng = np.random.default_rng(0)
    y, score = rng.random(40) < 0.5, rng.random(40)
    score[:5] = 0.5  # ties count one half
    reps = metrics.auroc_replicates(y, score, np.ones(40, bool), np.ones((1, 40)))
    assert reps[0] == pytest.approx(metrics.auroc(y, score))


def test_collect_survives_a_corrupt_file_and_round_trips_through_parquet(sweep, capsys):
    df = collect(sweep)
    assert len(df) == len(list(sweep.rglob("result.json"))) == 21
    broken = df[df["path"].eq("broken/result.json")].iloc[0]
    assert broken["status"] == "error" and broken["reason"].startswith("unreadable result.json: ")
    assert df["truth_triggers"].dropna().iloc[0] == "kz; qq"
    assert json.loads(df["config"].dropna().iloc[0]) == {"scan": {"prompts": 4000}}
    out = sweep / "copy.parquet"
    assert main(["collect", str(sweep), "--out", str(out)]) == 0
    assert "19 ok, 2 error" in capsys.readouterr().out
    back = pd.read_parquet(out)
    assert len(back) == len(df) and list(back.columns) == list(df.columns)
    assert back["trigger_length"].dtype == "Int64"


def test_report_writes_tables_figures_and_report_md(sweep, reported, capsys):
    out = sweep / "report"
    for name in ("table1", "recall_by_trigger_length", "false_positives", "failures"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    for fig in FIGURES:
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "Table I" in text and "figures/roc.png" in text and "RuntimeError: out of memory" in text
    assert reported["false_positives"]["benign_step"].tolist() == [50]
    assert len(reported["failures"]) == 2  # the failed job and the unreadable file
    assert main(["report", str(sweep), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| Encoder | Paradigm | Paper row |")
    assert printed.strip().endswith("report.md")


def test_degenerate_inputs_give_nan_not_crashes(tmp_path):
    confusion_sweep(tmp_path, fp=0, tn=0)  # backdoored models only
    t1 = report(tmp_path, n_boot=50)["table1"]
    row = t1.iloc[0]
    assert np.isnan(row["P"]) and np.isnan(row["F1"]) and np.isnan(row["AUROC"]) and row["R"] == pytest.approx(60)
    assert "| 5 / 0 | – |" in (tmp_path / "report" / "report.md").read_text()


def test_ablation_sits_next_to_the_paper_row(tmp_path):
    for prompts in (1000, 4000):
        confusion_sweep(tmp_path / str(prompts), experiment="table2_data_scale", variant={"scan.prompts": prompts})
    tabs = report(tmp_path, n_boot=50)
    tab = tabs["ablation_table2_data_scale"]
    assert tab["variant_scan.prompts"].tolist() == [1000, 4000]
    assert tab["P (paper)"].isna().tolist() == [True, False] and tab["P (paper)"].iloc[1] == 75.65
    assert tab["P"].tolist() == pytest.approx([75.0, 75.0])
    assert len(tabs["paper_table2_data_scale"]) == 3  # the sizes whose labels were lost


@pytest.mark.parametrize("status", [None, "error"])
def test_no_finished_results_is_a_clear_error(tmp_path, capsys, status):
    if status:
        write_result(tmp_path, "backdoor", None, 0.0, status=status)
    with pytest.raises(NoResults, match="no finished results under"):
        report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"no finished results under {tmp_path}"


def test_paper_table1_average_is_the_mean_of_its_rows():
    """A transcription check: the paper's Average row is the mean of its six rows (time excepted)."""
    t1 = paper.load()["table1"]
    for name in ("P", "R", "F1", "Sim"):
        assert np.mean([r[name] for r in t1["rows"]]) == pytest.approx(t1["average"][name], abs=0.01)
    assert paper.same_value("4000", 4000.0) and paper.same_value("Dev+Assim+anchor", "assim+dev+anchor")


def test_group_keys_give_benign_only_encoders_a_row():
    df = pd.DataFrame({"encoder": ["a", "a", "b"], "paradigm": ["text_on_text", None, None],
                       "kind": ["backdoor", "benign", "benign"]})
    assert tables.group_keys(df, ["encoder", "paradigm"]) == [("a", "text_on_text"), ("b", None)]


def test_a_benign_model_with_a_paradigm_slot_is_a_negative_of_that_row_only():
    df = pd.DataFrame({"encoder": ["a"] * 4, "kind": ["backdoor", "backdoor", "benign", "benign"],
                       "paradigm": ["text_on_text", "text_on_pair", "text_on_text", None]})
    by = ["encoder", "paradigm"]
    assert tables.members(df, by, ("a", "text_on_text")).tolist() == [True, False, True, True]
    assert tables.members(df, by, ("a", "text_on_pair")).tolist() == [False, True, False, True]


def test_nested_lists_are_kept_as_json():
    row = flatten({"attack": {"asr": 1.0, "backdoors": [{"trigger": "kz"}]}, "truth": {"sims": [0.9, None]}})
    assert json.loads(row["attack_backdoors"]) == [{"trigger": "kz"}] and row["truth_sims"] == "0.9; None"


def test_the_score_cut_operating_point_is_its_own_table(tmp_path):
    """With score_verdict recorded, the report adds P/R/F1 of the calibrated cut next to Table I's AMDET verdicts."""
    root = confusion_sweep(tmp_path, tp=2, fn=2, fp=0, tn=4)  # AMDET misses 2 backdoors
    for path in root.rglob("result.json"):
        r = json.loads(path.read_text())
        r["score_verdict"] = "backdoor" if r["score"] > 0.5 else "benign"  # every backdoor scores above 1.0
        path.write_text(json.dumps(r))
    tabs = report(root, n_boot=50)
    assert tabs["table1"].iloc[0]["R"] == pytest.approx(50.0)
    assert tabs["score_cut"].iloc[0][["P", "R", "F1"]].tolist() == pytest.approx([100.0, 100.0, 100.0])
    assert "score_cut" not in report(confusion_sweep(tmp_path / "no_cut"), n_boot=50)
