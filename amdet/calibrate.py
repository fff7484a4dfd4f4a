"""Fit the check thresholds and the score cut of one encoder on calibration models.

`python launch.py job=calibrate job.models_dir=DIR` scans every stored model under DIR (its
manifest says backdoor or benign, and which base is its anchor) in *observe* mode: checks at every
cadence point from the first step, no early stop, the landscape at the end. Models this harness did
not make come with a labels file instead: `job.labels=FILE.csv scan.anchor_path=DIR` (columns
`path,label`, label `backdoor` or `benign`, paths relative to the CSV's folder; the CSV is their
ground truth, no manifest needed). Each model then gives one value per statistic (the best it
reached), and each threshold is fitted on those values:

- a statistic that separates the classes gets the midpoint of the gap;
- one that overlaps but still ranks well (AUROC ≥ 0.9) gets the split with the best Youden J;
- one that carries no signal is switched off (a ratio threshold of −1 always passes);
- a ratio check whose cut the test prompts' sampling noise could cross is switched off too: a ratio
  is a count of n test prompts, so a model whose true rate is that of the calibration model nearest
  the cut on its side (the weakest backdoor above it, the strongest benign model below it) lands on
  the wrong side with binomial probability P; when P ≥ `calibration.noise_alpha` (5 %) the
  calibration set cannot support the check (e.g. "different from the anchor" at 5 of 200 prompts
  on the weakest backdoor and 0 on every benign model: P = 12 % to see ≤ 2);
- the landscape filter, which exists to clear benign models that pass every other check (natural
  backdoor features), is fitted on those benign models only, and stays off when fewer than two of
  the calibration models get that far (the paper's ±10 span is ~0.9·|v| on a 128-d encoder, where
  the landscape tells little anyway).

The loss gate (checks start below `loss_start`) is fitted on what it tests: the lowest running loss
a model shows at a check point. When a ratio check is on, the ratio checks are what reject benign
models and the gate only keeps a scan from deciding before v has converged, so it opens just below
the lowest loss any benign calibration model reached (not at the middle of the gap, which would also
shut out backdoors weaker than every calibration backdoor); with every ratio check off, the gate is
the only discriminating test and takes the midpoint rules above. The score cut (score > cut ⇒
backdoor) comes from the scan's continuous score.
The profile lands in `paths.profiles_dir/<family>-h<hidden>.yaml` (or `job.out`) and lists
its calibration models, so a scan refuses to score them with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from scipy.stats import binom
from sklearn.metrics import roc_auc_score, roc_curve

from amdet.checks import CheckThresholds
from amdet.job import scan_to  # the one-model scan, run in observe mode
from amdet.profiles import model_identity, profile_name
from core.errors import first_line
from core.loading import check_model_dir
from core.store import MANIFEST, atomic_write, read_manifest
from evaluation.truth import ground_truth  # calibration is fitted on labelled models: it reads their labels

log = logging.getLogger("amdet")

RATIOS = ("assim_ratio", "same_ratio", "diff_ratio", "landscape_ratio")
OFF = -1.0  # a ratio threshold every model passes
INFORMATIVE_AUROC = 0.9


def model_statistics(result: dict) -> dict:
    """One value per statistic for one observed scan: the best each check reached, the best loss."""
    log_ = result["checks"]
    if not log_:
        raise ValueError("an observed scan logged no checks; lower scan.inversion.check_every")
    stats = {k: max(entry[k] for entry in log_) for k in RATIOS if k != "landscape_ratio"}
    stats["prompts"] = max(entry.get("checked", 0) for entry in log_)  # the ratios' denominator (same: one fewer)
    stats["landscape_ratio"] = result["landscape_ratio"]
    stats["best_running_loss"] = result["best_running_loss"]
    stats["gate_loss"] = min(entry["running_loss"] for entry in log_)  # what the loss gate compares, at check points
    stats["score"] = result["score"]
    return stats


def split(pos: list[float], neg: list[float]) -> tuple[float | None, str, float]:
    """A cut c with 'value > c ⇒ backdoor' for values higher on backdoored models, its rule and AUROC."""
    labels = [1] * len(pos) + [0] * len(neg)
    values = np.asarray(pos + neg, dtype=float)
    auroc = float(roc_auc_score(labels, values))
    if min(pos) > max(neg):
        return float(min(pos) + max(neg)) / 2, "separates", auroc
    if auroc >= INFORMATIVE_AUROC:
        fpr, tpr, cuts = roc_curve(labels, values)
        best = int(np.argmax(tpr - fpr))
        # roc_curve's cuts are observed values with 'value >= cut'; step just below for 'value > c'
        below = values[values < cuts[best]]
        return float(cuts[best] + (below.max() if below.size else cuts[best] - 1)) / 2, "best Youden split", auroc
    return None, "no signal", auroc


def wrong_side(cut: float, n: int, pos: list[float], neg: list[float]) -> float:
    """The binomial probability that a ratio over n prompts falls on the wrong side of `cut` ('> cut ⇒
    backdoor') for a model whose true rate is that of the calibration model nearest the cut on its
    side: the weakest backdoor above it, the strongest benign model at or below it."""
    k = math.floor(cut * n + 1e-9)  # ratio > cut ⇔ count > k
    above, below = [p for p in pos if p > cut], [q for q in neg if q <= cut]
    missed = float(binom.cdf(k, n, min(above))) if above else 1.0
    flagged = float(binom.sf(k, n, max(below))) if below else 1.0
    return max(missed, flagged)


def fit(backdoor: list[dict], benign: list[dict], base: CheckThresholds, min_models: int = 2,
        noise_alpha: float = 0.05) -> tuple[CheckThresholds, float, dict]:
    """Thresholds, score cut and a report of every statistic's class ranges from per-model statistics;
    at least `min_models` of each class, since a check may be switched off on this evidence alone.
    A ratio check is switched off when prompt sampling alone would put a model like the calibration
    models nearest its cut on the wrong side with probability ≥ `noise_alpha`."""
    if len(backdoor) < max(2, min_models) or len(benign) < max(2, min_models):
        raise ValueError(f"calibration needs at least {max(2, min_models)} backdoored and {max(2, min_models)} benign models, "
                         f"got {len(backdoor)} and {len(benign)}; add calibration models (e.g. experiment.calibration_seeds) "
                         "or lower calibration.min_models")
    fitted, report = {}, {}
    prompts = min(s["prompts"] for s in backdoor + benign)
    for key in RATIOS[:3]:
        pos, neg = [s[key] for s in backdoor], [s[key] for s in benign]
        cut, rule, auroc = split(pos, neg)
        noise = None if cut is None else wrong_side(cut, prompts - (key == "same_ratio"), pos, neg)
        if noise is not None and noise >= noise_alpha:
            cut, rule = None, f"{rule}, off: within sampling noise (P wrong side {noise:.2f} ≥ {noise_alpha})"
        fitted[key] = OFF if cut is None else round(cut, 6)
        report[key] = {"backdoor": [min(pos), max(pos)], "benign": [min(neg), max(neg)], "auroc": auroc,
                       "rule": rule, "threshold": fitted[key], "p_wrong_side": noise}
    # the loss gate: lower loss = more backdoor-like, so fit on −loss
    pos = [-s["gate_loss"] for s in backdoor]
    neg = [-s["gate_loss"] for s in benign]
    cut, rule, auroc = split(pos, neg)
    if any(fitted[k] != OFF for k in RATIOS[:3]):  # a ratio check decides: the gate waits for convergence only
        cut, rule = max(neg), f"{rule}; opens below every benign model (a ratio check decides)"
    elif cut is None:  # no signal in the loss: let every backdoored model reach the checks
        cut = min(pos) - 0.01
    loss_start = -cut
    # the epoch ends once the running loss is as low as a typical backdoored model's best; the checks
    # of that step run first, and loss_stop must stay below loss_start or they never would
    loss_stop = min(-statistics.median(pos), loss_start - 0.01)
    report["gate_loss"] = {"backdoor": [-max(pos), -min(pos)], "benign": [-max(neg), -min(neg)],
                           "auroc": auroc, "rule": rule, "loss_start": loss_start, "loss_stop": loss_stop}
    # the score cut: score > cut ⇒ backdoor, for a verdict (and an operating point) from the score alone
    pos, neg = [s["score"] for s in backdoor], [s["score"] for s in benign]
    cut, rule, auroc = split(pos, neg)
    score_cut = round(cut if cut is not None else (min(pos) + max(neg)) / 2, 6)
    report["score"] = {"backdoor": [min(pos), max(pos)], "benign": [min(neg), max(neg)], "auroc": auroc,
                       "rule": rule, "threshold": score_cut}
    # the landscape filter exists to clear benign models that pass every other check (natural
    # backdoor features): it is fitted on those alone, and stays off when no benign model gets there
    passing = [s for s in benign if s["gate_loss"] < loss_start
               and all(s[k] > fitted[k] for k in RATIOS[:3])]
    pos = [s["landscape_ratio"] for s in backdoor]
    neg = [s["landscape_ratio"] for s in passing]
    if len(neg) < 2:
        cut, rule, auroc = None, f"off: {len(neg)} benign model(s) pass the other checks", float("nan")
    else:
        cut, rule, auroc = split(pos, neg)
    fitted["landscape_ratio"] = OFF if cut is None else round(cut, 6)
    report["landscape_ratio"] = {"backdoor": [min(pos), max(pos)],
                                 "benign": [min(neg), max(neg)] if neg else [float("nan")] * 2,
                                 "auroc": auroc, "rule": rule, "threshold": fitted["landscape_ratio"]}
    thresholds = dataclasses.replace(base, assim_ratio=fitted["assim_ratio"], same_ratio=fitted["same_ratio"],
                                     diff_ratio=fitted["diff_ratio"], landscape_ratio=fitted["landscape_ratio"],
                                     loss_start=round(loss_start, 6), loss_stop=round(loss_stop, 6))
    return thresholds, score_cut, report


LABELS = ("backdoor", "benign")


def labelled_models(csv: str | Path) -> list[tuple[Path, dict]]:
    """(model dir, truth) of each row of a labels CSV (`path,label`; paths relative to its folder)."""
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise FileNotFoundError(f"job.labels: no file {csv}; give a CSV with columns path,label")
    try:
        table = pd.read_csv(csv, dtype=str, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 — pandas' parser errors have several types
        raise ValueError(f"job.labels: {csv} is not a readable CSV ({first_line(exc)})") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"job.labels: {csv} lacks the column(s) {', '.join(missing)}; its header must be path,label")
    models = []
    for row, (path, label) in enumerate(zip(table["path"], table["label"]), start=2):  # line 1 is the header
        label = str(label).strip().lower()
        if label not in LABELS:
            raise ValueError(f"job.labels: {csv} line {row}: label '{label}' is neither backdoor nor benign")
        directory = (csv.parent / str(path).strip()).resolve()
        check_model_dir(directory)
        models.append((directory, {"kind": label, "source": f"labels: {csv}"}))
    return models


def calibration_models(c: DictConfig) -> list[Path]:
    """Stored models (a manifest of kind backdoor or benign) from job.models and job.models_dir."""
    found = [Path(p) for p in (c.models or [])]
    if c.models_dir:
        root = Path(c.models_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"job.models_dir not found: {root}")
        found += sorted(p.parent for p in root.rglob(MANIFEST))
    models = []
    for path in found:
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"calibration model {path} has no {MANIFEST}: calibration needs stored models whose kind is known")
        if read_manifest(path).get("kind") in ("backdoor", "benign"):
            models.append(path)
    if not models and not c.get("labels"):
        raise ValueError("no calibration models: give job.models_dir=DIR (a model store), job.models=[DIR,...] "
                         "or job.labels=FILE.csv (path,label)")
    return models


def run(cfg: DictConfig) -> dict:
    return calibrate_to(Path(HydraConfig.get().runtime.output_dir), cfg)


def calibrate_to(out: Path, cfg: DictConfig) -> dict:
    """Scan each calibration model in observe mode (its result in out/scans/), fit, write the profile."""
    stored = [(path, ground_truth(path)) for path in calibration_models(cfg.job)]
    labelled = labelled_models(cfg.job.labels) if cfg.job.get("labels") else []
    if labelled and not cfg.scan.anchor_path:
        raise ValueError("job.labels: set scan.anchor_path=DIR, the clean base the labelled models were fine-tuned from")
    results = []
    for i, (path, truth) in enumerate(stored + labelled):
        manifest = read_manifest(path) if (path / MANIFEST).is_file() else {}
        anchor = cfg.scan.anchor_path or manifest.get("base")
        scan_cfg = OmegaConf.merge(cfg, {"scan": {"model_path": str(path), "anchor_path": anchor, "thresholds": None}})
        target = out / "scans" / f"{i:03d}-{truth['kind']}-{'seed' + str(manifest.get('seed')) if manifest else path.name}"
        done = json.loads((target / "result.json").read_text()) if (target / "result.json").is_file() else {}
        if done.get("status") == "ok" and done.get("model_path") == str(path):  # a rerun reuses finished scans
            results.append(done)
        else:
            results.append(scan_to(target, scan_cfg, observe=True))
        results[-1]["truth"] = truth
    profile = fit_profile(results, cfg)
    target = Path(cfg.job.out) if cfg.job.out else Path(cfg.paths.profiles_dir) / f"{profile['profile']}.yaml"
    return {**profile, "path": str(write_profile(target, profile))}


def fit_profile(results: list[dict], cfg: DictConfig) -> dict:
    """A profile from observed scans of one encoder's calibration models (their truth says the kind)."""
    groups = {"backdoor": [], "benign": []}
    encoders = {(r["model"]["family"], r["model"]["hidden_size"]) for r in results}
    if len(encoders) != 1:
        raise ValueError(f"calibration results mix encoders ({sorted(encoders)}); calibrate one encoder at a time")
    (family, hidden), = encoders
    for r in results:
        if r.get("thresholds_source") != "calibration: observe mode" or not r.get("truth"):
            raise ValueError(f"{r.get('model_path')}: not an observed scan of a stored model; calibrate from cell.observe=true cells")
        groups[r["truth"]["kind"]].append(model_statistics(r))
    base = CheckThresholds(**OmegaConf.to_container(cfg.scan.checks, resolve=True))
    thresholds, score_cut, report = fit(groups["backdoor"], groups["benign"], base, int(cfg.calibration.min_models),
                                        float(cfg.calibration.noise_alpha))
    paradigms = sorted({r["truth"].get("paradigm") for r in results if r["truth"]["kind"] == "backdoor"} - {None})
    name = profile_name(family, hidden)
    print(f"calibrated {name} on {len(groups['backdoor'])} backdoored + {len(groups['benign'])} benign models")
    for key, r in report.items():
        print(f"  {key:18s} backdoor {fmt(r['backdoor'])}  benign {fmt(r['benign'])}  AUROC {r['auroc']:.2f}  {r['rule']}")
    return {
        "profile": name,
        "family": family,
        "hidden_size": hidden,
        "checks": dataclasses.asdict(thresholds),
        "score_cut": score_cut,
        "calibration": {
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
            "models": [(r.get("model_identity") or model_identity(r["model_path"]))
                       | {"kind": r["truth"]["kind"], "config_hash": r["truth"].get("config_hash")} for r in results],
            "counts": {k: len(v) for k, v in groups.items()},
            "paradigms": paradigms,  # a defender does not know the attack: calibrate on every paradigm
            "fit": report,
            "scan": {k: v for k, v in OmegaConf.to_container(cfg.scan, resolve=True).items()
                     if k not in ("model_path", "anchor_path", "thresholds")},
        },
    }


def fmt(r: list[float]) -> str:
    return f"[{r[0]:.3f}, {r[1]:.3f}]"


def write_profile(path: Path, data: dict) -> Path:
    header = f"# Threshold profile written by job=calibrate ({len(data['calibration']['models'])} models); see amdet/profiles.py\n"
    with atomic_write(path) as tmp:
        tmp.write_text(header + OmegaConf.to_yaml(OmegaConf.create(data)))
    print(f"profile → {path}")
    return path

