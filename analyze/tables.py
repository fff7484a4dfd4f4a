"""The report's tables as numeric DataFrames (percent for P/R/F1/AUROC/Sim/ASR; render.py formats them)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analyze import metrics, paper

AMDET = "amdet"  # the detector the paper's numbers are of

KINDS = ("backdoor", "benign", "prompt_tuned")
# paper order (CLIP, LongCLIP, SigLIP), each tiny stand-in after its full-size model; trigger-position thirds
ORDER = {"clip-l": 0, "tiny-clip": 1, "longclip-l": 2, "tiny-longclip": 3, "siglip": 4, "tiny-siglip": 5,
         "text_on_text": 0, "text_on_pair": 1, "early": 0, "middle": 1, "late": 2}
# the columns each ablation sweep varies (collect's names for the experiment's `experiment.variant` keys,
# or a cell coordinate); loss_terms is derived from the three loss weights (see loss_terms). Anything
# else with variants groups by the variant label.
ABLATION_GROUP = {
    "fig10_similarity": ("similarity",), "fig11_trigger_length": ("trigger_length",),
    "fig12_data_source": ("variant_scan.source",), "table2_data_scale": ("variant_scan.prompts",),
    "table3_loss_ablation": ("loss_terms",),
    "table4_thresholds": ("variant_scan.checks.assim_ratio", "variant_scan.checks.same_ratio",
                          "variant_scan.checks.landscape_ratio"),
    "fig13_multi_trigger": ("trigger_count",), "table5_adaptive": ("adaptive_mu",),
}
LOSS_TERMS = ("assim", "dev", "anchor")  # Table III's terms, in the paper's order; conf/losses sets their weights
PAPER_METRICS = ("P", "R", "F1", "AUROC", "Sim", "ASR", "time")
LOW_SIM = 0.5  # a flagged backdoor below this Sim was flagged without recovering its trigger's feature
TIME_COLUMN = "time_s"  # the detection time of the result.json schema (the scan, in seconds)
# the threshold regimes a scan records a verdict under (collect's verdict_<regime> columns), in report order
REGIMES = {"paper": "paper's fixed thresholds (CLIP-L values)", "calibrated": "calibrated per-encoder profile"}
RECORDED = "recorded"  # results from before per-regime verdicts: each scan's one `verdict`
# the difficulty floor: one-line statistics of a model, and AMDET's score, each scored by its AUROC
FLOOR = {"weight_distance": "weight distance", "output_drift": "output drift", "score": "AMDET score"}
POSITION_THIRDS = ("early", "middle", "late")
ALL = "All"  # the label of a row pooling every model


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One record per (cell, detector): a finished one over a failed one (a retry), then the first by path."""
    order = df.assign(_ok=df["status"].eq("ok")).sort_values(["_ok", "path"], ascending=[False, True])
    return order.drop_duplicates(["cell_id", "detector"]).drop(columns="_ok").sort_values("path").reset_index(drop=True)


def detectors(df: pd.DataFrame) -> list[str]:
    """The detectors with records, AMDET first (the paper's columns are its numbers), then by name."""
    names = sorted(df["detector"].dropna().unique())
    return sorted(names, key=lambda n: (n != AMDET, n))


def per_detector(df: pd.DataFrame, table, *args, **kwargs) -> pd.DataFrame | None:
    """`table` of each detector's records, stacked with a detector column first; None when none has one."""
    parts = []
    for name in detectors(df):
        tab = table(df[df["detector"].eq(name)], *args, **kwargs)
        if tab is not None and len(tab):
            parts.append(tab.assign(detector=name)[["detector", *tab.columns]])
    return pd.concat(parts, ignore_index=True) if parts else None


def one_per_model(df: pd.DataFrame) -> pd.DataFrame:
    """One finished row per model (the model's own statistics, such as attack success, are in every
    detector's record): AMDET's where there is one."""
    done = finished(df)
    order = done.assign(_first=done["detector"].ne(AMDET)).sort_values(["_first", "path"])
    return order.drop_duplicates("cell_id").drop(columns="_first").sort_values("path").reset_index(drop=True)


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Finished scans of models with a known kind: the population every metric is computed over.
    Calibration cells (observing scans that decide nothing) are not part of it."""
    scored = ~df["observe"].fillna(False).astype(bool) if "observe" in df else True
    return df[df["status"].eq("ok") & df["kind"].isin(KINDS) & scored].reset_index(drop=True)


def regimes(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(regime, verdict column) of each threshold regime some finished scan recorded verdicts under;
    [("recorded", "verdict")] for results from before verdicts per regime were recorded."""
    done = finished(df)
    found = [(r, f"verdict_{r}") for r in REGIMES if f"verdict_{r}" in done and done[f"verdict_{r}"].notna().any()]
    return found or [(RECORDED, "verdict")]


def headline(regs: list[tuple[str, str]]) -> str:
    """The regime the report's plain `table1` shows: the calibrated one where recorded, else the paper's."""
    names = [r for r, _ in regs]
    return next((r for r in ("calibrated", "paper") if r in names), names[0])


def decided(df: pd.DataFrame, verdict: str = "verdict", scores_only: bool = False) -> pd.DataFrame:
    """Finished models with a verdict in column `verdict`: a regime that was not used for a scan (no
    calibrated profile) leaves it out, rather than counting it as a benign verdict. With
    `scores_only`, also every record of a detector that gives no verdict at all (a baseline that only
    scores): its rows count for AUROC, and its P/R/F1 stay undefined."""
    done = finished(df)
    if verdict not in done:
        return done.iloc[:0]
    keep = done[verdict].notna()
    if scores_only:
        keep |= done.groupby("detector")[verdict].transform(lambda v: v.isna().all()).astype(bool)
    return done[keep].reset_index(drop=True)


def plain(value):
    """A cell value as a Python scalar, None for any missing value (pd.NA, NaN, None)."""
    return None if pd.isna(value) else value


def sort_key(key: tuple) -> tuple:
    """Known encoders and paradigms in paper order, numbers (also "500" < "4000") by value, nulls last."""
    def one(v):
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = 0.0
        return (v is None, ORDER.get(v, 99) if isinstance(v, str) else 99, number, str(v))
    return tuple(one(v) for v in key)


def group_keys(df: pd.DataFrame, by: list[str]) -> list[tuple]:
    """Distinct coordinates of the groups. Benign models lack attack coordinates (null paradigm, length,
    ...): they join every group of their encoder, and make a group of their own only where there is none."""
    keys = {tuple(plain(v) for v in row) for row in df[by].itertuples(index=False)}
    full = {k for k in keys if None not in k}
    for k in keys - full:
        if not any(all(a is None or a == b for a, b in zip(k, f)) for f in full):
            full.add(k)
    return sorted(full, key=sort_key)


def members(df: pd.DataFrame, by: list[str], key: tuple) -> np.ndarray:
    benign = df["kind"].eq("benign").to_numpy()
    mask = np.ones(len(df), bool)
    for col, value in zip(by, key):
        missing = df[col].isna().to_numpy()
        if value is None:
            mask &= missing
        else:
            mask &= df[col].eq(value).to_numpy(dtype=bool, na_value=False) | (benign & missing)
    return mask


def mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else np.nan


def std(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if len(x) > 1 else np.nan


def column(df: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def metric_table(df: pd.DataFrame, by: list[str], n_boot: int = 1000, seed: int = 0,
                 verdict: str = "verdict") -> tuple[pd.DataFrame, dict]:
    """Metrics per group of the models decided in column `verdict` (a regime's), with bootstrap 95 %
    intervals; also the replicates (n_boot × groups)."""
    df = decided(df, verdict, scores_only=True)
    keys = group_keys(df, by)
    masks = np.array([members(df, by, k) for k in keys], dtype=bool).reshape(len(keys), len(df))
    y = df["kind"].eq("backdoor").to_numpy(dtype=bool)
    pred = df[verdict].eq("backdoor").to_numpy(dtype=bool, na_value=False)
    score, sim, asr, time = (column(df, c) for c in ("score", "sim", "attack_asr", TIME_COLUMN))
    counts = metrics.resample_counts(strata_of(df, by), n_boot, seed)
    reps = metrics.replicates(y, pred, score, masks, counts)
    est = metrics.point(y, pred, score, masks)
    bounds = {name: metrics.interval(reps[name]) for name in metrics.CLASSIFICATION}
    judged = df[verdict].notna().to_numpy(dtype=bool) if len(df) else np.zeros(0, bool)
    none = ~np.array([(m & judged).any() for m in masks], dtype=bool)  # groups of a detector that only scores
    for name in ("P", "R", "F1"):  # have no P/R/F1
        for values in (est[name], bounds[name][0], bounds[name][1], reps[name].T):
            values[none] = np.nan
    rows = []
    for g, key in enumerate(keys):
        m, pos = masks[g], masks[g] & y
        row = {**dict(zip(by, key)), "n_backdoor": int(pos.sum()), "n_benign": int((m & ~y).sum())}
        for name in metrics.CLASSIFICATION:
            row.update({name: est[name][g], f"{name}_lo": bounds[name][0][g], f"{name}_hi": bounds[name][1][g]})
        # Sim and ASR are fractions in result.json; shown in percent like the paper
        row.update(Sim=100 * mean(sim[pos]), ASR=100 * mean(asr[pos]), time=mean(time[m]), time_std=std(time[m]))
        flagged = pos & pred & ~np.isnan(sim)  # flagged for the wrong reason: the feature was not recovered
        row["flagged_low_sim"] = int((sim[flagged] < LOW_SIM).sum()) if flagged.any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "n_backdoor", "n_benign", *stat_columns(), "flagged_low_sim"]), reps


def strata_of(df: pd.DataFrame, by: list[str]) -> np.ndarray:
    """Each model's bootstrap stratum: its kind and group coordinates."""
    return np.array([repr(tuple(plain(v) for v in row)) for row in df[["kind", *by]].itertuples(index=False)])


def stat_columns() -> list[str]:
    ci = [c for name in metrics.CLASSIFICATION for c in (name, f"{name}_lo", f"{name}_hi")]
    return [*ci, "Sim", "ASR", "time", "time_std"]


def table1(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, verdict: str = "verdict") -> pd.DataFrame:
    """Table I under the verdicts of column `verdict` (a regime's), per detector side by side: per
    encoder × paradigm and an Average row; AMDET's rows beside the paper's numbers."""
    return per_detector(df, detector_table1, n_boot, seed, verdict)


def detector_table1(df: pd.DataFrame, n_boot: int, seed: int, verdict: str) -> pd.DataFrame | None:
    df = decided(df, verdict, scores_only=True)
    if df.empty:
        return None
    tab, reps = metric_table(df, ["encoder", "paradigm"], n_boot, seed, verdict)
    family = finished(df).groupby("encoder")["family"].first()
    labels, numbers = zip(*(paper.table1_row(e, family.get(e), p) for e, p in zip(tab["encoder"], tab["paradigm"])))
    ours = df["detector"].eq(AMDET).all()  # the paper's numbers are AMDET's
    tab.insert(2, "paper_row", labels)
    for name in ("P", "R", "F1", "Sim", "time", "time_std"):
        tab[f"{name} (paper)"] = [n.get(name, np.nan) if ours else np.nan for n in numbers]
    avg = average_row(df, tab, reps)
    if not ours:
        avg[[c for c in avg.columns if c.endswith("(paper)")]] = np.nan
    return pd.concat([tab, avg], ignore_index=True)


def score_cut(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame | None:
    """P/R/F1 per encoder × paradigm if the calibrated score cut decided instead of AMDET's checks
    (`score_verdict`: score > cut ⇒ backdoor) — another operating point of the continuous score."""
    df = df[df["detector"].eq(AMDET)]
    if decided(df, "score_verdict").empty:
        return None
    return metric_table(df, ["encoder", "paradigm"], n_boot, seed, "score_verdict")[0]


def average_row(df: pd.DataFrame, tab: pd.DataFrame, reps: dict) -> pd.DataFrame:
    """The paper's Average: the mean of the rows for P/R/F1/Sim (it matches Table I that way), but
    the time over all scans pooled (its 335.88 s is not the mean of the rows)."""
    done = finished(df)
    time = column(done, TIME_COLUMN)
    row = {"encoder": "Average", "paper_row": "Average",
           "n_backdoor": int(done["kind"].eq("backdoor").sum()), "n_benign": int(done["kind"].eq("benign").sum()),
           "Sim": mean(tab["Sim"].to_numpy(float)), "ASR": mean(tab["ASR"].to_numpy(float)),
           "time": mean(time), "time_std": std(time),
           "flagged_low_sim": tab["flagged_low_sim"].sum(min_count=1) if "flagged_low_sim" in tab else np.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows where a metric is undefined throughout
        for name in metrics.CLASSIFICATION:
            lo, hi = metrics.interval(np.nanmean(reps[name], axis=1))
            row.update({name: mean(tab[name].to_numpy(float)), f"{name}_lo": lo, f"{name}_hi": hi})
    avg = paper.load()["table1"]["average"]
    row.update({f"{name} (paper)": avg[name] for name in ("P", "R", "F1", "Sim", "time", "time_std")})
    return pd.DataFrame([row])


def loss_terms(df: pd.DataFrame) -> pd.Series:
    """Table III's rows: the inversion loss terms a cell used ("assim+dev"; weight 0 = off), from the
    weights its experiment records as variants (scan.weights.assim/.dev/.anchor); null without them."""
    cols = [f"variant_scan.weights.{t}" for t in LOSS_TERMS]
    if df.empty or not all(c in df for c in cols):
        return pd.Series(None, index=df.index, dtype=object)
    weights = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    on = np.nan_to_num(weights) != 0
    labels = ["+".join(t for t, used in zip(LOSS_TERMS, row) if used) or "none" for row in on]
    return pd.Series(labels, index=df.index, dtype=object).where(~np.isnan(weights).all(axis=1), None)


def ablation_columns(df: pd.DataFrame, experiment: str) -> list[str] | None:
    """The columns an experiment's rows are keyed by (ABLATION_GROUP), the variant label where they
    were not recorded, None when the experiment varies nothing."""
    cols = list(ABLATION_GROUP.get(experiment, ("variant",)))
    if all(c in df and df[c].notna().any() for c in cols):
        return cols
    return ["variant"] if df["variant"].notna().any() else None


def key_columns(tab: pd.DataFrame) -> list[str]:
    """An ablation table's key columns: those between encoder and the counts."""
    return list(tab.columns[tab.columns.get_loc("encoder") + 1:tab.columns.get_loc("n_backdoor")])


def paper_match(rows: list[dict], tab_row: pd.Series, cols: list[str]) -> dict | None:
    """The paper row whose `value` names this row of ours (paper.matches), None if none does."""
    ours = {c: plain(tab_row[c]) for c in cols}
    return next((r for r in rows if "value" in r and paper.matches(r["value"], ours)), None)


def ablation(df: pd.DataFrame, experiment: str, n_boot: int = 1000, seed: int = 0,
             verdict: str = "verdict") -> pd.DataFrame | None:
    """One ablation experiment's table under the verdicts of column `verdict`, per detector, each AMDET
    row next to the paper row it matches (or the paper's statement for every row, `all`); None when
    the experiment varies nothing or nothing was decided. The paper columns hold the CLIP ablation's
    numbers."""
    return per_detector(df, detector_ablation, experiment, n_boot, seed, verdict)


def detector_ablation(df: pd.DataFrame, experiment: str, n_boot: int, seed: int, verdict: str) -> pd.DataFrame | None:
    df = df[df["experiment"].eq(experiment)]
    df = df.assign(loss_terms=loss_terms(df))
    cols = ablation_columns(df, experiment)
    if cols is None or decided(df, verdict, scores_only=True).empty:
        return None
    tab, _ = metric_table(df, ["encoder", *cols], n_boot, seed, verdict)
    block = paper.ablation(experiment)
    rows = block.get("rows", [])
    shown = [m for m in PAPER_METRICS if any(m in r for r in [*rows, block.get("all", {})])]
    ours = df["detector"].eq(AMDET).all()  # the paper's numbers are AMDET's
    matches = [(paper_match(rows, tab.iloc[i], cols) or block.get("all", {})) if ours else {} for i in range(len(tab))]
    for name in shown:
        tab[f"{name} (paper)"] = [m.get(name) for m in matches]
    return tab


def paper_leftovers(tab: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The experiment's paper rows that no row of `tab` (an ablation table) meets: (rows with a value
    none of ours has — a sweep that ran fewer settings, or a mapping bug —, rows whose setting was
    lost in extraction and so can meet none)."""
    rows, cols = paper.ablation(experiment).get("rows", []), key_columns(tab)
    matched = {id(m) for i in range(len(tab)) if (m := paper_match(rows, tab.iloc[i], cols)) is not None}
    unmatched = [r for r in rows if "value" in r and id(r) not in matched]
    lost = [r for r in rows if "value" not in r]
    # values as text: Table IV's are mappings, the others numbers or names
    return (pd.DataFrame(unmatched).astype({"value": str}) if unmatched else None,
            pd.DataFrame(lost) if lost else None)


def recall_by(df: pd.DataFrame, col: str, verdict: str = "verdict") -> pd.DataFrame:
    """Recall of backdoored models per encoder and one attack coordinate (trigger length, level, ...),
    under the verdicts of column `verdict`."""
    bd = decided(df, verdict)
    bd = bd[bd["kind"].eq("backdoor") & bd[col].notna()]
    out = (bd.assign(detected=bd[verdict].eq("backdoor"))
             .groupby(["encoder", col]).agg(n=("detected", "size"), detected=("detected", "sum")).reset_index())
    out["R"] = 100 * out["detected"] / out["n"]
    order = sorted(range(len(out)), key=lambda i: sort_key((out["encoder"][i], plain(out[col][i]))))
    return out.iloc[order].reset_index(drop=True)


def recall_by_regime(df: pd.DataFrame, col: str, regs: list[tuple[str, str]]) -> pd.DataFrame:
    """recall_by under each regime and detector that decides, stacked, with regime and detector columns first."""
    parts = [tab.assign(regime=regime) for regime, verdict in regs
             if (tab := per_detector(df, recall_by, col, verdict)) is not None]
    if not parts:
        return pd.DataFrame(columns=["regime", "detector", "encoder", col, "n", "detected", "R"])
    out = pd.concat(parts, ignore_index=True)
    return out[["regime", *[c for c in out.columns if c != "regime"]]]


def position_third(relative: pd.Series) -> pd.Series:
    """A model's trigger position (the mean share of its poisoned training prompts' tokens before the
    trigger's first token, 0 = right after BOS) as a third of the prompt: early, middle, late."""
    x = pd.to_numeric(relative, errors="coerce")
    thirds = pd.cut(x, [-np.inf, 1 / 3, 2 / 3, np.inf], right=False, labels=list(POSITION_THIRDS))
    return thirds.astype(object).where(x.notna(), None)


def recall_by_position(df: pd.DataFrame, regs: list[tuple[str, str]]) -> pd.DataFrame | None:
    """Recall of backdoored models by the third of the prompt their trigger sits in, under each regime;
    None when no backdoored model recorded its trigger position."""
    df = df.assign(trigger_position=position_third(df["trigger_position_relative"]))
    done = finished(df)
    if not (done["kind"].eq("backdoor") & done["trigger_position"].notna()).any():
        return None
    return recall_by_regime(df, "trigger_position", regs)


def asr_by_position(df: pd.DataFrame) -> pd.DataFrame | None:
    """Mean attack success (%) of the backdoored models with the trigger inserted at the start, middle
    and end of held-out prompts, per encoder × paradigm and over all, next to their overall ASR and
    mean trigger position; None when no model recorded it."""
    bd = one_per_model(df)
    where = [f"attack_asr_{p}" for p in ("start", "middle", "end")]
    bd = bd[bd["kind"].eq("backdoor") & bd[where].notna().any(axis=1)].reset_index(drop=True)
    if bd.empty:
        return None
    by = ["encoder", "paradigm"]
    groups = [(k, members(bd, by, k)) for k in group_keys(bd, by)] + [((ALL, None), np.ones(len(bd), bool))]
    rows = []
    for key, m in groups:
        row = {**dict(zip(by, key)), "n": int(m.sum())}
        row.update({f"ASR {c.removeprefix('attack_asr_')}": 100 * mean(column(bd, c)[m]) for c in where})
        row.update({"ASR": 100 * mean(column(bd, "attack_asr")[m]),
                    "position (relative)": mean(column(bd, "trigger_position_relative")[m]),
                    "position (token)": mean(column(bd, "trigger_position_token")[m])})
        rows.append(row)
    return pd.DataFrame(rows)


def floor(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame | None:
    """The difficulty floor: AUROC (%) of a model's relative weight distance to its anchor and of its
    output drift on clean prompts — statistics that need no detector — next to AMDET's score, on the
    same models (those with all three), per encoder × paradigm and over all models, with bootstrap
    95 % intervals resampled as Table I's. None when no scan recorded the floor statistics."""
    done = finished(df)
    stats = {k: column(done, k) if k in done else np.full(len(done), np.nan) for k in FLOOR}
    ok = np.logical_and.reduce([np.isfinite(v) for v in stats.values()]) if len(done) else np.zeros(0, bool)
    if not ok.any():
        return None
    done, stats = done[ok].reset_index(drop=True), {k: v[ok] for k, v in stats.items()}
    by = ["encoder", "paradigm"]
    groups = [(k, members(done, by, k)) for k in group_keys(done, by)] + [((ALL, None), np.ones(len(done), bool))]
    y = done["kind"].eq("backdoor").to_numpy(dtype=bool)
    counts = metrics.resample_counts(strata_of(done, by), n_boot, seed)
    rows = []
    for key, m in groups:
        row = {**dict(zip(by, key)), "n_backdoor": int((m & y).sum()), "n_benign": int((m & ~y).sum())}
        for name, s in stats.items():
            lo, hi = metrics.interval(metrics.auroc_replicates(y, s, m, counts))
            row.update({name: metrics.auroc(y[m], s[m]), f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
        rows.append(row)
    return pd.DataFrame(rows)


def floor_line(tab: pd.DataFrame | None) -> str:
    """The difficulty floor in one line (the main job prints it under Table I)."""
    if tab is None or tab.empty:
        return "difficulty floor: not recorded (no scan of this sweep has weight_distance and output_drift)"
    row = tab[tab["encoder"].eq(ALL)].iloc[-1]
    values = ", ".join(f"{label} {'–' if np.isnan(row[k]) else f'{row[k]:.1f}'}" for k, label in FLOOR.items())
    bd, bn = row["n_backdoor"], row["n_benign"]
    return f"difficulty floor: AUROC (%) {values} ({bd + bn} models: {bd} backdoored, {bn} benign)"


def false_positives(df: pd.DataFrame, regs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Benign models flagged as backdoored under any regime (default: each scan's verdict), with their
    verdict under each and where they came from (run, checkpoint step)."""
    regs = regs or [(RECORDED, "verdict")]
    done = finished(df)
    verdicts = [v for _, v in regs]
    flagged = np.logical_or.reduce([done[v].eq("backdoor").to_numpy(dtype=bool, na_value=False) for v in verdicts])
    fp = done[done["kind"].eq("benign").to_numpy(dtype=bool) & flagged]
    shown = [] if verdicts == ["verdict"] else verdicts
    cols = ["detector", "encoder", "benign_run", "benign_step", "score", "landscape_ratio", *shown, "cell_id"]
    return fp.sort_values(["encoder", "score"], ascending=[True, False])[cols].reset_index(drop=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Jobs whose cell never finished (a successful retry of the same cell hides an earlier failure)."""
    return df[df["status"].ne("ok")][["cell_id", "detector", "experiment", "encoder", "reason", "path"]].reset_index(drop=True)
