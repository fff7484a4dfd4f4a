"""Baseline: a discrete trigger search. Greedy coordinate gradient (GCG, Zou et al. 2023) over the
vocabulary: `tokens` tokens inserted where AMDET inserts v (right after BOS, their token embeddings
without a position embedding of their own), chosen to minimise AMDET's own inversion loss (the
same assimilation objective and weights, `scan.weights`) on the defender's prompts. Each step takes
the loss's gradient with respect to the one-hot tokens, keeps the `top_k` most promising tokens per
slot, tries `candidates` single-token swaps drawn from them on one batch and keeps the best if it
lowers the loss. The paper argues (its challenge ❶) that such discrete search fails on text; this
measures it.

Score: the mean assimilation of held-out defender prompts with the trigger found (higher = more
likely backdoored; AMDET's score with v restricted to tokens). Decides nothing. The trigger is
written as text and as `v` (its token embeddings), so evaluation measures its Sim as for AMDET.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from amdet.checks import mean_assimilation  # noqa: E402
from amdet.inversion import LossWeights, row_losses, shallow_set  # noqa: E402
from core.detectors import Context  # noqa: E402
from core.encoders import TextEncoder  # noqa: E402
from core.prompts import make_prompt_source  # noqa: E402
from core.settings import from_config  # noqa: E402
from core.store import write_lines_atomic  # noqa: E402

FILES = {"v": "v.safetensors", "held_out_prompts": "held_out_prompts.txt", "trigger": "trigger.txt",
         "loss_plot": "gcg_loss.png"}


def detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context, tokens: int = 3, steps: int = 50,
           top_k: int = 64, candidates: int = 64, batch: int = 8, prompts: int = 200, test_share: float = 0.2,
           weights: dict | None = None, seed: int = 0) -> dict:
    for key, value in (("tokens", tokens), ("steps", steps), ("top_k", top_k), ("candidates", candidates),
                       ("batch", batch), ("prompts", prompts)):
        if not value > 0:
            raise ValueError(f"detector.gcg.{key} must be positive, got {value}")
    model, anchor = context.model, context.anchor
    loss_weights = from_config(LossWeights, weights or {}, "detector.gcg.weights")
    t = time.perf_counter()
    texts = make_prompt_source(context.cfg.prompts).load(prompts, seed=seed, role="defender")
    data = shallow_set(model, texts, test_share, seed)
    prompts_s = time.perf_counter() - t
    t = time.perf_counter()
    ids, losses = search(model, anchor, data.hidden[data.train], data.output[data.train], loss_weights,
                         tokens, steps, top_k, candidates, batch, seed)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    v = token_table(model)[ids].detach()
    with torch.no_grad():
        score = mean_assimilation(model, data.hidden[data.test], v)
    score_s = time.perf_counter() - t
    trigger = model.tokenizer.decode(ids.tolist())
    save_file({"v": v.cpu().contiguous()}, out / FILES["v"])
    write_lines_atomic(out / FILES["held_out_prompts"], [texts[i] for i in data.test.tolist()])
    write_lines_atomic(out / FILES["trigger"], [trigger])
    loss_plot(losses, out / FILES["loss_plot"])
    return {"verdict": None, "score": score, "trigger": trigger, "token_ids": ids.tolist(),
            "losses": losses, "final_loss": losses[-1], "files": dict(FILES),
            "times": {"prompts_s": round(prompts_s, 3), "search_s": round(search_s, 3), "score_s": round(score_s, 3)},
            "time_s": round(prompts_s + search_s + score_s, 3)}


def token_table(model: TextEncoder) -> torch.Tensor:
    """The vocabulary's token embeddings [V, D] (the rows the search chooses among)."""
    return model.text.embeddings.token_embedding.weight


def search(model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor, weights: LossWeights,
           tokens: int, steps: int, top_k: int, candidates: int, batch: int, seed: int) -> tuple[torch.Tensor, list[float]]:
    """The token ids [tokens] GCG ends on, and the best loss after each step (on that step's batch)."""
    table = token_table(model)
    vocab = table.shape[0]
    allowed = torch.ones(vocab, dtype=torch.bool, device=table.device)
    allowed[len(model.tokenizer):] = False  # embedding rows beyond the tokenizer's pieces (padded tables) spell nothing
    allowed[[i for i in model.tokenizer.all_special_ids if i < vocab]] = False  # BOS, EOS, padding
    choices = allowed.nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    ids = choices[torch.randint(len(choices), (tokens,), generator=gen)].to(table.device)
    order = torch.randperm(len(hidden), generator=gen)
    losses = []
    for step in range(steps):
        rows = order[(step * batch + torch.arange(batch)) % len(hidden)]  # cycles through the prompts
        h, o = hidden[rows], output[rows]
        onehot = F.one_hot(ids, vocab).to(table.dtype).requires_grad_(True)
        loss = row_losses(model, anchor, h, o, onehot @ table, weights)[0].mean()
        grad = torch.autograd.grad(loss, onehot)[0]
        grad[:, ~allowed] = float("inf")
        top = (-grad).topk(min(top_k, len(choices)), dim=1).indices  # [tokens, top_k]: the steepest descents
        slot = torch.randint(tokens, (candidates,), generator=gen).to(ids.device)
        pick = torch.randint(top.shape[1], (candidates,), generator=gen).to(ids.device)
        tried = ids.repeat(candidates, 1)
        tried[torch.arange(candidates), slot] = top[slot, pick]
        with torch.no_grad():
            tried_loss = candidate_losses(model, anchor, h, o, table[tried], weights)
        best = int(tried_loss.argmin())
        current = float(loss.detach())
        if float(tried_loss[best]) < current:
            ids, current = tried[best], float(tried_loss[best])
        losses.append(current)
    return ids, losses


def candidate_losses(model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor,
                     vs: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """The mean loss over the batch of each candidate trigger (vs: [C, tokens, D]), in passes of
    about `rows_per_pass` rows."""
    n, b = vs.shape[0], hidden.shape[0]
    per_pass = max(1, model.rows_per_pass // b)
    out = []
    for i in range(0, n, per_pass):
        c = vs[i : i + per_pass]
        rows = row_losses(model, anchor, hidden.repeat(len(c), 1, 1), output.repeat(len(c), 1, 1),
                          c.repeat_interleave(b, dim=0), weights)[0]
        out.append(rows.view(len(c), b).mean(dim=1))
    return torch.cat(out)


def loss_plot(losses: list[float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, color="tab:red")
    ax.set_xlabel("GCG step")
    ax.set_ylabel("inversion loss (batch)")
    ax.set_title("discrete trigger search")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
