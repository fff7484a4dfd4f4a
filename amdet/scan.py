"""One AMDET scan: invert an implicit backdoor feature v, check it, filter natural features, decide.

Needs only the model under test, the clean anchor model and shallow prompts: no trigger, target,
training data or downstream task. Returns a verdict and a continuous score (higher = more likely
backdoored: the mean assimilation of the test prompts' outputs with the final v — unlike the running
loss, it does not depend on when the scan stopped), every check's value at every evaluation, and
the wall time of each phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from amdet.checks import CheckThresholds, evaluate_checks, mean_assimilation
from amdet.inversion import LossWeights, inversion_loss, insert, shallow_set
from amdet.landscape import LandscapeConfig, landscape
from core.encoders import TextEncoder
from core.snapshot import Snapshots


@dataclass(frozen=True)
class ScanConfig:
    k: int = 1  # inserted vectors
    lr: float = 8e-2
    weight_decay: float = 1e-5
    batch_size: int = 10
    epochs: int = 2
    check_every: int = 2  # batches between check evaluations (once the running loss is low enough)
    check_early_exit: bool = False  # stop a check pass once its outcome is decided (statistics then partial)
    init_std: float = 1.0  # v ~ N(0, init_std²)
    test_share: float = 0.2
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    thresholds: CheckThresholds = field(default_factory=CheckThresholds)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)

    def __post_init__(self):
        for key in ("k", "lr", "batch_size", "epochs", "check_every"):
            if not getattr(self, key) > 0:
                raise ValueError(f"scan.{key} must be positive, got {getattr(self, key)}")
        if not any((self.weights.assim, self.weights.dev, self.weights.anchor)):
            raise ValueError("every inversion loss term is switched off; enable at least one of scan.weights.*")


def check_compatible(model: TextEncoder, anchor: TextEncoder) -> None:
    """The anchor's layers run on the model's h_v: same family, width, length and vocabulary."""
    for what, a, b in (
        ("family", model.family.name, anchor.family.name),
        ("hidden size", model.hidden_size, anchor.hidden_size),
        ("max length", model.max_length, anchor.max_length),
        ("vocabulary size", model.config.vocab_size, anchor.config.vocab_size),
    ):
        if a != b:
            raise ValueError(f"model and anchor differ in {what} ({a} vs {b}); scan a model against the clean encoder it was fine-tuned from")


def scan(model: TextEncoder, anchor: TextEncoder, prompts: list[str], cfg: ScanConfig, progress: bool = True,
         snapshots: Snapshots | None = None) -> dict:
    """Scan `model` against its clean `anchor`. With `snapshots`, a restarted scan continues its
    inversion from the last saved step and reaches the same verdict and score."""
    check_compatible(model, anchor)
    times = {}
    t = time.perf_counter()
    data = shallow_set(model, prompts, cfg.test_share, cfg.seed)
    test_hidden = data.hidden[data.test]
    times["features_s"] = time.perf_counter() - t

    snapshots = snapshots or Snapshots(None)
    gen = torch.Generator().manual_seed(cfg.seed)
    v = torch.nn.Parameter((torch.randn(cfg.k, model.hidden_size, generator=gen) * cfg.init_std).to(model.device))
    opt = torch.optim.Adam([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
    th = cfg.thresholds
    log, steps, best_running, decided = [], 0, float("inf"), None
    checks_s = landscape_s = 0.0
    n_batches = len(data.train) // cfg.batch_size
    start_epoch, start_batch, order, total = 0, 0, None, 0.0
    if saved := snapshots.load():  # a requeued scan continues its inversion where it was
        with torch.no_grad():
            v.copy_(saved["v"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["gen"])
        steps, best_running, log = saved["step"], saved["best_running"], saved["log"]
        start_epoch, start_batch, order, total = saved["epoch"], saved["batch"], saved["order"], saved["total"]
    t = time.perf_counter()
    bar = tqdm(total=cfg.epochs * n_batches, initial=steps, desc="inversion", disable=not progress, leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        if order is None:
            order = data.train[torch.randperm(len(data.train), generator=gen)]
        for b in range(start_batch, n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss, terms = inversion_loss(model, anchor, data.hidden[idx], data.output[idx], v, cfg.weights)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"inversion loss became {loss.item()} at step {steps}; lower scan.lr or check the model for NaN weights"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item()
            running = total / (b + 1)
            best_running = min(best_running, running)
            bar.update()
            bar.set_postfix(loss=f"{running:.3f}")
            # checks on the cadence, and on the step that ends an epoch: with a sparse cadence the
            # loss can pass both loss_start and loss_stop between two cadence points
            due = (b + 1) % cfg.check_every == 0 or running < th.loss_stop or b == n_batches - 1
            if running < th.loss_start and due:
                tc = time.perf_counter()
                stats = evaluate_checks(model, anchor, test_hidden, v.detach(), th, early_exit=cfg.check_early_exit)
                checks_s += time.perf_counter() - tc
                entry = {"step": steps, "epoch": epoch, "running_loss": running, **terms_prefixed(terms), **stats}
                log.append(entry)
                if stats["all_pass"]:
                    tl = time.perf_counter()
                    land = landscape_of(model, anchor, data, v, cfg)
                    landscape_s += time.perf_counter() - tl
                    entry["landscape_ratio"] = land["positive_ratio"]
                    if land["positive_ratio"] > th.landscape_ratio:
                        decided = land
                        break
            if running < th.loss_stop:
                break
            snapshots.maybe_save(lambda: {
                "step": steps, "epoch": epoch, "batch": b + 1, "order": order, "total": total,
                "best_running": best_running, "log": log, "v": v.detach().cpu(), "optimizer": opt.state_dict(),
                "gen": gen.get_state()})
        if decided:
            break
        order, start_batch, total = None, 0, 0.0
    bar.close()
    times["inversion_s"] = time.perf_counter() - t - checks_s - landscape_s
    times["checks_s"] = checks_s

    t = time.perf_counter()
    land = decided or landscape_of(model, anchor, data, v, cfg)  # the record of a benign scan has one too
    landscape_s += time.perf_counter() - t
    times["landscape_s"] = landscape_s
    t = time.perf_counter()
    score = mean_assimilation(model, test_hidden, v.detach())
    times["score_s"] = time.perf_counter() - t
    with torch.no_grad():
        reversed_feature = model.encode(insert(test_hidden[:1], v.detach(), model.insert_position))[0]
    return {
        "verdict": "backdoor" if decided else "benign",
        "score": score,
        "steps": steps,
        "resumed_from_step": snapshots.resumed_from,
        "best_running_loss": best_running,
        "checks": log,
        "landscape_ratio": land["positive_ratio"],
        "v": v.detach().cpu(),
        "reversed_feature": reversed_feature.cpu(),
        "landscape": land,
        "test_prompts": [prompts[i] for i in data.test.tolist()],  # benign prompts the inversion never saw (for Sim)
        "shallow": {"prompts": len(prompts), "train": len(data.train), "test": len(data.test)},
        "times": times,
    }


def terms_prefixed(terms: dict) -> dict:
    return {f"loss_{k}": v for k, v in terms.items()}


def landscape_of(model, anchor, data, v, cfg: ScanConfig) -> dict:
    i = data.test[:1]
    return landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape)
