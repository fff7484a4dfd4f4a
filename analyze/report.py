"""The sweep report: every table (Markdown, CSV, LaTeX), the figures, and report.md tying them together."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analyze import figures, render, tables
from analyze.collect import load_results, summary

METHOD_NOTES = """\
- Backdoored = positive. An encoder's benign models are the negatives of every paradigm row of that encoder
  (and of every group of an attack coordinate in the ablations), so precision counts their false positives.
- Brackets: 95 % percentile bootstrap intervals over models ({n_boot} resamples, seed {seed}), resampled within
  each kind × row so every resample keeps the row's numbers of backdoored and benign models.
- AUROC from the continuous `score`; undefined (–) when a row has one class only. Precision and F1 are
  undefined (–) without benign models.
- Sim and ASR are read as fractions from result.json and shown in percent; Sim averages backdoored models.
- Average row as in the paper: mean of the rows for P/R/F1/AUROC/Sim (its interval from the same
  resamples), detection time pooled over all scans.
- Paper columns: the AMDET paper's Table I (RTX 4090). A row marked "(family)" is a tiny encoder set
  against the paper's full-size encoder of its family: same architecture family, not the same model.
"""


class NoResults(RuntimeError):
    """The sweep has no finished scan to report on."""


def report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
           n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Write the report of a sweep under out_dir (default SWEEP_DIR/report); return its tables (numeric)."""
    root = Path(sweep_dir)
    out = Path(out_dir) if out_dir else root / "report"
    raw = load_results(root)
    if raw.empty or tables.finished(raw).empty:
        raise NoResults(f"no finished results under {root}")
    df = tables.dedupe(raw)
    sections: list[tuple[str, str, pd.DataFrame, pd.DataFrame]] = []  # (title, name, numeric, display)

    t1 = tables.table1(df, n_boot, seed)
    sections.append(("Table I: detection per encoder × paradigm", "table1", t1, table1_display(t1)))
    cut = tables.score_cut(df, n_boot, seed)
    if cut is not None:
        sections.append(("The calibrated score cut as the decision (score > cut ⇒ backdoor; not AMDET's verdict)",
                         "score_cut", cut, render.metric_display(cut, {"encoder": "Encoder", "paradigm": "Paradigm"})))
    for exp in sorted(df["experiment"].dropna().unique()):
        tab, rest = tables.ablation(df, exp, n_boot, seed)
        if tab is None:
            continue
        col = tab.columns[1]
        title = col.removeprefix("variant_")
        sections.append((f"Ablation {exp}, by {title} (paper: CLIP)", f"ablation_{exp}", tab,
                         render.metric_display(tab, {"encoder": "Encoder", col: title})))
        if rest is not None:
            sections.append((f"{exp}: paper rows with no matching sweep value", f"paper_{exp}", rest,
                             render.plain_display(rest)))
    for col in ("trigger_length", "trigger_level"):
        tab = tables.recall_by(df, col)
        sections.append((f"Recall by {col}", f"recall_by_{col}", tab, render.plain_display(tab)))
    fp, failed = tables.false_positives(df), tables.failures(df)
    sections.append(("False positives (benign models flagged), by benign source", "false_positives", fp,
                     render.plain_display(fp)))
    sections.append(("Failed jobs", "failures", failed, render.plain_display(failed)))

    for _, name, numeric, display in sections:
        render.write_table(name, numeric, display, out / "tables")
    figs = figures.all_figures(df, out / "figures")
    (out / "report.md").write_text(markdown_report(root, raw, df, sections, figs, out, n_boot, seed))
    return {name: numeric for _, name, numeric, _ in sections}


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    return render.metric_display(t1, {"encoder": "Encoder", "paradigm": "Paradigm", "paper_row": "Paper row"})


def table1_markdown(t1: pd.DataFrame) -> str:
    """Table I as Markdown, for printing (report() returns the numeric table)."""
    return render.markdown(table1_display(t1))


def markdown_report(root, raw, df, sections, figs, out, n_boot, seed) -> str:
    ok = df[df["status"].eq("ok")]
    def values(col: str) -> str:
        return ", ".join(f"`{v}`" for v in sorted(ok[col].dropna().astype(str).unique())) or "–"
    dirty = " (some with uncommitted changes)" if ok["git_dirty"].eq(True).any() else ""
    lines = [
        f"# AMDET benchmark report: {root}", "",
        f"- Records: {summary(raw)}; {len(raw) - len(df)} duplicate records of a cell ignored.",
        f"- Experiments: {values('experiment')}",
        f"- Code: {values('git_commit')}{dirty}; hosts: {values('hostname')}; GPUs: {values('gpu')}",
        f"- Thresholds: {values('thresholds_source')}", "",
    ]
    for title, name, numeric, display in sections:
        lines += [f"## {title}", ""]
        lines += [render.markdown(display) if len(display) else "_none_\n"]
        lines += [f"Files: [csv](tables/{name}.csv), [md](tables/{name}.md), [tex](tables/{name}.tex)", ""]
        if name == "table1":
            lines += [METHOD_NOTES.format(n_boot=n_boot, seed=seed)]
            if ok["variant"].notna().any() or ok["experiment"].nunique() > 1:
                lines += ["- Table I pools every experiment and variant of this sweep; see the ablation tables.", ""]
    lines += ["## Figures", ""]
    lines += [f"![{key}]({Path(path).relative_to(out).as_posix()})" for key, path in figs.items()]
    return "\n".join(lines) + "\n"
