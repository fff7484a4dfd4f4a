"""analyze/: collect result.json trees into a table, compute the paper's metrics, write the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sklearn.metrics import roc_auc_score

from analyze import metrics, paper, render, tables
from analyze.__main__ import main
from analyze.collect import collect, flatten
from analyze.report import NoResults, report, table1_text
from core.records import SCHEMA, RecordError
from sweeps.cell import cell_info
from sweeps.grid import CONF_DIR, plan

FIGURES = ("roc", "recall_vs_trigger_length", "detection_time", "assimilation")


def write_result(root: Path, kind: str, verdict: str, score: float, *, encoder="tiny-clip", family="clip",
                 paradigm="text_on_text", length=3, seed=0, experiment="table1", variant=None,
                 status="ok", benign_step=None, cell=None, extra=None, attack_extra=None, detector="amdet") -> Path:
    """One job's result.json as the scan job writes it (only the fields the analysis reads). `cell`: the
    cell section as sweeps.cell writes it (instead of one built from the arguments); `extra`: more
    top-level fields (verdicts, floor, ...); `attack_extra`: more fields of a backdoored model's attack."""
    backdoor = kind == "backdoor"
    cell_id = f"{experiment}/{encoder}/{kind}/{paradigm if backdoor else 'benign'}/len{length}/seed{seed}"
    cell_id += "".join(f"/{k}={v}" for k, v in (variant or {}).items())
    cell_id = cell["id"] if cell else cell_id
    record = {
        "schema": SCHEMA, "detector": detector, "status": status, "experiment": experiment,
        "cell": cell or {"id": cell_id, "kind": kind, "encoder": encoder, "family": family,
                 "paradigm": paradigm if backdoor else None, "trigger_level": "word" if backdoor else None,
                 "trigger_length": length if backdoor else None, "trigger_count": 1 if backdoor else None,
                 "similarity": "cosine" if backdoor else None, "adaptive_mu": None, "seed": seed,
                 "benign_run": None if backdoor else "run0", "benign_step": benign_step, "variant": variant or {}},
        "truth": {"kind": kind, "triggers": ["kz", "qq"] if backdoor else [], "targets": ["a cat"] if backdoor else []},
        "attack": ({"asr": 0.9, "utility": 0.8, "assimilation_clean": 0.3, "assimilation_triggered": 0.8,
                    **(attack_extra or {})} if backdoor else None),
        "provenance": {"code": {"git_commit": "abc123", "git_dirty": False}, "packages": {},
                       "hardware": {"hostname": "node1", "cpu": "x86", "cpu_model": "Xeon", "cpu_kernels": "AVX512"}},
        "config": {"scan": {"prompts": 4000}},
    }
    if status == "ok":
        record.update(verdict=verdict, score=score, sim=0.85 if backdoor else None, landscape_ratio=0.9, steps=40,
                      assimilation={"clean": [0.2, 0.3, 0.35], "triggered": [0.8, 0.85]} if backdoor else None,
                      times={"load_s": 1.0, "inversion_s": 10.0}, time_s=20.0 + seed, thresholds_source="profile: test")
    else:
        record.update(reason="RuntimeError: out of memory", traceback="Traceback ...")
    record.update(extra or {})
    path = root / cell_id / "detectors" / detector / "result.json"
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
    assert set(df["cpu_model"].dropna()) == {"Xeon"} and set(df["cpu_kernels"].dropna()) == {"AVX512"}  # which machine
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
    assert "CPUs: `Xeon` (torch kernels `AVX512`)" in text
    assert reported["false_positives"]["benign_step"].tolist() == [50]
    assert len(reported["failures"]) == 2  # the failed job and the unreadable file
    assert main(["report", str(sweep), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Table I — each scan's verdict (threshold regime not recorded):"  # results without regimes
    assert printed[1].startswith("| Detector | Encoder | Paradigm | Paper row |")
    assert printed[-2].startswith("difficulty floor: not recorded") and printed[-1].endswith("report.md")


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


# --- threshold regimes, the difficulty floor, trigger positions, the ablations' paper rows ---

def regime_sweep(root: Path, cells: list[tuple[str, str, str | None]], **kw) -> Path:
    """Models as (kind, paper verdict, calibrated verdict or None), recorded as the scan records both
    regimes; `verdict` is the calibrated one where there is one. Every backdoor scores above every benign."""
    for i, (kind, by_paper, calibrated) in enumerate(cells):
        extra = {"verdicts": {"paper": by_paper, "calibrated": calibrated},
                 "thresholds_sources": {"paper": "paper-clip-l", "calibrated": calibrated and "profile: tiny-clip"},
                 "score_steps": 200}
        write_result(root, kind, calibrated or by_paper, score=(1.0 if kind == "backdoor" else 0.0) + i / 100,
                     seed=i, benign_step=10 * i, extra=extra, **kw)
    return root


# paper: tp 2, fn 3, no fp; calibrated: tp 4, fn 1, fp 1
TWO_REGIMES = ([("backdoor", "backdoor", "backdoor")] * 2 + [("backdoor", "benign", "backdoor")] * 2
               + [("backdoor", "benign", "benign")] + [("benign", "benign", "backdoor")]
               + [("benign", "benign", "benign")] * 4)


def test_collect_gives_the_new_sections_flat_columns_and_nulls_for_old_results():
    record = {"verdict": "backdoor", "verdicts": {"paper": "benign", "calibrated": "backdoor"},
              "thresholds_sources": {"paper": "paper-clip-l", "calibrated": "profile: x"}, "score_steps": 200,
              "floor": {"weight_distance": 0.03, "output_drift": 0.2},
              "attack": {"asr": 0.9, "trigger_position": {"token_mean": 4.5, "relative_mean": 0.4, "counts": {"4": 2}},
                         "asr_by_position": {"start": 1.0, "middle": 0.5, "end": 0.25}}}
    row = flatten(record)
    assert (row["verdict_paper"], row["verdict_calibrated"], row["verdict"]) == ("benign", "backdoor", "backdoor")
    assert (row["thresholds_source_paper"], row["thresholds_source_calibrated"]) == ("paper-clip-l", "profile: x")
    assert (row["score_steps"], row["weight_distance"], row["output_drift"]) == (200, 0.03, 0.2)
    assert (row["trigger_position_relative"], row["trigger_position_token"]) == (0.4, 4.5)
    assert [row[f"attack_asr_{p}"] for p in ("start", "middle", "end")] == [1.0, 0.5, 0.25]
    assert all(not isinstance(v, (dict, list)) for v in row.values()), "the table stays flat"
    old = flatten({"verdict": "benign", "attack": {"asr": 0.9}})
    new_columns = ["verdict_paper", "verdict_calibrated", "thresholds_source_paper", "score_steps", "weight_distance",
                   "output_drift", "trigger_position_relative", "attack_asr_start"]
    assert all(old[c] is None for c in new_columns)


def test_a_stale_results_parquet_without_the_new_columns_is_recollected(tmp_path):
    regime_sweep(tmp_path, TWO_REGIMES)
    collect(tmp_path).drop(columns=["verdict_paper", "verdict_calibrated"]).to_parquet(tmp_path / "results.parquet")
    t1 = report(tmp_path, n_boot=20)["table1_paper"]
    assert t1.iloc[0]["R"] == pytest.approx(40.0)


def test_table1_under_both_regimes_each_from_its_own_verdicts(tmp_path, capsys):
    tabs = report(regime_sweep(tmp_path, TWO_REGIMES), n_boot=50)
    by_paper, calibrated = tabs["table1_paper"].iloc[0], tabs["table1_calibrated"].iloc[0]
    assert by_paper[["P", "R"]].tolist() == pytest.approx([100.0, 40.0])
    assert calibrated[["P", "R"]].tolist() == pytest.approx([80.0, 80.0])
    assert by_paper["AUROC"] == calibrated["AUROC"] == pytest.approx(100.0), "the score is the same under both"
    assert tabs["table1"] is tabs["table1_calibrated"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Table I — paper's fixed thresholds (CLIP-L values): detection" in text
    assert "## Table I — calibrated per-encoder profile: detection" in text
    assert "paper regime: `paper-clip-l`; calibrated regime: `profile: tiny-clip`" in text
    recall = tabs["recall_by_trigger_length"]
    assert set(recall["regime"]) == {"paper", "calibrated"}
    assert recall.groupby("regime")["detected"].sum().to_dict() == {"calibrated": 4, "paper": 2}
    assert tabs["false_positives"]["verdict_paper"].tolist() == ["benign"]  # flagged by the calibrated regime only
    assert main(["report", str(tmp_path), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("Table I — paper's fixed thresholds (CLIP-L values):") < \
        printed.index("Table I — calibrated per-encoder profile:") < printed.index("difficulty floor: not recorded")


def test_a_regime_nobody_recorded_is_omitted_with_a_note(tmp_path):
    """No calibrated profile: Table I is the paper's; models missing one regime's verdict are not counted in it."""
    cells = [(kind, by_paper, None) for kind, by_paper, _ in TWO_REGIMES]
    tabs = report(regime_sweep(tmp_path / "paper", cells), n_boot=20)
    assert "table1_calibrated" not in tabs and tabs["table1"] is tabs["table1_paper"]
    text = (tmp_path / "paper" / "report" / "report.md").read_text()
    assert "## Table I — calibrated per-encoder profile\n\n_Not recorded (no scan of this sweep used a calibrated " \
           "profile)" in text
    assert "Table I — calibrated per-encoder profile: not recorded." in table1_text(tabs)
    partly = TWO_REGIMES[:-1] + [("benign", "benign", None)]  # one benign model scanned without a profile
    t1 = report(regime_sweep(tmp_path / "partly", partly), n_boot=20)["table1_calibrated"]
    assert t1.iloc[0][["n_backdoor", "n_benign"]].tolist() == [5, 4]


def test_the_difficulty_floor_is_the_auroc_of_each_statistic_on_the_same_models(tmp_path, capsys):
    cells = [("backdoor", "backdoor", "backdoor")] * 4 + [("benign", "benign", "benign")] * 4
    rng = np.random.default_rng(0)
    drift, score = rng.random(9), rng.random(9)
    for i, (kind, by_paper, calibrated) in enumerate(cells):
        extra = {"verdicts": {"paper": by_paper, "calibrated": calibrated},
                 "floor": {"weight_distance": (0.5 if kind == "backdoor" else 0.1) + i / 100, "output_drift": drift[i]}}
        write_result(tmp_path, kind, calibrated, score=score[i], seed=i,
                     paradigm=("text_on_text", "text_on_pair")[i % 2], extra=extra)
    write_result(tmp_path, "benign", "benign", score=score[8], seed=8)  # no floor recorded: left out of the floor
    floor = report(tmp_path, n_boot=100)["floor"]
    assert floor["encoder"].tolist() == ["tiny-clip", "tiny-clip", "All"]
    overall = floor.iloc[-1]
    y = np.array([k == "backdoor" for k, *_ in cells])
    assert overall[["n_backdoor", "n_benign"]].tolist() == [4, 4]
    assert overall["weight_distance"] == pytest.approx(100.0) and overall["weight_distance_lo"] == pytest.approx(100.0)
    assert overall["output_drift"] == pytest.approx(100 * roc_auc_score(y, drift[:8]))
    assert overall["score"] == pytest.approx(100 * roc_auc_score(y, score[:8]))
    assert overall["score_lo"] <= overall["score"] <= overall["score_hi"]
    line = tables.floor_line(floor)
    assert line == (f"difficulty floor: AUROC (%) weight distance 100.0, output drift {overall['output_drift']:.1f}, "
                    f"AMDET score {overall['score']:.1f} (8 models: 4 backdoored, 4 benign)")
    assert main(["report", str(tmp_path), "--bootstrap", "20"]) == 0
    assert line in capsys.readouterr().out


def test_recall_by_trigger_position_thirds_and_attack_success_by_position(tmp_path):
    positions = [0.1, 0.3, 0.5, 0.9]  # early, early, middle, late
    cells = [("backdoor", "backdoor", "backdoor"), ("backdoor", "benign", "backdoor"),
             ("backdoor", "backdoor", "backdoor"), ("backdoor", "benign", "benign")]
    for i, ((kind, by_paper, calibrated), pos) in enumerate(zip(cells, positions)):
        attack = {"trigger_position": {"token_mean": 10 * pos, "relative_mean": pos, "counts": {}},
                  "asr_by_position": {"start": 1.0, "middle": 0.5 + i / 10, "end": 0.2}}
        write_result(tmp_path, kind, calibrated, score=1.0, seed=i, attack_extra=attack,
                     extra={"verdicts": {"paper": by_paper, "calibrated": calibrated}})
    write_result(tmp_path, "benign", "benign", score=0.0, seed=9,
                 extra={"verdicts": {"paper": "benign", "calibrated": "benign"}})
    tabs = report(tmp_path, n_boot=20)
    recall = tabs["recall_by_trigger_position"].set_index(["regime", "trigger_position"])["R"]
    assert recall["paper"].to_dict() == pytest.approx({"early": 50.0, "middle": 100.0, "late": 0.0})
    assert recall["calibrated"].to_dict() == pytest.approx({"early": 100.0, "middle": 100.0, "late": 0.0})
    assert recall.index.get_level_values(1)[:3].tolist() == ["early", "middle", "late"]
    asr = tabs["asr_by_position"].iloc[-1]
    assert asr["encoder"] == "All" and asr["n"] == 4
    assert asr[["ASR start", "ASR middle", "ASR end"]].tolist() == pytest.approx([100.0, 65.0, 20.0])
    assert asr["position (relative)"] == pytest.approx(np.mean(positions))


def test_old_results_say_the_new_sections_were_not_recorded(sweep, reported):
    assert not {"floor", "recall_by_trigger_position", "asr_by_position"} & set(reported)
    text = (sweep / "report" / "report.md").read_text()
    assert "_difficulty floor: not recorded" in text
    assert "_Trigger positions not recorded" in text and "_Attack success by position not recorded" in text


ABLATIONS = sorted(e for e, block in paper.load()["ablations"].items() if block.get("rows"))


def test_every_ablation_names_an_experiment_and_the_columns_its_variants_become():
    experiments = {p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")}
    assert set(tables.ABLATION_GROUP) <= experiments and set(paper.load()["ablations"]) <= experiments
    assert tables.ABLATION_GROUP["table4_thresholds"] == tuple(
        f"variant_{k}" for k in paper.ablation("table4_thresholds")["rows"][10]["value"])


@pytest.mark.parametrize("experiment", ABLATIONS)
def test_every_paper_row_with_a_setting_meets_a_row_of_its_experiment(tmp_path, experiment):
    """The experiment's own grid (its backdoored cells at one trigger length and seed, composed and
    recorded as sweeps.cell records them), scored: each paper row with a `value` sits next to exactly
    one of our rows, and only the rows whose setting was lost are left over."""
    _, cells, _ = plan([f"experiment={experiment}", "cell.kind=backdoor", "attack.triggers.length=1", "seed=0"])
    assert len(cells) > 1
    for i, cell in enumerate(cells):
        info = cell_info(cell.config(), cell.id)
        write_result(tmp_path, "backdoor", "backdoor", score=1.0, experiment=experiment, cell=info,
                     extra={"verdicts": {"paper": "backdoor" if i % 2 else "benign", "calibrated": None}})
    for i in range(2):  # benign models of the same encoder: the negatives
        write_result(tmp_path, "benign", "benign", score=0.0, experiment=experiment, encoder="clip-l", seed=i,
                     extra={"verdicts": {"paper": "benign", "calibrated": None}})
    df = tables.dedupe(collect(tmp_path))
    tab = tables.ablation(df, experiment, n_boot=10, verdict="verdict_paper")
    cols = tables.key_columns(tab)
    assert cols == list(tables.ABLATION_GROUP[experiment]), "the experiment's own columns, not the variant label"
    assert len(tab) == len(cells), "one row per setting of the grid"
    rows = paper.ablation(experiment)["rows"]
    for row in (r for r in rows if "value" in r):
        assert sum(tables.paper_match(rows, tab.iloc[i], cols) is row for i in range(len(tab))) == 1, row["value"]
    unmatched, lost = tables.paper_leftovers(tab, experiment)
    assert unmatched is None
    assert (0 if lost is None else len(lost)) == sum("value" not in r for r in rows)


def test_ablations_are_reported_under_each_regime(tmp_path):
    for prompts in (1000, 4000):
        regime_sweep(tmp_path / str(prompts), TWO_REGIMES, experiment="table2_data_scale",
                     variant={"scan.prompts": prompts})
    tabs = report(tmp_path, n_boot=20)
    by_paper, calibrated = tabs["ablation_table2_data_scale_paper"], tabs["ablation_table2_data_scale_calibrated"]
    assert by_paper["R"].tolist() == pytest.approx([40.0, 40.0])
    assert calibrated["R"].tolist() == pytest.approx([80.0, 80.0])
    assert tabs["ablation_table2_data_scale"] is calibrated
    assert calibrated["P (paper)"].iloc[1] == 75.65 and "paper_unmatched_table2_data_scale" not in tabs
    assert len(tabs["paper_table2_data_scale"]) == 3  # the sizes whose labels were lost
    text = (tmp_path / "report" / "report.md").read_text()
    assert ("## Ablation table2_data_scale — paper's fixed thresholds (CLIP-L values), by scan.prompts "
            "(paper: CLIP)") in text


def test_a_record_of_another_schema_or_missing_a_field_is_refused_with_its_path_and_the_field(tmp_path):
    path = write_result(tmp_path, "backdoor", "backdoor", 0.9)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema": 1}))
    with pytest.raises(RecordError, match=f"{re.escape(str(path))}: field 'schema' is 1"):
        collect(tmp_path)
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "score"}))
    with pytest.raises(RecordError, match=f"{re.escape(str(path))}: field 'score' is missing"):
        collect(tmp_path)


def test_table1_has_one_block_per_detector_and_a_score_only_baseline_reports_auroc_without_prf(tmp_path):
    for i in range(4):
        for kind in ("backdoor", "benign"):
            write_result(tmp_path, kind, kind, score=0.9 if kind == "backdoor" else 0.1, seed=i)
            # a baseline that ranks the other way round and decides nothing
            write_result(tmp_path, kind, None, score=0.1 if kind == "backdoor" else 0.9, seed=i, detector="weight_distance")
    t1 = report(tmp_path, n_boot=50)["table1"]
    assert t1["detector"].drop_duplicates().tolist() == ["amdet", "weight_distance"]
    amdet, baseline = (t1[t1["detector"].eq(d) & t1["encoder"].ne("Average")].iloc[0] for d in ("amdet", "weight_distance"))
    assert (amdet["F1"], amdet["AUROC"], baseline["AUROC"]) == (100.0, 100.0, 0.0)
    assert np.isnan(baseline["P"]) and np.isnan(baseline["F1"]) and np.isnan(baseline["F1 (paper)"])
    assert amdet["F1 (paper)"] == 89.43 and (amdet["n_backdoor"], baseline["n_backdoor"]) == (4, 4)


def test_table1_counts_the_backdoors_flagged_without_recovering_their_feature(tmp_path):
    for seed, (verdict, sim) in enumerate([("backdoor", 0.9), ("backdoor", 0.2), ("backdoor", -0.1), ("benign", 0.1)]):
        write_result(tmp_path, "backdoor", verdict, 0.9, seed=seed, extra={"sim": sim})
    write_result(tmp_path, "benign", "benign", 0.1, seed=9)
    tab = tables.table1(collect(tmp_path), n_boot=50)
    row = tab[tab["paradigm"].eq("text_on_text")].iloc[0]
    assert row["flagged_low_sim"] == 2, "the missed backdoor's low Sim is not counted"
    assert tab[tab["encoder"].eq("Average")].iloc[0]["flagged_low_sim"] == 2
    assert "flagged, Sim < 0.5" in render.metric_display(tab, {"encoder": "Encoder"}).columns
