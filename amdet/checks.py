"""The stop checks, evaluated in batches over the test prompts (no per-sample loop).

- assimilation ratio: share of test prompts whose output with v has assimilation > τ_assim;
- same target: share of the *other* test prompts whose output with v has mean tokenwise cosine
  > τ_same to the first test prompt's (upstream never counts its first item but divides by all,
  which caps the ratio at (n−1)/n; here the first prompt is the reference and is not counted);
- different target: share of test prompts whose output with v has mean tokenwise cosine < τ_diff
  to the anchor's output on the same input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from amdet.inversion import insert
from core.encoders import TextEncoder
from core.metrics import assimilation, tokenwise_cosine


@dataclass(frozen=True)
class CheckThresholds:
    """Thresholds of the checks (the paper's CLIP-L values by default)."""

    assim_token: float = 0.8  # a prompt counts as assimilated above this
    assim_ratio: float = 0.8  # τ1: share of assimilated prompts needed
    same_token: float = 0.92  # a prompt counts as "same target" above this cosine
    same_ratio: float = 0.995  # τ2
    diff_token: float = 0.0  # a prompt counts as "different from the anchor" below this cosine
    diff_ratio: float = 0.95
    landscape_ratio: float = 0.8  # τ3: share of positive Hessian eigenvalues
    loss_start: float = -0.76  # checks start once the running mean loss is below this
    loss_stop: float = -0.85  # the epoch ends once the running mean loss is below this


def observing(t: CheckThresholds) -> CheckThresholds:
    """Thresholds under which a scan checks from the first step, never stops early, never decides."""
    return dataclasses.replace(t, loss_start=math.inf, loss_stop=-math.inf, assim_ratio=math.inf,
                               same_ratio=math.inf, diff_ratio=math.inf, landscape_ratio=math.inf)


def settled(count: int, seen: int, n: int, threshold: float) -> bool | None:
    """Whether `ratio = count_of_all / n > threshold` is already decided after `seen` of the n
    prompts: True or False when no outcome of the other n − seen can change it, else None."""
    if count / n > threshold:
        return True
    if (count + n - seen) / n <= threshold:
        return False
    return None


@torch.no_grad()
def evaluate_checks(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, v: torch.Tensor, t: CheckThresholds,
    batch: int | None = None, early_exit: bool = False,
) -> dict:
    """Every check's statistic and pass/fail on the test prompts' embeddings `hidden` [N, L, D].

    With `early_exit`, the pass stops at the first batch after which all_pass is decided (some check
    can no longer pass, or every check has passed whatever the rest give): all_pass is what a full
    pass would find, the statistics are over the `checked` prompts seen so far, and a check whose
    outcome the rest could still have changed has pass None."""
    assim, same, diff_cos = [], [], []
    reference, batch, n = None, batch or model.rows_per_pass, len(hidden)
    passes = {}
    for i in range(0, n, batch):
        h_v = insert(hidden[i : i + batch], v, model.insert_position)
        out = model.encode(h_v)
        if reference is None:
            reference = out[:1]
        assim.append(assimilation(out))
        same.append(tokenwise_cosine(out, reference.expand_as(out)))
        diff_cos.append(tokenwise_cosine(out, anchor.encode(h_v)))
        seen = i + len(out)
        if early_exit and seen < n:
            hits = torch.stack([(torch.cat(assim) > t.assim_token).sum(), (torch.cat(same)[1:] > t.same_token).sum(),
                                (torch.cat(diff_cos) < t.diff_token).sum()]).tolist()  # one host sync a batch
            passes = {
                "assim_pass": settled(hits[0], seen, n, t.assim_ratio),
                "same_pass": settled(hits[1], seen - 1, n - 1, t.same_ratio),
                "diff_pass": settled(hits[2], seen, n, t.diff_ratio),
            }
            if False in passes.values() or None not in passes.values():
                break
    assim, same, diff_cos = torch.cat(assim), torch.cat(same)[1:], torch.cat(diff_cos)
    zero = assim.new_zeros(())
    values = torch.stack([
        (assim > t.assim_token).float().mean(), (same > t.same_token).float().mean() if len(same) else zero,
        (diff_cos < t.diff_token).float().mean(), assim.mean(), same.mean() if len(same) else zero, diff_cos.mean(),
    ]).tolist()  # one host sync for the pass's statistics
    stats = {"checked": len(assim), **dict(zip(
        ("assim_ratio", "same_ratio", "diff_ratio", "assim_mean", "same_mean", "anchor_cos_mean"), values))}
    if len(assim) == n:  # every prompt seen: the exact outcome
        passes = {"assim_pass": stats["assim_ratio"] > t.assim_ratio, "same_pass": stats["same_ratio"] > t.same_ratio,
                  "diff_pass": stats["diff_ratio"] > t.diff_ratio}
    stats.update(passes)
    stats["all_pass"] = all(p is True for p in passes.values())
    return stats


@torch.no_grad()
def mean_assimilation(model: TextEncoder, hidden: torch.Tensor, v: torch.Tensor, batch: int | None = None) -> float:
    """Mean assimilation of the prompts' outputs with v inserted: the scan's continuous score.
    A backdoor's v collapses every output onto one target (≈ 1); a benign model's cannot."""
    batch = batch or model.rows_per_pass
    total = sum(assimilation(model.encode(insert(hidden[i : i + batch], v, model.insert_position))).sum().double()
                for i in range(0, len(hidden), batch))  # float32 batch sums added in double, as before: same score
    return total.item() / len(hidden)
