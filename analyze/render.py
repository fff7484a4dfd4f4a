"""Formatting: numeric tables to display tables, and display tables to Markdown / CSV / LaTeX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analyze.paper import PARADIGM_LABEL

DASH = "–"  # what an undefined value (no negatives, one class only, nothing measured) shows


def num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return DASH
    if isinstance(value, str):  # the paper's text claims ("> 90") stay as written
        return value
    return f"{value:.{digits}f}"


def with_ci(value, lo, hi) -> str:
    if num(value) == DASH or num(lo) == DASH:
        return num(value)
    return f"{num(value)} [{num(lo)}, {num(hi)}]"


def mean_std(mean, std) -> str:
    return num(mean) if num(std) == DASH else f"{num(mean)} ({num(std)})"


def label(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return DASH
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return PARADIGM_LABEL.get(value, str(value))


def metric_display(tab: pd.DataFrame, keys: dict[str, str]) -> pd.DataFrame:
    """Key columns, n, P/R/F1/AUROC with their 95 % CI, Sim, ASR, time mean (std), then any paper columns."""
    out = pd.DataFrame({title: tab[col].map(label) for col, title in keys.items()})
    out["n (bd / bn)"] = [f"{b} / {n}" for b, n in zip(tab["n_backdoor"], tab["n_benign"])]
    for name in ("P", "R", "F1", "AUROC"):
        out[name] = [with_ci(*v) for v in zip(tab[name], tab[f"{name}_lo"], tab[f"{name}_hi"])]
        if f"{name} (paper)" in tab:
            out[f"{name} (paper)"] = tab[f"{name} (paper)"].map(num)
    for name in ("Sim", "ASR"):
        if tab[name].notna().any() or f"{name} (paper)" in tab:
            out[name] = tab[name].map(num)
        if f"{name} (paper)" in tab:
            out[f"{name} (paper)"] = tab[f"{name} (paper)"].map(num)
        if name == "Sim" and "flagged_low_sim" in tab and tab["flagged_low_sim"].notna().any():
            out["flagged, Sim < 0.5"] = [("–" if pd.isna(v) else str(int(v))) for v in tab["flagged_low_sim"]]
    out["Time s"] = [mean_std(m, s) for m, s in zip(tab["time"], tab["time_std"])]
    if "time (paper)" in tab:
        std = tab["time_std (paper)"] if "time_std (paper)" in tab else [None] * len(tab)
        out["Time s (paper)"] = [mean_std(m, s) for m, s in zip(tab["time (paper)"], std)]
    return out


def ci_display(tab: pd.DataFrame, keys: dict[str, str], stats: dict[str, str]) -> pd.DataFrame:
    """Key columns, n, then each statistic (column → title) with its 95 % CI (columns NAME_lo, NAME_hi)."""
    out = pd.DataFrame({title: tab[col].map(label) for col, title in keys.items()})
    out["n (bd / bn)"] = [f"{b} / {n}" for b, n in zip(tab["n_backdoor"], tab["n_benign"])]
    for col, title in stats.items():
        out[title] = [with_ci(*v) for v in zip(tab[col], tab[f"{col}_lo"], tab[f"{col}_hi"])]
    return out


def plain_display(tab: pd.DataFrame) -> pd.DataFrame:
    """Any other table: numbers to two decimals (counts stay integers), missing values as a dash."""
    out = tab.copy().astype(object)
    for col in tab.columns:
        if pd.api.types.is_float_dtype(tab[col]):
            out[col] = tab[col].map(num)
        else:
            out[col] = tab[col].map(label)
    return out


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (DataFrame.to_markdown needs tabulate, which is not a dependency)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(name: str, numeric: pd.DataFrame, display: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """NAME.csv holds the numbers (machine-readable); NAME.md and NAME.tex the formatted table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    numeric.to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown(display))
    paths["tex"].write_text(display.to_latex(index=False, escape=True))
    return paths
