"""Tables of a prompt-tuned-CLIP sweep (CLIP-Inspector's study), per detector, beside the paper's numbers.

- detection: models right (x/N), backdoors flagged, false positives, AUROC of the score with a bootstrap
  interval, target-class F1, scan time;
- by attack: per attack (clean models included) the models' clean accuracy and attack success, and each
  detector's flag rate and right-target rate;
- repair: clean accuracy and attack success of the repaired models before and after each arm.

Target-class F1: every (model, class) pair is a decision "class c is this model's backdoor target";
a detector predicts it when it flags the model and names c, the truth holds when the model is
backdoored with target c. F1 over all pairs rewards finding the right class and penalises false alarms.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analyze import paper, render
from analyze.metrics import auroc, interval, replicates, resample_counts

ARMS = ("trigger", "clean", "noise", "other")


def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].eq("ok")]


def is_backdoor(df: pd.DataFrame) -> np.ndarray:
    return df["truth_kind"].eq("backdoor").to_numpy()


def target_f1(df: pd.DataFrame) -> float:
    """F1 (%) of target-class decisions over all (model, class) pairs (see the module docstring)."""
    flagged = df["verdict"].eq("backdoor").to_numpy()
    predicted = pd.to_numeric(df["predicted_target"], errors="coerce").to_numpy()
    truth = pd.to_numeric(df["truth_target_class"], errors="coerce").to_numpy()
    backdoor = is_backdoor(df)
    tp = int(np.sum(flagged & backdoor & (predicted == truth)))
    fp = int(np.sum(flagged)) - tp  # every flag names one class; each wrong one is a false positive
    fn = int(np.sum(backdoor)) - tp
    return 100 * 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else np.nan


def target_trigger_success(g: pd.DataFrame) -> float:
    """Mean attack success (%) of the trigger reconstructed for the true target class of each backdoored
    model (the paper's ablations report this: 'backdoor-class ASR')."""
    values = []
    for _, row in g[g["truth_kind"].eq("backdoor")].iterrows():
        per_class = json.loads(row["per_class"]) if isinstance(row.get("per_class"), str) else {}
        asr = per_class.get("attack_success")
        if asr and pd.notna(row["truth_target_class"]):
            values.append(asr[int(row["truth_target_class"])])
    return 100 * float(np.mean(values)) if values else np.nan


def detection(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per detector (an ablation's variants are detectors of their own, e.g. inspector_ce)."""
    ref = paper.load().get("inspector", {}).get("detection", {})
    rows = []
    for det, g in finished(df).groupby("detector", sort=True):
        y = is_backdoor(g)
        pred = g["verdict"].eq("backdoor").to_numpy()
        score = pd.to_numeric(g["score"], errors="coerce").to_numpy(dtype=float)
        counts = resample_counts(np.where(y, "b", "c"), n_boot, seed)
        reps = replicates(y, pred, score, np.ones((1, len(y)), dtype=bool), counts)
        lo, hi = interval(reps["AUROC"])
        found = g["truth_target_found"].eq(True).to_numpy()
        p = ref.get(det, {})
        rows.append({
            "detector": det, "models": len(g), "backdoored": int(y.sum()), "clean": int((~y).sum()),
            "right": f"{int(np.sum(pred == y))}/{len(g)}", "right_pct": 100 * float(np.mean(pred == y)),
            "flagged_pct": 100 * float(pred[y].mean()) if y.any() else np.nan,
            "false_positive_pct": 100 * float(pred[~y].mean()) if (~y).any() else np.nan,
            "AUROC": auroc(y, score), "AUROC_lo": float(lo[0]), "AUROC_hi": float(hi[0]),
            "target_found_pct": 100 * float(found[y & pred].mean()) if (y & pred).any() else np.nan,
            "target_F1": target_f1(g), "target_trigger_asr": target_trigger_success(g),
            "time_s": float(pd.to_numeric(g["time_s"]).mean()),
            "paper_right": p.get("right"), "paper_AUROC": p.get("AUROC"), "paper_target_F1": p.get("target_F1"),
            "paper_target_trigger_asr": p.get("target_trigger_asr"),
        })
    return pd.DataFrame(rows)


THREATS = {"backdoor": "text encoder", "benign": "text encoder", "prompt_tuned": "prompt-tuned classifier"}


def coverage(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """What each detector sees of each threat model: one row per detector × threat model (the kind of
    model a cell made), with the view it scanned, flags on backdoored and clean models, and the AUROC of
    its score within that threat model."""
    done = finished(df).assign(threat=lambda d: d["kind"].map(THREATS))
    rows = []
    for (det, threat), g in done.groupby(["detector", "threat"], sort=True):
        y = is_backdoor(g)
        pred = g["verdict"].eq("backdoor").to_numpy()
        score = pd.to_numeric(g["score"], errors="coerce").to_numpy(dtype=float)
        counts = resample_counts(np.where(y, "b", "c"), n_boot, seed)
        lo, hi = interval(replicates(y, pred, score, np.ones((1, len(y)), dtype=bool), counts)["AUROC"])
        decided = g["verdict"].notna().any()
        rows.append({"detector": det, "threat_model": threat, "seen_as": ", ".join(sorted(g["seen_as"].dropna().unique())),
                     "backdoored": int(y.sum()), "clean": int((~y).sum()),
                     "flagged_pct": 100 * float(pred[y].mean()) if y.any() and decided else np.nan,
                     "false_positive_pct": 100 * float(pred[~y].mean()) if (~y).any() and decided else np.nan,
                     "AUROC": auroc(y, score), "AUROC_lo": float(lo[0]), "AUROC_hi": float(hi[0]),
                     "score_backdoored": float(np.nanmean(score[y])) if y.any() else np.nan,
                     "score_clean": float(np.nanmean(score[~y])) if (~y).any() else np.nan})
    return pd.DataFrame(rows)


def by_attack(df: pd.DataFrame) -> pd.DataFrame:
    """One row per attack × detector: the models' clean accuracy and attack success, and the flag rate."""
    ref = paper.load().get("inspector", {}).get("attacks", {})
    rows = []
    for (attack, det), g in finished(df).groupby(["attack", "detector"], sort=True):
        pred = g["verdict"].eq("backdoor")
        p = ref.get(attack, {})
        rows.append({
            "attack": attack, "detector": det, "models": len(g),
            "clean_accuracy": 100 * pd.to_numeric(g.get("attack_clean_accuracy"), errors="coerce").mean(),
            "attack_success": 100 * pd.to_numeric(g.get("attack_attack_success"), errors="coerce").mean(),
            "attack_success_ood": 100 * pd.to_numeric(g.get("attack_attack_success_ood"), errors="coerce").mean(),
            "flagged_pct": 100 * float(pred.mean()),
            "target_found_pct": 100 * float(g.loc[pred, "truth_target_found"].eq(True).mean()) if pred.any() else np.nan,
            "paper_clean_accuracy": p.get("accuracy"), "paper_attack_success": p.get("attack_success"),
            "paper_flagged_pct": p.get("flagged"),
        })
    return pd.DataFrame(rows)


def repair(df: pd.DataFrame) -> pd.DataFrame | None:
    """Mean clean accuracy and attack success of the repaired models, before and after each arm."""
    done = finished(df)
    done = done[done["repair"].notna()] if "repair" in done else done.iloc[:0]
    if done.empty:
        return None
    ref = paper.load().get("inspector", {}).get("repair", {})
    rows = []
    for det, g in done.groupby("detector", sort=True):
        results = [json.loads(r) for r in g["repair"]]
        before = np.mean([r["before"]["attack_success"] for r in results])
        for arm in ("before", *ARMS):
            got = [r[arm] for r in results if arm in r]
            if not got:
                continue
            asr = 100 * float(np.mean([v["attack_success"] for v in got]))
            rows.append({"detector": det, "arm": arm, "models": len(got),
                         "accuracy": 100 * float(np.mean([v["accuracy"] for v in got])), "attack_success": asr,
                         "reduction": (100 * before / asr) if arm != "before" and asr > 0 else np.nan,
                         "paper_accuracy": (ref.get(arm) or {}).get("accuracy"),
                         "paper_attack_success": (ref.get(arm) or {}).get("attack_success")})
    return pd.DataFrame(rows)


NOTES = """\
- The tiny vision world (vision/): CoCoOp classifiers of MNIST digits on a two-tower CLIP whose image
  tower was trained here against a 2-layer tiny text tower; the paper's victims are CoCoOp on CLIP
  ViT-B/16 over 10 real datasets. Attacks are adapted to 28 × 28 images (conf/poison/). Paper columns are
  the paper's numbers ([A] abstract, [S] secondary summaries of the full paper, analyze/paper.yaml), for
  orientation, not a like-for-like comparison.
- Backdoored = positive. Right: models whose verdict matches the truth (the paper's 47/50). Target-trigger
  ASR: attack success on the pool of the trigger reconstructed for the true target (the paper's ablations'
  "backdoor-class ASR"); an ablation's settings are detectors of their own (inspector_ce, inspector_pool100, ...). AUROC from
  each detector's score (CLIP-Inspector: its largest anomaly index), 95 % percentile bootstrap interval
  ({n_boot} resamples within backdoored and clean models, seed {seed}). Target found: share of flagged
  backdoors whose named class is the true target. Target-class F1: over all (model, class) pairs.
- inspector_referenced is ours, not the paper's: CLIP-Inspector's own triggers and losses, each class's loss
  scored against clean classifiers the defender tunes on its labelled clean share (z, flagged above a
  Bonferroni-corrected prediction bound at α 0.05; inspector/reference.py) instead of against the other
  classes. It has no paper column; its score is the largest z.
- Repair: each flagged backdoor fine-tuned on the defender's clean images plus copies carrying the
  detector's reconstructed trigger (true labels kept), against clean-only fine-tuning, uniform noise of the
  trigger's size and another class's trigger; attack success measured with the attacker's own trigger.
"""


COVERAGE_NOTES = """\
- Threat models: a backdoored (or benignly fine-tuned) text encoder, AMDET's; a backdoored (or clean)
  prompt-tuned classifier, CLIP-Inspector's. `seen_as` is what a detector scanned: the model itself, or a view
  of it: a prompt-tuned classifier's text tower (which prompt tuning never changes, so a text-encoder detector
  compares the base with itself), or the zero-shot classifier a text encoder makes with the image tower
  ("a photo of a {{class}}."; a text trigger is in no class prompt, so the classifier behaves as a clean one).
- AUROC within each threat model (its backdoored against its clean models), 95 % bootstrap interval
  ({n_boot} resamples, seed {seed}); flags from each detector's own verdict (– for detectors that only score).
"""


def sections(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, name, numeric table) of every table of a prompt-tuned sweep; a sweep that also holds text
    encoders (cross_threat) gets what each detector sees of each threat model first."""
    out = []
    if not finished(df)["paradigm"].eq("prompt_tuning").all():
        out.append(("What each detector sees of each threat model", "coverage", coverage(df, n_boot, seed)))
        df = df[df["paradigm"].eq("prompt_tuning")]
    out += [("CLIP-Inspector study: detection per detector (paper: 50 CoCoOp models on ViT-B/16)", "inspector_detection",
            detection(df, n_boot, seed)),
           ("By attack: the victims and each detector's flags", "inspector_by_attack", by_attack(df))]
    rep = repair(df) if len(df) else None
    if rep is not None:
        out.append(("Repair with the flagged trigger, and its controls (mean over repaired backdoors)",
                    "inspector_repair", rep))
    return out


def text(tables: dict[str, pd.DataFrame]) -> str:
    """What the main job prints of a prompt-tuned sweep: detection and repair, rounded."""
    blocks = []
    for name in ("inspector_detection", "inspector_repair"):
        tab = tables.get(name)
        if tab is not None:
            blocks.append(f"{name}:\n" + render.markdown(render.plain_display(tab)))
    return "\n\n".join(blocks)
