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
import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from amdet.checks import CheckThresholds, evaluate_checks, mean_assimilation
from amdet.inversion import LossWeights, ShallowSet, inversion_loss, insert, shallow_set, vocabulary_start
from amdet.landscape import LandscapeConfig, landscape
from core.encoders import TextEncoder
from core.snapshot import Snapshots


INITS = ("vocabulary", "normal")
# a landscape not computed: deciding with the check off, or ending undecided with scan.landscape.undecided=false
NO_LANDSCAPE = {"positive_ratio": None, "computed": False}


@dataclass(frozen=True)
class ScanConfig:
    k: int = 1  # inserted vectors
    lr: float = 8e-2
    weight_decay: float = 1e-5
    batch_size: int = 10
    epochs: int = 2
    check_every: int = 2  # batches between check evaluations (once the running loss is low enough)
    check_early_exit: bool = False  # stop a check pass once its outcome is decided (statistics then partial)
    # where v starts: vocabulary = the token rows that lower the loss most | normal = N(0, init_std²), the paper's
    init: str = "vocabulary"
    init_std: float = 1.0  # init=normal: v ~ N(0, init_std²)
    screen_prompts: int = 2  # init=vocabulary, stage 1: every token on this many prompts ...
    screen_positions: int = 8  # ... cut to this many positions
    screen_keep: int | None = 4096  # ... the first prompt's best this many on the others (None: every token on each)
    screen_candidates: int = 16  # stage 2: the best this many on a batch of whole prompts with the full loss
    score_steps: int | None = None  # the budget-fixed score's step; None: one epoch
    test_share: float = 0.2
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    thresholds: CheckThresholds = field(default_factory=CheckThresholds)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"scan.inversion.init must be one of {', '.join(INITS)}, got '{self.init}'")
        for key in ("k", "lr", "batch_size", "epochs", "check_every",
                    "screen_prompts", "screen_positions", "screen_candidates"):
            if not getattr(self, key) > 0:
                raise ValueError(f"scan.{key} must be positive, got {getattr(self, key)}")
        if self.screen_keep is not None and self.screen_keep < max(self.screen_candidates, self.k):
            raise ValueError(f"scan.inversion.screen_keep must be null or at least screen_candidates "
                             f"({self.screen_candidates}), got {self.screen_keep}")
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

    def __init__(self, model: TextEncoder, data: ShallowSet, cfg: ScanConfig, start: torch.Tensor | None = None):
        self.data, self.cfg = data, cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        v = torch.randn(cfg.k, model.hidden_size, generator=self.gen) * cfg.init_std  # drawn either way: one data order
        self.v = torch.nn.Parameter((v if start is None else start.detach().cpu().clone()).to(model.device))
        self.history = deque([self.v.detach().clone()], maxlen=cfg.check_every + 1)  # v over the last check period
        self.opt = torch.optim.Adam([self.v], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.n_batches = n_batches(data, cfg)
        self.epoch, self.batch, self.order, self.total, self.steps = 0, 0, None, 0.0, 0

    def step(self, model: TextEncoder, anchor: TextEncoder) -> tuple[float, dict]:
        """One optimiser step on the next batch; (running mean loss of the epoch, loss terms)."""
        if self.order is None:
            self.order = self.data.train[torch.randperm(len(self.data.train), generator=self.gen)]
        idx = self.order[self.batch * self.cfg.batch_size : (self.batch + 1) * self.cfg.batch_size]
        loss, terms = inversion_loss(model, anchor, self.data.hidden[idx], self.data.output[idx], self.v, self.cfg.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.history.append(self.v.detach().clone())
        value, *rest = torch.stack([loss.detach(), *terms.values()]).tolist()  # the step's one host sync
        if not math.isfinite(value):  # v is spoilt too: the scan ends here
            raise FloatingPointError(
                f"inversion loss became {value} at step {self.steps}; lower scan.lr or check the model for NaN weights"
            )
        self.steps, self.batch, self.total = self.steps + 1, self.batch + 1, self.total + value
        return self.total / self.batch, dict(zip(terms, rest))

    @property
    def epoch_done(self) -> bool:
        return self.batch == self.n_batches

    def end_epoch(self) -> None:
        self.epoch, self.batch, self.order, self.total = self.epoch + 1, 0, None, 0.0

    def state(self) -> dict:
        return {"step": self.steps, "epoch": self.epoch, "batch": self.batch, "order": self.order, "total": self.total,
                "v": self.v.detach().cpu(), "optimizer": self.opt.state_dict(), "gen": self.gen.get_state(),
                "history": [v.cpu() for v in self.history]}

    def restore(self, saved: dict) -> None:
        with torch.no_grad():
            self.v.copy_(saved["v"])
        self.opt.load_state_dict(saved["optimizer"])
        self.gen.set_state(saved["gen"])
        self.steps, self.epoch, self.batch = saved["step"], saved["epoch"], saved["batch"]
        self.order, self.total = saved["order"], saved["total"]
        self.history = deque((v.to(self.v.device) for v in saved["history"]), maxlen=self.history.maxlen)

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
         snapshots: Snapshots | None = None, data: ShallowSet | None = None) -> dict:
    """Scan `model` against its clean `anchor` under one set of thresholds. With `snapshots`, a
    restarted scan continues its inversion from the last saved step and reaches the same verdict and
    score. `data`: the shallow features already computed for `prompts`."""
    found, times, data = scan_regimes(model, anchor, prompts, {"scan": cfg}, progress, snapshots, data)
    return {**found["scan"], "data": data, "times": times}


class Regime:
    """One threshold regime's walk along a trajectory that it may share with other regimes: its check
    log, its best running loss, and where it ended (decided, with the landscape that decided it, or
    at the end of its epochs)."""

    def __init__(self, thresholds: CheckThresholds, traj: Trajectory):
        self.th, self.traj = thresholds, traj
        self.log, self.best_running, self.decided, self.done = [], float("inf"), None, False
        self.v, self.steps = None, 0  # where it ended
        self.decision = None  # a flagged scan: the checks at the deciding step, and whether v had settled
        self.checks_s = self.landscape_s = 0.0

    def wants_epoch_end(self, running: float) -> bool:
        return running < self.th.loss_stop or self.traj.epoch_done


def scan_regimes(model: TextEncoder, anchor: TextEncoder, prompts: list[str], cfgs: dict[str, ScanConfig],
                 progress: bool = True, snapshots: Snapshots | None = None, data: ShallowSet | None = None,
                 ) -> tuple[dict[str, dict], dict, ShallowSet]:
    """Scan `model` under several threshold regimes (configs that differ in `thresholds` only) in one
    pass: the regimes share one inversion trajectory for as long as they would follow the same one,
    which is until a regime ends an epoch early (its loss_stop; it then walks on a fork) or decides.
    Each regime's verdict, v, checks and landscape are those of a scan of its own; the landscape and
    the final assimilation of a v that several regimes end on are computed once. Returns
    ({name: result}, the whole scan's phase times, the shallow features)."""
    cfg = next(iter(cfgs.values()))
    if any(dataclasses.replace(c, thresholds=cfg.thresholds) != cfg for c in cfgs.values()):
        raise ValueError("regimes of one scan may differ in their check thresholds only")
    check_compatible(model, anchor)
    times = {}
    t = time.perf_counter()
    data = data or shallow_set(model, prompts, cfg.test_share, cfg.seed)
    test_hidden = data.hidden[data.test]
    times["features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    start = None
    if cfg.init == "vocabulary":
        start = vocabulary_start(model, anchor, data, cfg.k, cfg.weights, cfg.screen_prompts, cfg.screen_positions,
                                 cfg.screen_candidates, cfg.batch_size, cfg.screen_keep)
    times["init_s"] = time.perf_counter() - t

    snapshots = snapshots or Snapshots(None)
    # the plain trajectory: no decision and no early epoch end
    plain = Trajectory(model, data, cfg, None if start is None else start.v)
    budget = score_steps(cfg, n_batches(data, cfg))
    regimes = {name: Regime(c.thresholds, plain) for name, c in cfgs.items()}
    score, cache = None, {}  # cache: (what, v) → landscape or final assimilation of that v
    if saved := snapshots.load():  # a requeued scan continues its inversion where it was
        score, plain = restore_regimes(saved, model, data, cfg, regimes)
    phase = {"checks_s": 0.0, "landscape_s": 0.0, "score_s": 0.0}

    def timed(key: str, fn, *args):
        ts = time.perf_counter()
        value = fn(*args)
        phase[key] += time.perf_counter() - ts
        return value, time.perf_counter() - ts

    def once(what: str, v: torch.Tensor, fn):
        """fn() computed once per exact v (regimes that end on the same v share it)."""
        key = (what, v.detach().cpu().numpy().tobytes())
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    def measure_score(v: torch.Tensor) -> float:
        return timed("score_s", mean_assimilation, model, test_hidden, v.detach())[0]

    def forked_score(traj: Trajectory) -> float:
        """The score on the plain trajectory, run on from `traj` when every regime leaves it before the budget."""
        twin = traj.clone(model)
        while twin.steps < budget:
            twin.step(model, anchor)
            if twin.epoch_done:
                twin.end_epoch()
        return measure_score(twin.v)

    t = time.perf_counter()
    bar = tqdm(total=cfg.epochs * n_batches(data, cfg), initial=max(r.traj.steps for r in regimes.values()), desc="inversion", disable=not progress, leave=False)
    while active := [r for r in regimes.values() if not r.done]:
        for traj in unique(r.traj for r in active):
            walkers = [r for r in active if r.traj is traj]
            running, terms = traj.step(model, anchor)
            if traj is plain and traj.steps == budget and score is None:
                score = measure_score(traj.v)
            for r in walkers:
                r.best_running = min(r.best_running, running)
                th = r.th
                # checks on the cadence, and on the step that ends an epoch: with a sparse cadence the
                # loss can pass both loss_start and loss_stop between two cadence points
                due = traj.batch % cfg.check_every == 0 or running < th.loss_stop or traj.epoch_done
                if not (running < th.loss_start and due):
                    continue
                stats, spent = timed("checks_s", evaluate_checks, model, anchor, test_hidden, traj.v.detach(), th,
                                     None, cfg.check_early_exit)
                r.checks_s += spent
                entry = {"step": traj.steps, "epoch": traj.epoch, "running_loss": running, **terms_prefixed(terms), **stats}
                r.log.append(entry)
                if stats["all_pass"]:
                    off = th.landscape_ratio < 0  # every ratio passes it, so its grid would decide nothing
                    if off:
                        land = NO_LANDSCAPE
                    else:
                        land, spent = timed("landscape_s", once, "landscape", traj.v,
                                            lambda: landscape_of(model, anchor, data, traj.v, cfg))
                        r.landscape_s += spent
                    entry["landscape_ratio"] = land["positive_ratio"]
                    if off or land["positive_ratio"] > th.landscape_ratio:
                        r.decided, r.done, r.v, r.steps = land, True, traj.v.detach().clone(), traj.steps
                        r.decision = decision_record(model, test_hidden, traj, entry)
            walkers = [r for r in walkers if not r.done]
            ending = [r for r in walkers if r.wants_epoch_end(running)]
            if ending and len(ending) < len(walkers):  # some end the epoch early: they walk on a fork
                fork = traj.clone(model)
                fork.end_epoch()
                for r in ending:
                    r.traj = fork
            elif ending:
                if traj is plain and not traj.epoch_done:  # an early epoch end leaves the plain trajectory
                    score = score if score is not None else forked_score(traj)
                    plain = None
                traj.end_epoch()
            for r in walkers:
                if r.traj.epoch >= cfg.epochs:
                    r.done, r.v, r.steps = True, r.traj.v.detach().clone(), r.traj.steps
        if plain is not None and all(r.done or r.traj is not plain for r in regimes.values()):
            score = score if score is not None else forked_score(plain)  # every regime left it before the budget
            plain = None
        bar.update()
        snapshots.maybe_save(lambda: regimes_state(regimes, plain, score))
    bar.close()
    times["inversion_s"] = time.perf_counter() - t - sum(phase.values())
    times["checks_s"] = phase["checks_s"]

    found = {}
    for name, r in regimes.items():
        if r.decided:
            land = r.decided
        elif cfg.landscape.undecided:  # a benign scan's record has one too
            land = timed("landscape_s", once, "landscape", r.v, lambda: landscape_of(model, anchor, data, r.v, cfg))[0]
        else:
            land = NO_LANDSCAPE
        final = once("assimilation", r.v, lambda: measure_score(r.v))
        with torch.no_grad():
            reversed_feature = model.encode(insert(test_hidden[:1], r.v, model.insert_position))[0]
        found[name] = {
            "verdict": "backdoor" if r.decided else "benign",
            "score": score,
            "score_steps": budget,
            "final_assimilation": final,  # with the v the scan ended on: depends on when it stopped
            "steps": r.steps,
            "resumed_from_step": snapshots.resumed_from,
            "best_running_loss": r.best_running,
            "checks": r.log,
            "landscape_ratio": land["positive_ratio"],
            "v": r.v.cpu(),
            "reversed_feature": reversed_feature.cpu(),
            "landscape": land,
            "decision": r.decision,
            "start": None if start is None else {k: v for k, v in vars(start).items() if k != "v"},
            "test_prompts": [prompts[i] for i in data.test.tolist()],  # benign prompts the inversion never saw (for Sim)
            "shallow": {"prompts": len(prompts), "train": len(data.train), "test": len(data.test)},
            "regime_times": {"checks_s": r.checks_s, "landscape_s": r.landscape_s},
        }
    times["landscape_s"], times["score_s"] = phase["landscape_s"], phase["score_s"]
    return found, times, data


STABLE = 0.9  # a reversed feature this close (cosine) to the one a check period earlier has settled
ASSIMILATING = CheckThresholds().assim_token  # the paper's "assimilated" token cosine


@torch.no_grad()
def decision_record(model: TextEncoder, test_hidden: torch.Tensor, traj: Trajectory, entry: dict) -> dict:
    """What a flagged scan decided on: the checks at the deciding step; `stability`, the mean cosine
    of the reversed features (first 4 test prompts) of v now and a check period (check_every steps)
    earlier; `stable` above STABLE; `assimilating`, the mean token cosine of the outputs with v at or
    above the paper's assim_token, whatever thresholds the regime used."""
    hidden = test_hidden[:4]
    vs = torch.stack([traj.history[0], traj.v.detach()]).to(hidden.dtype)
    rows = hidden.repeat(2, 1, 1)
    feats = model.encode(insert(rows, vs.repeat_interleave(len(hidden), 0), model.insert_position)).flatten(1)
    then, now = feats.float().view(2, len(hidden), -1)
    stability = torch.nn.functional.cosine_similarity(then, now, dim=1).mean().item()
    keys = ("step", "assim_mean", "assim_ratio", "same_ratio", "diff_ratio", "landscape_ratio")
    return {**{k: entry.get(k) for k in keys}, "compared_with_step": traj.steps - (len(traj.history) - 1),
            "stability": stability, "stable": stability >= STABLE, "assimilating": entry["assim_mean"] >= ASSIMILATING}


def n_batches(data: ShallowSet, cfg: ScanConfig) -> int:
    return len(data.train) // cfg.batch_size


def unique(items) -> list:
    """The distinct objects of `items` (by identity), in order."""
    seen = {}
    for item in items:
        seen.setdefault(id(item), item)
    return list(seen.values())


def regimes_state(regimes: dict[str, Regime], plain: Trajectory | None, score: float | None) -> dict:
    """A snapshot of a multi-regime scan: each distinct trajectory once, and where each regime is on it."""
    trajs = unique(r.traj for r in regimes.values())
    index = {id(tr): i for i, tr in enumerate(trajs)}
    return {
        "step": max(tr.steps for tr in trajs),
        "trajectories": [tr.state() for tr in trajs],
        "regimes": {name: {"traj": index[id(r.traj)], "log": r.log, "best_running": r.best_running, "done": r.done,
                           "decided": r.decided, "v": r.v, "steps": r.steps, "decision": r.decision}
                    for name, r in regimes.items()},
        "plain": index[id(plain)] if plain is not None else -1,
        "score": score,
    }


def restore_regimes(saved: dict, model: TextEncoder, data: ShallowSet, cfg: ScanConfig,
                    regimes: dict[str, Regime]) -> tuple[float | None, Trajectory | None]:
    """The inverse of regimes_state: the trajectories rebuilt, the regimes put back on them."""
    trajs = []
    for state in saved["trajectories"]:
        tr = Trajectory(model, data, cfg)
        tr.restore(state)
        trajs.append(tr)
    for name, r in regimes.items():
        s = saved["regimes"][name]
        r.traj, r.log, r.best_running, r.done, r.decided = trajs[s["traj"]], s["log"], s["best_running"], s["done"], s["decided"]
        r.decision = s.get("decision")
        if s["done"]:
            r.v, r.steps = s["v"].to(model.device), s["steps"]
    return saved["score"], (trajs[saved["plain"]] if saved["plain"] >= 0 else None)


def terms_prefixed(terms: dict) -> dict:
    return {f"loss_{k}": v for k, v in terms.items()}


def landscape_of(model, anchor, data, v, cfg: ScanConfig) -> dict:
    i = data.test[:1]
    return landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape)
