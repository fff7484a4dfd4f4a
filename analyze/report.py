"""The sweep report: every table (Markdown, CSV, LaTeX), the figures, and report.md tying them together."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analyze import figures, inspector, render, tables
from analyze.collect import load_results, summary

METHOD_NOTES = """\
- One block of rows per detector (`cell.detectors`): AMDET, and the baselines registered beside it
  (weight distance, output drift: statistics that only score, so P/R/F1 are undefined (–) and their
  AUROC is what they reach). The paper columns are AMDET's numbers and stand beside AMDET's rows only.
- Backdoored = positive. An encoder's benign models are the negatives of every paradigm row of that encoder
  (and of every group of an attack coordinate in the ablations), so precision counts their false positives.
- Brackets: 95 % percentile bootstrap intervals over models ({n_boot} resamples, seed {seed}), resampled within
  each kind × row so every resample keeps the row's numbers of backdoored and benign models.
- Two threshold regimes. Every scan decides under the paper's fixed thresholds (`scan.checks`: the values
  the paper tuned on CLIP-L, for other encoders a transfer, not a tuning) and, where the experiment
  calibrated one, under the per-encoder profile fitted on its calibration seeds (`job=calibrate`). Table I
  and every ablation are shown under each regime that recorded verdicts, titled by it; a regime no scan
  recorded is named and omitted. The plain `table1` and `verdict` are the calibrated regime's where there
  is one, else the paper's. Results from before per-regime verdicts show each scan's one verdict.
- AUROC from the continuous `score`, budget-fixed: measured at a fixed number of inversion steps
  (`score_steps`), whatever the thresholds and wherever the scan stopped, so it ranks models the same
  under both regimes; higher = more backdoor-like. Undefined (–) when a row has one class only. Precision
  and F1 are undefined (–) without benign models.
- Difficulty floor: AUROC of two statistics that need no detector, the relative weight distance
  ‖θ − θ0‖/‖θ0‖ to the anchor and the output drift 1 − mean cos(f(x), f0(x)) on clean prompts, next to
  AMDET's score on the same models (those that recorded all three). A floor near AMDET's AUROC means
  backdoored and benign models differ in a way anything finds, and the benchmark says little about the
  detector; an AUROC far below 50 separates them as well, the other way round.
- Sim and ASR are read as fractions from result.json and shown in percent; Sim averages backdoored models.
  "flagged, Sim < 0.5": flagged backdoors whose reversed feature is not their trigger's (flagged
  without recovering the feature: detection for another reason than the one the method claims).
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
    if df["paradigm"].eq("prompt_tuning").any():  # prompt-tuned classifiers (and text encoders across threat models)
        return prompt_tuned_report(root, raw, df, out, n_boot, seed)
    regs = tables.regimes(df)
    head = tables.headline(regs)
    # (title, name, numeric, display); a section that was not recorded has no table: (title, None, None, note)
    sections: list[tuple[str, str | None, pd.DataFrame | None, pd.DataFrame | str]] = []

    for regime, verdict in regs:
        t1 = tables.table1(df, n_boot, seed, verdict)
        sections.append((f"{regime_title('Table I', regime)}: detection per encoder × paradigm",
                         regime_name("table1", regime), t1, table1_display(t1)))
    sections += [(regime_title("Table I", r), None, None, not_recorded(r)) for r in missing_regimes(regs)]
    floor = tables.floor(df, n_boot, seed)
    sections.append(("Difficulty floor: AUROC of one-line statistics vs AMDET's score, on the same models", "floor",
                     floor, render.ci_display(floor, {"encoder": "Encoder", "paradigm": "Paradigm"},
                                              {k: f"AUROC {v}" for k, v in tables.FLOOR.items()})
                     if floor is not None else f"_{tables.floor_line(None)}._"))
    cut = tables.score_cut(df, n_boot, seed)
    if cut is not None:
        sections.append(("The calibrated score cut as the decision (score > cut ⇒ backdoor; not AMDET's verdict)",
                         "score_cut", cut, render.metric_display(cut, {"encoder": "Encoder", "paradigm": "Paradigm"})))
    aliases = {"table1": regime_name("table1", head)}
    for exp in sorted(df["experiment"].dropna().unique()):
        shown = {}
        for regime, verdict in regs:
            tab = tables.ablation(df, exp, n_boot, seed, verdict)
            if tab is None:
                continue
            keys = {c: c.removeprefix("variant_") for c in tables.key_columns(tab)}
            shown[regime] = tab
            title = f"{regime_title(f'Ablation {exp}', regime)}, by {' × '.join(keys.values())} (paper: CLIP)"
            sections.append((title, regime_name(f"ablation_{exp}", regime), tab,
                             render.metric_display(tab, {"detector": "Detector", "encoder": "Encoder", **keys})))
        if not shown:
            continue
        aliases[f"ablation_{exp}"] = regime_name(f"ablation_{exp}", head if head in shown else next(iter(shown)))
        unmatched, lost = tables.paper_leftovers(pd.concat(shown.values(), ignore_index=True), exp)
        if unmatched is not None:
            sections.append((f"{exp}: paper rows with no matching sweep value", f"paper_unmatched_{exp}", unmatched,
                             render.plain_display(unmatched)))
        if lost is not None:
            sections.append((f"{exp}: paper rows whose setting was lost in extraction (matched to none of ours)",
                             f"paper_{exp}", lost, render.plain_display(lost)))
    for col in ("trigger_length", "trigger_level"):
        tab = tables.recall_by_regime(df, col, regs)
        sections.append((f"Recall by {col}", f"recall_by_{col}", tab, render.plain_display(tab)))
    pos = tables.recall_by_position(df, regs)
    sections.append(("Recall by trigger position (each backdoored model's mean relative trigger position in its "
                     "poisoned training prompts, in thirds)", "recall_by_trigger_position", pos,
                     render.plain_display(pos) if pos is not None else
                     "_Trigger positions not recorded (no backdoored model's manifest has trigger_position)._"))
    asr = tables.asr_by_position(df)
    sections.append(("Attack success (%) by where the trigger is inserted in held-out prompts", "asr_by_position", asr,
                     render.plain_display(asr) if asr is not None else
                     "_Attack success by position not recorded (no backdoored model's manifest has asr_by_position)._"))
    fp, failed = tables.false_positives(df, regs), tables.failures(df)
    sections.append(("False positives (benign models flagged under any regime), by benign source", "false_positives",
                     fp, render.plain_display(fp)))
    sections.append(("Failed jobs", "failures", failed, render.plain_display(failed)))

    for _, name, numeric, display in sections:
        if numeric is not None:
            render.write_table(name, numeric, display, out / "tables")
    figs = figures.all_figures(df, out / "figures")
    (out / "report.md").write_text(markdown_report(root, raw, df, sections, figs, out, n_boot, seed))
    result = {name: numeric for _, name, numeric, _ in sections if numeric is not None}
    # the headline regime's tables under their plain names too, which other code reads (table1, ...)
    return {**result, **{alias: result[name] for alias, name in aliases.items() if alias != name}}


def prompt_tuned_report(root: Path, raw: pd.DataFrame, df: pd.DataFrame, out: Path, n_boot: int,
                        seed: int) -> dict[str, pd.DataFrame]:
    """The report of a sweep of prompt-tuned classifiers: analyze/inspector.py's tables and the detectors'
    trigger pictures."""
    found = inspector.sections(df, n_boot, seed)
    lines = [f"# Prompt-tuned CLIP detection report: {root}", "", f"- Records: {summary(raw)}", ""]
    for title, name, numeric in found:
        display = render.plain_display(numeric)
        render.write_table(name, numeric, display, out / "tables")
        lines += [f"## {title}", "", render.markdown(display),
                  f"Files: [csv](tables/{name}.csv), [md](tables/{name}.md), [tex](tables/{name}.tex)", ""]
    failed = tables.failures(df)
    lines += ["## Failed jobs", "", render.markdown(render.plain_display(failed)) if len(failed) else "_none_", ""]
    lines += ["## Notes", "", inspector.NOTES.format(n_boot=n_boot, seed=seed)]
    if any(name == "coverage" for _, name, _ in found):
        lines += [inspector.COVERAGE_NOTES.format(n_boot=n_boot, seed=seed)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {name: numeric for _, name, numeric in found}


def regime_name(name: str, regime: str) -> str:
    """A regime's table name: table1_paper, table1_calibrated; the plain name for unrecorded regimes."""
    return name if regime == tables.RECORDED else f"{name}_{regime}"


def regime_title(what: str, regime: str) -> str:
    label = tables.REGIMES.get(regime, "each scan's verdict (threshold regime not recorded)")
    return f"{what} — {label}"


def missing_regimes(regs: list[tuple[str, str]]) -> list[str]:
    """The regimes no scan recorded verdicts under, when some other regime was (old results: none)."""
    names = [r for r, _ in regs]
    return [] if names == [tables.RECORDED] else [r for r in tables.REGIMES if r not in names]


def not_recorded(regime: str) -> str:
    why = " (no scan of this sweep used a calibrated profile)" if regime == "calibrated" else ""
    return f"_Not recorded{why}: no verdict under the {tables.REGIMES[regime]}; its tables are omitted._"


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    return render.metric_display(t1, {"detector": "Detector", "encoder": "Encoder", "paradigm": "Paradigm",
                                      "paper_row": "Paper row"})


def table1_markdown(t1: pd.DataFrame) -> str:
    """Table I as Markdown, for printing (report() returns the numeric table)."""
    return render.markdown(table1_display(t1))


def table1_text(report_tables: dict[str, pd.DataFrame], suffix: str = "") -> str:
    """What the main job and `python -m analyze report` print: Table I under each recorded threshold
    regime, titled (a line for a regime that was not recorded), then the difficulty-floor line."""
    recorded = [r for r in tables.REGIMES if regime_name("table1", r) in report_tables]
    blocks = []
    for regime in recorded or [tables.RECORDED]:
        t1 = report_tables.get(regime_name("table1", regime))
        if t1 is not None:
            blocks.append(f"{regime_title('Table I', regime)}{suffix}:\n{table1_markdown(t1)}")
    if recorded:
        blocks += [f"{regime_title('Table I', r)}: not recorded.\n" for r in tables.REGIMES if r not in recorded]
    blocks.append(tables.floor_line(report_tables.get("floor")))
    return "\n".join(blocks)


def markdown_report(root, raw, df, sections, figs, out, n_boot, seed) -> str:
    ok = df[df["status"].eq("ok")]
    def values(col: str) -> str:
        return ", ".join(f"`{v}`" for v in sorted(ok[col].dropna().astype(str).unique())) or "–"
    dirty = " (some with uncommitted changes)" if ok["git_dirty"].eq(True).any() else ""
    lines = [
        f"# AMDET benchmark report: {root}", "",
        f"- Records: {summary(raw)}; {len(raw) - len(df)} duplicate records of a cell ignored.",
        f"- Experiments: {values('experiment')}",
        f"- Code: {values('git_commit')}{dirty}; hosts: {values('hostname')}; CPUs: {values('cpu_model')} "
        f"(torch kernels {values('cpu_kernels')}); GPUs: {values('gpu')}",
        f"- Thresholds: {values('thresholds_source')}; paper regime: {values('thresholds_source_paper')}; "
        f"calibrated regime: {values('thresholds_source_calibrated')}",
        f"- Score measured at (inversion steps): {values('score_steps')}", "",
    ]
    notes_at = next((name for _, name, _, _ in sections if name and name.startswith("table1")), None)
    for title, name, numeric, display in sections:
        lines += [f"## {title}", ""]
        if numeric is None:  # not recorded: the note says why
            lines += [display, ""]
            continue
        lines += [render.markdown(display) if len(display) else "_none_\n"]
        lines += [f"Files: [csv](tables/{name}.csv), [md](tables/{name}.md), [tex](tables/{name}.tex)", ""]
        if name == notes_at:
            lines += [METHOD_NOTES.format(n_boot=n_boot, seed=seed)]
            if ok["variant"].notna().any() or ok["experiment"].nunique() > 1:
                lines += ["- Table I pools every experiment and variant of this sweep; see the ablation tables.", ""]
    lines += ["## Figures", ""]
    lines += [f"![{key}]({Path(path).relative_to(out).as_posix()})" for key, path in figs.items()]
    return "\n".join(lines) + "\n"
