"""Pretrain a tiny text encoder by distilling the paired tower (all-MiniLM-L6-v2) into it.

Per prompt, three signals:
- token features: each tiny-encoder token is matched (through a fixed orthogonal map to 384-d)
  to the mean of the MiniLM token features whose characters it overlaps;
- the pooled token (EOS for CLIP, last position for SigLIP) to MiniLM's sentence embedding;
- text_embeds ↔ paired-tower embeddings, contrastively — softmax InfoNCE for the CLIP family,
  the pairwise sigmoid loss for SigLIP — which makes the projection meaningful for Text-on-Pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.contrastive import contrastive_loss
from core.encoders import TextEncoder
from core.tiny.paired_tower import PairedTower, sentence_embedding


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3  # peak of a one-cycle schedule
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"pretrain steps must be ≥ 0 and batch_size, lr > 0 (got {self})")


@dataclass
class DistillTargets:
    """Teacher signals precomputed once for the whole prompt pool (the teacher is frozen)."""

    input_ids: torch.Tensor  # [N, L] student tokens
    token_targets: torch.Tensor  # [N, T, 384] teacher features aligned to student positions < T (fp16)
    token_mask: torch.Tensor  # [N, T] which student positions have a target
    sentence: torch.Tensor  # [N, 384] teacher sentence embeddings (normalised)


def overlap_matrix(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """[S, T] weights: student token i averages the teacher tokens whose char spans overlap its span."""
    lo = np.maximum(student[:, None, 0], teacher[None, :, 0])
    hi = np.minimum(student[:, None, 1], teacher[None, :, 1])
    w = (hi > lo).astype(np.float32)
    w[student[:, 1] <= student[:, 0]] = 0  # special tokens have empty spans
    w[:, teacher[:, 1] <= teacher[:, 0]] = 0
    rows = w.sum(1, keepdims=True)
    return np.divide(w, rows, out=np.zeros_like(w), where=rows > 0)


@torch.no_grad()
def distill_targets(encoder: TextEncoder, tower: PairedTower, prompts: list[str], chunk: int = 256) -> DistillTargets:
    """Tokenise the pool for the student and align MiniLM's token features to the student's tokens."""
    tok = encoder.tokenizer(
        prompts, padding="max_length", truncation=True, max_length=encoder.max_length, return_offsets_mapping=True
    )
    ids = torch.tensor(tok["input_ids"])
    offsets = [np.asarray(o, dtype=np.int64) for o in tok["offset_mapping"]]
    n_real = [int((o[:, 1] > o[:, 0]).nonzero()[0].max()) + 1 if (o[:, 1] > o[:, 0]).any() else 1 for o in offsets]
    width = max(n_real)
    targets = torch.zeros(len(prompts), width, tower.dim, dtype=torch.float16)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    sentence = torch.zeros(len(prompts), tower.dim)
    # teacher batches of similar length: padding to the longest prompt of a random batch wastes ~3×
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(prompts), chunk):
        rows = by_length[start : start + chunk]
        hidden, tmask, toffs = tower.token_features([prompts[i] for i in rows])
        sentence[rows] = sentence_embedding(hidden, tmask).cpu()
        for k, i in enumerate(rows):
            w = torch.from_numpy(overlap_matrix(offsets[i][:width], toffs[k].numpy()))
            targets[i] = (w @ hidden[k].cpu()).half()
            mask[i] = w.sum(1) > 0
    # MiniLM's token features share a large common direction (anisotropy); distil only what is
    # token-specific, or the student's tokens all point one way and every prompt looks assimilated.
    mean = targets[mask].float().mean(0)
    targets[mask] = (targets[mask].float() - mean).half()
    return DistillTargets(ids, targets, mask, sentence)


def distill(
    encoder: TextEncoder,
    prompts: list[str],
    cfg: PretrainConfig,
    tower: PairedTower,
    progress: bool = True,
) -> dict:
    """Train `encoder` in place; returns the loss history and timings."""
    proj = encoder.project(torch.zeros(1, encoder.hidden_size)).shape[-1]
    if proj != tower.dim:
        raise ValueError(f"tiny arch projection_dim is {proj} but the paired tower's embeddings are {tower.dim}-d; set projection_dim: {tower.dim}")
    t0 = time.perf_counter()
    data = distill_targets(encoder, tower, prompts)
    t_targets = time.perf_counter() - t0
    if cfg.steps == 0:
        return {"steps": 0, "loss": [], "targets_s": t_targets, "train_s": 0.0}

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # A fixed orthogonal map student width → 384 (W^T W = I), not a learnt head: it preserves
    # cosines, so the student's own token features must be as diverse as the teacher's. (A learnt
    # head absorbs that diversity and leaves a random-init-like anisotropic encoder.)
    head = torch.nn.Linear(encoder.hidden_size, tower.dim, bias=False).requires_grad_(False)
    torch.nn.init.orthogonal_(head.weight, generator=gen)
    model = encoder.model.train().requires_grad_(True)
    params = list(model.parameters())
    # SigLIP learns a temperature and a bias for its sigmoid loss; CLIP a temperature
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
    logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    params += [logit_scale, logit_bias]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    kind = "sigmoid" if encoder.family.name == "siglip" else "softmax"
    n = len(prompts)
    width = data.token_targets.shape[1]
    trim = encoder.family.causal and encoder.family.pooling == "eos"  # CLIP pads prompts to 77 tokens
    history = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    bar = tqdm(range(cfg.steps), desc=f"pretrain {encoder.family.name}", disable=not progress, leave=False)
    for _ in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        ids = data.input_ids[idx]
        if trim:  # under a causal mask, positions after the last pooled EOS reach no loss term: skip them
            ids = ids[:, : int(encoder.pool_positions(ids).max()) + 1]
        hidden = encoder(ids)
        # token features (every target position precedes its prompt's EOS)
        w = min(width, ids.shape[1])
        pred = head(hidden[:, :w])
        cos = F.cosine_similarity(pred, data.token_targets[idx, :w].float(), dim=-1)
        m = data.token_mask[idx, :w]
        token_loss = (1 - cos)[m].mean()
        # pooled token ↔ sentence embedding, and text_embeds ↔ tower, contrastively
        pooled = encoder.pool(hidden, ids)
        sent = data.sentence[idx]
        pooled_loss = (1 - F.cosine_similarity(head(pooled), sent, dim=-1)).mean()
        embeds = encoder.project(pooled)
        pair_loss = contrastive_loss(embeds, sent, logit_scale, logit_bias, kind)
        loss = token_loss + pooled_loss + pair_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.3f}")
    model.eval().requires_grad_(False)
    return {
        "steps": cfg.steps,
        "loss": history,
        "targets_s": t_targets,
        "train_s": time.perf_counter() - t0 - t_targets,
    }
