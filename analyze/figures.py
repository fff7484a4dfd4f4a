"""The report's figures (PNG): ROC per detector and encoder, recall vs trigger length, detection time per
detector, assimilation (Fig. 2)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are made on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from analyze.tables import TIME_COLUMN, detectors, finished, one_per_model, per_detector, recall_by, sort_key  # noqa: E402


def encoders(df: pd.DataFrame) -> list[str]:
    return sorted(df["encoder"].dropna().unique(), key=lambda e: sort_key((e,)))


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def empty(ax, message: str) -> None:
    """A figure is always written, so links in report.md never break; it says why it is empty."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def roc(df: pd.DataFrame, path: Path) -> Path:
    done = finished(df)
    fig, ax = plt.subplots(figsize=(5, 5))
    drawn = 0
    for det in detectors(done):
        for enc in encoders(done):
            rows = done[done["detector"].eq(det) & done["encoder"].eq(enc) & done["score"].notna()]
            y = rows["kind"].eq("backdoor").to_numpy()
            if y.all() or not y.any():
                continue  # ROC needs both backdoored and benign models
            score = rows["score"].to_numpy(float)
            fpr, tpr, _ = roc_curve(y, score)
            ax.plot(fpr, tpr, label=f"{det}, {enc} (AUROC {roc_auc_score(y, score):.3f}, n={len(rows)})")
            drawn += 1
    if not drawn:
        empty(ax, "no encoder has both backdoored and benign models")
        return save(fig, path)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC of each detector's score per encoder")
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def recall_vs_length(df: pd.DataFrame, path: Path) -> Path:
    tab = per_detector(df, recall_by, "trigger_length")
    fig, ax = plt.subplots(figsize=(6, 4))
    if tab is None or tab.empty:
        empty(ax, "no backdoored model with a trigger length and a verdict")
        return save(fig, path)
    for (det, enc), rows in tab.groupby(["detector", "encoder"], sort=False):
        ax.plot(rows["trigger_length"].astype(float), rows["R"], marker="o", label=f"{det}, {enc}")
    ax.set(xlabel="trigger length (tokens)", ylabel="recall (%)", ylim=(0, 105), title="Recall vs trigger length")
    ax.legend(fontsize=8)
    return save(fig, path)


def detection_time(df: pd.DataFrame, path: Path) -> Path:
    done = finished(df)
    groups = [(d, e) for d in detectors(done) for e in encoders(done)
              if done.loc[done["detector"].eq(d) & done["encoder"].eq(e), TIME_COLUMN].notna().any()]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    if not groups:
        empty(ax, "no detection times")
        return save(fig, path)
    times = [done.loc[done["detector"].eq(d) & done["encoder"].eq(e), TIME_COLUMN].dropna().to_numpy(float)
             for d, e in groups]
    ax.boxplot(times, tick_labels=[f"{d}\n{e}" for d, e in groups])
    ax.set_yscale("log")  # a baseline takes milliseconds, AMDET minutes
    ax.set(ylabel="detection time (s)", title="Detection time per detector and encoder (backdoored and benign)")
    return save(fig, path)


def assimilation(df: pd.DataFrame, path: Path) -> Path:
    """Fig. 2: per encoder, per-prompt assimilation of clean vs triggered prompts of backdoored models."""
    done = one_per_model(df)
    bd = done[done["kind"].eq("backdoor") & done["assimilation"].notna()]
    values = {}
    for enc in encoders(bd):
        parsed = [json.loads(s) or {} for s in bd.loc[bd["encoder"].eq(enc), "assimilation"]]
        values[enc] = {part: np.concatenate([np.asarray(p.get(part) or [], float) for p in parsed])
                       for part in ("clean", "triggered")}
    values = {e: v for e, v in values.items() if len(v["clean"]) or len(v["triggered"])}
    fig, axes = plt.subplots(1, max(len(values), 1), figsize=(4 * max(len(values), 1), 3.5), squeeze=False)
    if not values:
        empty(axes[0, 0], "no assimilation values of backdoored models")
        return save(fig, path)
    for ax, (enc, v) in zip(axes[0], values.items()):
        both = np.concatenate([v["clean"], v["triggered"]])
        bins = np.linspace(both.min(), both.max() + 1e-9, 40)
        for part, color in (("clean", "tab:blue"), ("triggered", "tab:red")):
            if len(v[part]):
                ax.hist(v[part], bins=bins, alpha=0.6, color=color, label=f"{part} (n={len(v[part])})")
        ax.set(title=enc, xlabel="assimilation (mean pairwise token cosine)", ylabel="prompts")
        ax.legend(fontsize=8)
    return save(fig, path)


def all_figures(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "roc": roc(df, out_dir / "roc.png"),
        "recall_vs_trigger_length": recall_vs_length(df, out_dir / "recall_vs_trigger_length.png"),
        "detection_time": detection_time(df, out_dir / "detection_time.png"),
        "assimilation": assimilation(df, out_dir / "assimilation.png"),
    }
