"""The report's tables as numeric DataFrames (percent for P/R/F1/AUROC/Sim/ASR; render.py formats them)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analyze import metrics, paper

KINDS = ("backdoor", "benign")
# paper order (CLIP, LongCLIP, SigLIP), each tiny stand-in after its full-size model
ORDER = {"clip-l": 0, "tiny-clip": 1, "longclip-l": 2, "tiny-longclip": 3, "siglip": 4, "tiny-siglip": 5,
         "text_on_text": 0, "text_on_pair": 1}
# which coordinate each ablation sweep varies; anything else with variants groups by the variant label
ABLATION_GROUP = {
    "fig10_similarity": "similarity", "fig11_trigger_length": "trigger_length",
    "fig12_data_source": "variant_prompts", "table2_data_scale": "variant_scan.prompts",
    "table3_loss_ablation": "variant_scan.weights", "table4_thresholds": "variant",
    "fig13_multi_trigger": "trigger_count", "table5_adaptive": "adaptive_mu",
}
PAPER_METRICS = ("P", "R", "F1", "AUROC", "Sim", "ASR", "time")
TIME_COLUMN = "time_s"  # the detection time of the result.json schema (the scan, in seconds)


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One record per cell: a finished one over a failed one (a retry), then the first by path."""
    order = df.assign(_ok=df["status"].eq("ok")).sort_values(["_ok", "path"], ascending=[False, True])
    return order.drop_duplicates("cell_id").drop(columns="_ok").sort_values("path").reset_index(drop=True)


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Finished scans of models with a known kind: the population every metric is computed over.
    Calibration cells (observing scans that decide nothing) are not part of it."""
    scored = ~df["observe"].fillna(False).astype(bool) if "observe" in df else True
    return df[df["status"].eq("ok") & df["kind"].isin(KINDS) & scored].reset_index(drop=True)


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


def metric_table(df: pd.DataFrame, by: list[str], n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Metrics per group of finished models, with bootstrap 95 % intervals; also the replicates (n_boot × groups)."""
    df = finished(df)
    keys = group_keys(df, by)
    masks = np.array([members(df, by, k) for k in keys], dtype=bool).reshape(len(keys), len(df))
    y = df["kind"].eq("backdoor").to_numpy(dtype=bool)
    pred = df["verdict"].eq("backdoor").to_numpy(dtype=bool, na_value=False)
    score, sim, asr, time = (column(df, c) for c in ("score", "sim", "attack_asr", TIME_COLUMN))
    strata = np.array([repr(tuple(plain(v) for v in row)) for row in df[["kind", *by]].itertuples(index=False)])
    counts = metrics.resample_counts(strata, n_boot, seed)
    reps = metrics.replicates(y, pred, score, masks, counts)
    est = metrics.point(y, pred, score, masks)
    bounds = {name: metrics.interval(reps[name]) for name in metrics.CLASSIFICATION}
    rows = []
    for g, key in enumerate(keys):
        m, pos = masks[g], masks[g] & y
        row = {**dict(zip(by, key)), "n_backdoor": int(pos.sum()), "n_benign": int((m & ~y).sum())}
        for name in metrics.CLASSIFICATION:
            row.update({name: est[name][g], f"{name}_lo": bounds[name][0][g], f"{name}_hi": bounds[name][1][g]})
        # Sim and ASR are fractions in result.json; shown in percent like the paper
        row.update(Sim=100 * mean(sim[pos]), ASR=100 * mean(asr[pos]), time=mean(time[m]), time_std=std(time[m]))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "n_backdoor", "n_benign", *stat_columns()]), reps


def stat_columns() -> list[str]:
    ci = [c for name in metrics.CLASSIFICATION for c in (name, f"{name}_lo", f"{name}_hi")]
    return [*ci, "Sim", "ASR", "time", "time_std"]


def table1(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Table I: per encoder × paradigm, an Average row, and the paper's numbers side by side."""
    tab, reps = metric_table(df, ["encoder", "paradigm"], n_boot, seed)
    family = finished(df).groupby("encoder")["family"].first()
    labels, numbers = zip(*(paper.table1_row(e, family.get(e), p) for e, p in zip(tab["encoder"], tab["paradigm"])))
    tab.insert(2, "paper_row", labels)
    for name in ("P", "R", "F1", "Sim", "time", "time_std"):
        tab[f"{name} (paper)"] = [n.get(name, np.nan) for n in numbers]
    return pd.concat([tab, average_row(df, tab, reps)], ignore_index=True)


def score_cut(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame | None:
    """P/R/F1 per encoder × paradigm if the calibrated score cut decided instead of AMDET's checks
    (`score_verdict`: score > cut ⇒ backdoor) — another operating point of the continuous score."""
    cut = df[df["score_verdict"].notna()] if "score_verdict" in df else df.iloc[:0]
    if finished(cut).empty:
        return None
    return metric_table(cut.assign(verdict=cut["score_verdict"]), ["encoder", "paradigm"], n_boot, seed)[0]


def average_row(df: pd.DataFrame, tab: pd.DataFrame, reps: dict) -> pd.DataFrame:
    """The paper's Average: the mean of the rows for P/R/F1/Sim (it matches Table I that way), but
    the time over all scans pooled (its 335.88 s is not the mean of the rows)."""
    done = finished(df)
    time = column(done, TIME_COLUMN)
    row = {"encoder": "Average", "paper_row": "Average",
           "n_backdoor": int(done["kind"].eq("backdoor").sum()), "n_benign": int(done["kind"].eq("benign").sum()),
           "Sim": mean(tab["Sim"].to_numpy(float)), "ASR": mean(tab["ASR"].to_numpy(float)),
           "time": mean(time), "time_std": std(time)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows where a metric is undefined throughout
        for name in metrics.CLASSIFICATION:
            lo, hi = metrics.interval(np.nanmean(reps[name], axis=1))
            row.update({name: mean(tab[name].to_numpy(float)), f"{name}_lo": lo, f"{name}_hi": hi})
    avg = paper.load()["table1"]["average"]
    row.update({f"{name} (paper)": avg[name] for name in ("P", "R", "F1", "Sim", "time", "time_std")})
    return pd.DataFrame([row])


def ablation_column(df: pd.DataFrame, experiment: str) -> str | None:
    col = ABLATION_GROUP.get(experiment, "variant")
    if col in df and df[col].notna().any():
        return col
    return "variant" if df["variant"].notna().any() else None


def ablation(df: pd.DataFrame, experiment: str, n_boot: int = 1000, seed: int = 0):
    """(table, paper rows that match none of ours) for one ablation experiment; (None, None) when the
    experiment varies nothing. The paper columns hold the CLIP ablation's numbers."""
    df = df[df["experiment"].eq(experiment)]
    col = ablation_column(df, experiment)
    if col is None or finished(df).empty:
        return None, None
    tab, _ = metric_table(df, ["encoder", col], n_boot, seed)
    block = paper.ablation(experiment)
    rows = block.get("rows", [])
    shown = [m for m in PAPER_METRICS if any(m in r for r in [*rows, block.get("all", {})])]
    matches = [next((r for r in rows if "value" in r and paper.same_value(r["value"], v)), block.get("all", {}))
               for v in tab[col]]
    for name in shown:
        tab[f"{name} (paper)"] = [m.get(name) for m in matches]
    matched = {id(m) for m in matches}
    rest = [r for r in rows if id(r) not in matched]
    return tab, (pd.DataFrame(rest) if rest else None)


def recall_by(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Recall of backdoored models per encoder and one attack coordinate (trigger length, level, ...)."""
    bd = finished(df)
    bd = bd[bd["kind"].eq("backdoor") & bd[col].notna()]
    out = (bd.assign(detected=bd["verdict"].eq("backdoor"))
             .groupby(["encoder", col]).agg(n=("detected", "size"), detected=("detected", "sum")).reset_index())
    out["R"] = 100 * out["detected"] / out["n"]
    order = sorted(range(len(out)), key=lambda i: sort_key((out["encoder"][i], plain(out[col][i]))))
    return out.iloc[order].reset_index(drop=True)


def false_positives(df: pd.DataFrame) -> pd.DataFrame:
    """Benign models flagged as backdoored, with where they came from (run, checkpoint step)."""
    done = finished(df)
    fp = done[done["kind"].eq("benign") & done["verdict"].eq("backdoor")]
    cols = ["encoder", "benign_run", "benign_step", "score", "landscape_ratio", "cell_id"]
    return fp.sort_values(["encoder", "score"], ascending=[True, False])[cols].reset_index(drop=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Jobs whose cell never finished (a successful retry of the same cell hides an earlier failure)."""
    return df[df["status"].ne("ok")][["cell_id", "experiment", "encoder", "reason", "path"]].reset_index(drop=True)
