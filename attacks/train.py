"""Backdoor injection: fine-tune a copy of the clean encoder f0 on the attack objective, then measure it.

Each step draws a clean batch (L_benign: stay close to f0) and, per backdoor, a batch of prompts
that carry its trigger (L_backdoor: map them to its target; the adaptive attack's L_assim: keep
their tokens apart). Batches are drawn from fixed pools with seeded permutations, so a run is
reproducible and can never wait for a batch to fill.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from attacks.objective import backdoor_term, encode, similarity_fn
from attacks.targets import Target
from attacks.triggers import Trigger, first_token, trigger_positions
from attacks.triggers import carriers as carriers_of
from core.encoders import TextEncoder
from core.metrics import assimilation
from core.snapshot import Snapshots, restore_rng, rng_state
from core.training import OPTIMIZERS, Cycler

EVAL_POSITIONS = ("start", "middle", "end")  # whole-word trigger placements of asr_by_position


@dataclass(frozen=True)
class AttackHParams:
    """Optimisation of one attack (`training.attack` in the config)."""

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    steps: int = 100
    clean_batch: int = 64
    poison_batch: int = 32
    milestones: tuple[int, ...] = (75,)  # MultiStepLR: lr × gamma at these steps
    gamma: float = 0.1
    backdoor_weight: float = 0.1  # λ
    # λ for particular similarity functions: an L1 pull has a constant-size gradient, and at tiny
    # scale λ = 1 leaves MAE triggers collapsing next to, not onto, the target (attack success 0)
    backdoor_weight_by_similarity: dict[str, float] = field(default_factory=dict)
    grad_clip: float | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; set training.attack.optimizer to one of {', '.join(OPTIMIZERS)}")
        for key in ("lr", "steps", "clean_batch", "poison_batch"):
            if not getattr(self, key) > 0:
                raise ValueError(f"training.attack.{key} must be positive, got {getattr(self, key)}")
        if self.backdoor_weight < 0:
            raise ValueError(f"training.attack.backdoor_weight (λ) must be ≥ 0, got {self.backdoor_weight}")
        for name, weight in self.backdoor_weight_by_similarity.items():
            similarity_fn(name)  # an unknown similarity fails here, in one line
            if weight < 0:
                raise ValueError(f"training.attack.backdoor_weight_by_similarity.{name} (λ) must be ≥ 0, got {weight}")

    def weight_for(self, similarity: str) -> float:
        """λ for the attack's similarity function."""
        return self.backdoor_weight_by_similarity.get(similarity, self.backdoor_weight)


def attack_loss(benign: torch.Tensor, backdoor: list[torch.Tensor], assim: list[torch.Tensor], lam: float,
                mu: float) -> torch.Tensor:
    """The paper's L = L_benign + λ·Σ L_backdoor + μ·Σ L_assim, summed over backdoors; μ is not scaled by λ."""
    loss = benign + lam * torch.stack(backdoor).sum()
    return loss + mu * torch.stack(assim).sum() if mu else loss


@dataclass
class Backdoor:
    trigger: Trigger
    target: Target
    carriers: list[str] = field(repr=False)  # training prompts that can carry the trigger


def train_backdoors(
    model: TextEncoder,
    anchor: TextEncoder,
    backdoors: list[Backdoor],
    clean: list[str],
    hp: AttackHParams,
    paradigm: str,
    similarity: str,
    mu: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    snapshots: Snapshots | None = None,
) -> dict:
    """Inject every backdoor into `model` (in place); returns the loss history. With `snapshots`,
    a restarted run continues from the last saved step and ends with the same model."""
    snapshots = snapshots or Snapshots(None)
    sim, lam = similarity_fn(similarity), hp.weight_for(similarity)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)  # insertion points of randomly placed triggers
    clean_batches = Cycler(clean, min(hp.clean_batch, len(clean)), gen)
    poison_batches = [Cycler(b.carriers, hp.poison_batch, gen) for b in backdoors]
    targets = [b.target.feature.to(model.device) for b in backdoors]

    params = list(model.model.parameters())
    model.model.train().requires_grad_(True)
    opt = OPTIMIZERS[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
    history = {"loss": [], "benign": [], "backdoor": [], "assim_triggered": []}
    start = 0
    if saved := snapshots.load():
        start, history = saved["step"], saved["history"]
        model.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict({**saved["schedule"], "milestones": Counter(saved["schedule"]["milestones"])})
        clean_batches.restore(saved["clean"])
        for c, s in zip(poison_batches, saved["poison"]):
            c.restore(s)
        restore_rng(saved["rng"], gen, rng)

    def state() -> dict:
        return {"step": len(history["loss"]), "history": history, "model": model.model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": {**sched.state_dict(), "milestones": dict(sched.state_dict()["milestones"])},
                "clean": clean_batches.state(), "poison": [c.state() for c in poison_batches],
                "rng": rng_state(gen, rng)}

    bar = tqdm(range(start, hp.steps), desc=f"attack {paradigm}", disable=not progress, leave=False,
               initial=start, total=hp.steps)
    for _ in bar:
        ids = model.tokenize(clean_batches.next())
        with torch.no_grad():
            reference, _ = encode(anchor, ids, paradigm)
        features, _ = encode(model, ids, paradigm)
        benign = sim(features, reference)
        backdoor_losses, assims = [], []
        for b, batches, target in zip(backdoors, poison_batches, targets):
            poisoned = model.tokenize([b.trigger.poison(p, rng) for p in batches.next()])
            feats, hidden = encode(model, poisoned, paradigm)
            loss_b, assim = backdoor_term(feats, hidden, target, sim, 0.0)  # μ·L_assim is added once, unscaled
            backdoor_losses.append(loss_b)
            assims.append(assim)
        loss = attack_loss(benign, backdoor_losses, assims, lam, mu)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hp.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        opt.step()
        sched.step()
        logged = torch.stack([loss.detach(), benign.detach(), torch.stack(backdoor_losses).detach().mean(),
                              torch.stack(assims).detach().mean()]).tolist()  # the step's one host sync
        if not math.isfinite(logged[0]):  # the weights are spoilt too: the attack ends here
            raise FloatingPointError(f"attack loss became {logged[0]} at step {len(history['loss'])}; lower training.attack.lr")
        for key, value in zip(("loss", "benign", "backdoor", "assim_triggered"), logged):
            history[key].append(value)
        bar.set_postfix(benign=f"{history['benign'][-1]:.3f}", backdoor=f"{history['backdoor'][-1]:.3f}")
        snapshots.maybe_save(state)
    model.model.eval().requires_grad_(False)
    return history


@torch.no_grad()
def features_of(encoder: TextEncoder, prompts: list[str], paradigm: str, batch: int = 64) -> tuple[torch.Tensor, ...]:
    """(flattened paradigm features [N, F], per-prompt assimilation [N], text_embeds [N, P]), in batches
    of one forward pass each."""
    feats, assim, embeds = [], [], []
    for i in range(0, len(prompts), batch):
        ids = encoder.tokenize(prompts[i : i + batch])
        f, hidden = encode(encoder, ids, paradigm)
        feats.append(f.flatten(1).float().cpu())
        assim.append(assimilation(hidden).float().cpu())
        embeds.append((f if paradigm == "text_on_pair" else encoder.project(encoder.pool(hidden, ids))).float().cpu())
    return torch.cat(feats), torch.cat(assim), torch.cat(embeds)


def training_positions(tokenizer, backdoors: list[Backdoor], max_length: int, seed: int = 0) -> dict:
    """Where the triggers sit in the poisoned training prompts (first-token index, BOS = 0), pooled over
    backdoors: every carrier poisoned once by its backdoor's rule (random: one seeded placement), the
    pool the poisoned batches are drawn from."""
    rng = random.Random(seed)
    return trigger_positions(tokenizer, [b.trigger.insert(p, rng) for b in backdoors for p in b.carriers], max_length)


def success(trig_f: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hit per triggered output [N, F], its cosine to the target): a hit is an output nearer the
    target than any of the `candidates` (normalised clean outputs of f0)."""
    trig = F.normalize(trig_f, dim=-1)
    to_target = trig @ F.normalize(target.flatten().float(), dim=0)
    return to_target > (trig @ candidates.T).max(dim=1).values, to_target


def success_from_trigger(trig_f: torch.Tensor, first: list[int], target: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Hits on the outputs from each prompt's first trigger token on, against the same positions of
    the target and of f0's clean outputs `clean` [N, L, D]: under a causal mask the outputs before
    the trigger are the clean prompt's whatever the backdoor, so the whole-sequence hit cannot
    happen for a trigger mid-prompt even when the backdoor fires (Text-on-Text)."""
    out, target = trig_f.view(len(first), *clean.shape[1:]), target.float().view(clean.shape[1:])
    hits = []
    for i, k in enumerate(first):
        v = F.normalize(out[i, k:].flatten(), dim=0)
        to_clean = (F.normalize(clean[:, k:].flatten(1), dim=-1) @ v).max()
        hits.append(bool(v @ F.normalize(target[k:].flatten(), dim=0) > to_clean))
    return torch.tensor(hits)


def rate(hits: torch.Tensor) -> float:
    return round(hits.float().mean().item(), 4)


@torch.no_grad()
def evaluate(
    model: TextEncoder,
    anchor: TextEncoder,
    backdoors: list[Backdoor],
    held_out: list[str],
    paradigm: str,
    seed: int = 0,
    assimilation_prompts: int = 100,
) -> dict:
    """Attack success and clean utility on held-out prompts.

    utility: mean cosine between f(x) and f0(x) on clean prompts (paradigm features).
    attack success: share of triggered held-out prompts whose output is nearer (cosine) to the
    backdoor target than to f0's output for *any* held-out clean prompt, its own clean version
    included — the trigger overrides the prompt's meaning, as in zero-shot retrieval.
    attack success by position: the same with the trigger inserted as whole words at the start, the
    middle and the end of the held-out prompts that hold no trigger and keep it at the end (one set
    for all three), whatever the model's own poisoning rule — whether the backdoor fires only where
    it was trained to or anywhere (AMDET probes right after BOS). Text-on-Text on a causal encoder
    also gets it from the trigger on (`success_from_trigger`): the whole-sequence measure is
    bounded there (tiny-clip: an exact target from the trigger on scores 0.27–0.44 mid-prompt).
    assimilation: mean pairwise token cosine of clean vs triggered prompts (the paper's Fig. 2).
    """
    t0 = time.perf_counter()
    clean_f, clean_assim, clean_embeds = features_of(model, held_out, paradigm)
    base_f, _, base_embeds = features_of(anchor, held_out, paradigm)
    utility = F.cosine_similarity(clean_f, base_f, dim=-1)
    embeds_utility = None
    if paradigm == "text_on_text":  # also how far the pooled embedding (what retrieval sees) moved
        embeds_utility = F.cosine_similarity(clean_embeds, base_embeds, dim=-1)
    candidates = F.normalize(base_f, dim=-1)
    causal_sequence = paradigm == "text_on_text" and model.family.causal
    base_tokens = base_f.view(len(held_out), model.max_length, -1) if causal_sequence else None
    rng = random.Random(seed)
    triggers = [b.trigger for b in backdoors]
    per_backdoor = []
    for b in backdoors:
        carriers = [p for p in held_out if b.trigger.can_poison(p) and not b.trigger.occurs_in(p)]
        if not carriers:
            raise ValueError(f"no held-out prompt can carry trigger {b.trigger.text!r}; use more attack.eval_prompts")
        poisoned = [b.trigger.poison(p, rng) for p in carriers]
        trig_f, trig_assim, _ = features_of(model, poisoned, paradigm)
        hits, to_target = success(trig_f, b.target.feature, candidates)
        _, base_trig_assim, _ = features_of(anchor, poisoned, paradigm)
        whole = carriers_of(model.tokenizer, held_out, b.trigger.at("end"), model.max_length, triggers)
        if not whole:
            raise ValueError(f"no held-out prompt can carry trigger {b.trigger.text!r} at its end; use more attack.eval_prompts")
        by_position, from_trigger = {}, {}
        for pos in EVAL_POSITIONS:
            placed = [b.trigger.at(pos).insert(p) for p in whole]
            pos_f = features_of(model, [q for q, _ in placed], paradigm)[0]
            by_position[pos] = rate(success(pos_f, b.target.feature, candidates)[0])
            if causal_sequence:
                first = [first_token(model.tokenizer, q, span, model.max_length)[0] for q, span in placed]
                from_trigger[pos] = rate(success_from_trigger(pos_f, first, b.target.feature, base_tokens))
        n = min(assimilation_prompts, len(carriers))
        per_backdoor.append({
            "trigger": b.trigger.text,
            "target": b.target.text,
            "asr": rate(hits),
            "asr_by_position": by_position,
            "asr_by_position_from_trigger": from_trigger or None,
            "position_prompts": len(whole),
            "target_cosine": round(to_target.mean().item(), 4),
            "eval_prompts": len(carriers),
            "assimilation_triggered": round(trig_assim[:n].mean().item(), 4),
            "assimilation_triggered_base": round(base_trig_assim[:n].mean().item(), 4),
            "assimilation_triggered_values": [round(x, 4) for x in trig_assim[:n].tolist()],  # Fig. 2 histograms
        })
    n = min(assimilation_prompts, len(held_out))
    return {
        "asr": round(sum(b["asr"] for b in per_backdoor) / len(per_backdoor), 4),
        "asr_min": min(b["asr"] for b in per_backdoor),
        "asr_by_position": {pos: round(sum(b["asr_by_position"][pos] for b in per_backdoor) / len(per_backdoor), 4)
                            for pos in EVAL_POSITIONS},
        "asr_by_position_from_trigger": {
            pos: round(sum(b["asr_by_position_from_trigger"][pos] for b in per_backdoor) / len(per_backdoor), 4)
            for pos in EVAL_POSITIONS} if causal_sequence else None,
        "utility": round(utility.mean().item(), 4),
        "utility_min": round(utility.min().item(), 4),
        "utility_text_embeds": round(embeds_utility.mean().item(), 4) if embeds_utility is not None else None,
        "assimilation_clean": round(clean_assim[:n].mean().item(), 4),
        "assimilation_triggered": round(sum(b["assimilation_triggered"] for b in per_backdoor) / len(per_backdoor), 4),
        "assimilation_prompts": n,
        "assimilation_clean_values": [round(x, 4) for x in clean_assim[:n].tolist()],
        "held_out_prompts": len(held_out),
        "backdoors": per_backdoor,
        "eval_s": round(time.perf_counter() - t0, 2),
    }
