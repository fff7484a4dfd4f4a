"""One AMDET scan: invert an implicit backdoor feature v, check it, filter natural features, decide.

Needs only the model under test, the clean anchor model and shallow prompts: no trigger, target,
training data or downstream task. Returns a verdict, every check's value at every evaluation, the
wall time of each phase, and a budget-fixed continuous score for ROC/AUROC (higher = more likely
backdoored): the mean assimilation of the held-out test prompts' outputs with v after a fixed number
of inversion steps (`score_steps`, one epoch by default) of the plain trajectory — the one the scan
follows until it decides or ends an epoch early. It depends neither on thresholds nor on when the
scan stopped: a scan that stops before the budget forks its state and runs the plain steps on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from amdet.checks import CheckThresholds, evaluate_checks, mean_assimilation
from amdet.inversion import LossWeights, ShallowSet, inversion_loss, insert, shallow_set
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
    score_steps: int | None = None  # the budget-fixed score's step; None: one epoch
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


class Trajectory:
    """The inversion's state — v, its optimiser, the data order, the place in the epoch — advanced one
    batch at a time. `clone()` forks it: the budget-fixed score follows the plain trajectory (no
    decision, no early epoch end) from wherever the scan left it."""

    def __init__(self, model: TextEncoder, data: ShallowSet, cfg: ScanConfig):
        self.data, self.cfg = data, cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.v = torch.nn.Parameter((torch.randn(cfg.k, model.hidden_size, generator=self.gen) * cfg.init_std).to(model.device))
        self.opt = torch.optim.Adam([self.v], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.n_batches = len(data.train) // cfg.batch_size
        self.epoch, self.batch, self.order, self.total, self.steps = 0, 0, None, 0.0, 0

    def step(self, model: TextEncoder, anchor: TextEncoder) -> tuple[float, dict]:
        """One optimiser step on the next batch; (running mean loss of the epoch, loss terms)."""
        if self.order is None:
            self.order = self.data.train[torch.randperm(len(self.data.train), generator=self.gen)]
        idx = self.order[self.batch * self.cfg.batch_size : (self.batch + 1) * self.cfg.batch_size]
        loss, terms = inversion_loss(model, anchor, self.data.hidden[idx], self.data.output[idx], self.v, self.cfg.weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"inversion loss became {loss.item()} at step {self.steps}; lower scan.lr or check the model for NaN weights"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps, self.batch, self.total = self.steps + 1, self.batch + 1, self.total + loss.item()
        return self.total / self.batch, terms

    @property
    def epoch_done(self) -> bool:
        return self.batch == self.n_batches

    def end_epoch(self) -> None:
        self.epoch, self.batch, self.order, self.total = self.epoch + 1, 0, None, 0.0

    def state(self) -> dict:
        return {"step": self.steps, "epoch": self.epoch, "batch": self.batch, "order": self.order, "total": self.total,
                "v": self.v.detach().cpu(), "optimizer": self.opt.state_dict(), "gen": self.gen.get_state()}

    def restore(self, saved: dict) -> None:
        with torch.no_grad():
            self.v.copy_(saved["v"])
        self.opt.load_state_dict(saved["optimizer"])
        self.gen.set_state(saved["gen"])
        self.steps, self.epoch, self.batch = saved["step"], saved["epoch"], saved["batch"]
        self.order, self.total = saved["order"], saved["total"]

    def clone(self, model: TextEncoder) -> Trajectory:
        twin = Trajectory(model, self.data, self.cfg)
        twin.restore(copy.deepcopy(self.state()))
        return twin


def score_steps(cfg: ScanConfig, n_batches: int) -> int:
    """The step the budget-fixed score is measured at: scan.inversion.score_steps, null = one epoch."""
    steps = cfg.score_steps or n_batches
    if not 0 < steps <= cfg.epochs * n_batches:
        raise ValueError(f"scan.inversion.score_steps must be 1–{cfg.epochs * n_batches} (epochs × batches), got {steps}")
    return steps


def scan(model: TextEncoder, anchor: TextEncoder, prompts: list[str], cfg: ScanConfig, progress: bool = True,
         snapshots: Snapshots | None = None, data: ShallowSet | None = None, with_score: bool = True) -> dict:
    """Scan `model` against its clean `anchor`. With `snapshots`, a restarted scan continues its
    inversion from the last saved step and reaches the same verdict and score. `data`: the shallow
    features already computed for `prompts` (a second threshold regime reuses them); `with_score`:
    False skips the budget-fixed score (the same for every regime: it does not depend on thresholds)."""
    check_compatible(model, anchor)
    times = {}
    t = time.perf_counter()
    data = data or shallow_set(model, prompts, cfg.test_share, cfg.seed)
    test_hidden = data.hidden[data.test]
    times["features_s"] = time.perf_counter() - t

    snapshots = snapshots or Snapshots(None)
    traj = Trajectory(model, data, cfg)
    budget = score_steps(cfg, traj.n_batches)
    th = cfg.thresholds
    log, best_running, decided, score = [], float("inf"), None, None
    checks_s = landscape_s = score_s = 0.0
    if saved := snapshots.load():  # a requeued scan continues its inversion where it was
        traj.restore(saved)
        best_running, log, score = saved["best_running"], saved["log"], saved.get("score")

    def measure_score(v: torch.Tensor) -> float:
        nonlocal score_s
        ts = time.perf_counter()
        value = mean_assimilation(model, test_hidden, v.detach())
        score_s += time.perf_counter() - ts
        return value

    def forked_score() -> float | None:
        """The score on the plain trajectory, when the scan is about to leave it before the budget."""
        if not with_score or score is not None:
            return score
        twin = traj.clone(model)
        while twin.steps < budget:
            twin.step(model, anchor)
            if twin.epoch_done:
                twin.end_epoch()
        return measure_score(twin.v)

    t = time.perf_counter()
    bar = tqdm(total=cfg.epochs * traj.n_batches, initial=traj.steps, desc="inversion", disable=not progress, leave=False)
    while traj.epoch < cfg.epochs:
        running, terms = traj.step(model, anchor)
        best_running = min(best_running, running)
        bar.update()
        bar.set_postfix(loss=f"{running:.3f}")
        if with_score and traj.steps == budget:
            score = measure_score(traj.v)
        # checks on the cadence, and on the step that ends an epoch: with a sparse cadence the
        # loss can pass both loss_start and loss_stop between two cadence points
        due = traj.batch % cfg.check_every == 0 or running < th.loss_stop or traj.epoch_done
        if running < th.loss_start and due:
            tc = time.perf_counter()
            stats = evaluate_checks(model, anchor, test_hidden, traj.v.detach(), th, early_exit=cfg.check_early_exit)
            checks_s += time.perf_counter() - tc
            entry = {"step": traj.steps, "epoch": traj.epoch, "running_loss": running, **terms_prefixed(terms), **stats}
            log.append(entry)
            if stats["all_pass"]:
                tl = time.perf_counter()
                land = landscape_of(model, anchor, data, traj.v, cfg)
                landscape_s += time.perf_counter() - tl
                entry["landscape_ratio"] = land["positive_ratio"]
                if land["positive_ratio"] > th.landscape_ratio:
                    decided = land
                    break
        if running < th.loss_stop or traj.epoch_done:
            if not traj.epoch_done:  # an early epoch end leaves the plain trajectory
                score = forked_score()
            traj.end_epoch()
        snapshots.maybe_save(lambda: {**traj.state(), "best_running": best_running, "log": log, "score": score})
    bar.close()
    score = forked_score()  # a decided scan may stop before the budget
    times["inversion_s"] = time.perf_counter() - t - checks_s - landscape_s - score_s
    times["checks_s"] = checks_s

    t = time.perf_counter()
    land = decided or landscape_of(model, anchor, data, traj.v, cfg)  # the record of a benign scan has one too
    landscape_s += time.perf_counter() - t
    times["landscape_s"] = landscape_s
    v = traj.v.detach()
    final = measure_score(v)
    times["score_s"] = score_s
    with torch.no_grad():
        reversed_feature = model.encode(insert(test_hidden[:1], v, model.insert_position))[0]
    return {
        "verdict": "backdoor" if decided else "benign",
        "score": score,
        "score_steps": budget if with_score else None,
        "final_assimilation": final,  # with the v the scan ended on: depends on when it stopped
        "steps": traj.steps,
        "resumed_from_step": snapshots.resumed_from,
        "best_running_loss": best_running,
        "checks": log,
        "landscape_ratio": land["positive_ratio"],
        "v": v.cpu(),
        "reversed_feature": reversed_feature.cpu(),
        "landscape": land,
        "test_prompts": [prompts[i] for i in data.test.tolist()],  # benign prompts the inversion never saw (for Sim)
        "shallow": {"prompts": len(prompts), "train": len(data.train), "test": len(data.test)},
        "data": data,
        "times": times,
    }


def terms_prefixed(terms: dict) -> dict:
    return {f"loss_{k}": v for k, v in terms.items()}


def landscape_of(model, anchor, data, v, cfg: ScanConfig) -> dict:
    i = data.test[:1]
    return landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape)
