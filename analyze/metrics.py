"""Detection metrics over groups of models: P/R/F1, AUROC, bootstrap confidence intervals.

Backdoored = positive. A group is a boolean mask over the finished models; groups may share models
(an encoder's benign models are the negatives of every paradigm row). All metrics are in percent.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

CLASSIFICATION = ("P", "R", "F1", "AUROC")


def prf(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 (%). Without negatives precision (and so F1) says nothing: NaN."""
    if not y.any() and not pred.any():
        return np.nan, np.nan, np.nan
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=np.nan)
    if y.all():
        p = f1 = np.nan
    return 100 * float(p), 100 * float(r), 100 * float(f1)


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC (%) of the continuous score; NaN unless both classes are present."""
    ok = np.isfinite(score)
    y, score = y[ok], score[ok]
    if y.all() or not y.any():
        return np.nan
    return 100 * float(roc_auc_score(y, score))


def point(y: np.ndarray, pred: np.ndarray, score: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """P/R/F1/AUROC of each group (masks: groups × models)."""
    values = np.array([[*prf(y[m], pred[m]), auroc(y[m], score[m])] for m in masks]).reshape(len(masks), 4)
    return dict(zip(CLASSIFICATION, values.T))


def resample_counts(strata: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each model is drawn in each of n_boot resamples (n_boot × models).

    Models are resampled within their stratum (kind × group coordinates), so every resample keeps
    the study's design: the same number of backdoored and benign models in every group.
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(strata)))
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    return counts


def replicates(y, pred, score, masks, counts) -> dict[str, np.ndarray]:
    """P/R/F1/AUROC (%) of each group in each resample (n_boot × groups), from drawn counts."""
    masks = masks.astype(float)
    tp = counts @ (masks * (y & pred)).T
    fp = counts @ (masks * (~y & pred)).T
    fn = counts @ (masks * (y & ~pred)).T
    has_neg = (masks @ ~y) > 0  # per group: precision needs negatives
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(has_neg, tp / (tp + fp), np.nan)
        r = tp / (tp + fn)
        f1 = np.where(has_neg, 2 * tp / (2 * tp + fp + fn), np.nan)
    auc = np.array([auroc_replicates(y, score, m.astype(bool), counts) for m in masks]).T
    return {"P": 100 * p, "R": 100 * r, "F1": 100 * f1, "AUROC": auc.reshape(len(counts), len(masks))}


def auroc_replicates(y, score, mask, counts) -> np.ndarray:
    """AUROC (%) per resample as the weighted Mann-Whitney statistic: P(score+ > score-), ties 1/2."""
    ok = mask & np.isfinite(score)
    pos, neg = np.flatnonzero(ok & y), np.flatnonzero(ok & ~y)
    if not len(pos) or not len(neg):
        return np.full(len(counts), np.nan)
    s_pos, s_neg = score[pos][:, None], score[neg][None, :]
    wins = (s_pos > s_neg) + 0.5 * (s_pos == s_neg)
    cp, cn = counts[:, pos], counts[:, neg]
    return 100 * ((cp @ wins) * cn).sum(1) / (cp.sum(1) * cn.sum(1))


def interval(reps: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over resamples (axis 0); NaN where a metric is never defined."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is what we want
        lo, hi = np.nanpercentile(reps, [tail, 100 - tail], axis=0)
    return lo, hi
