"""`python launch.py job=benign ...`: benign fine-tuned models for the model store.

Two modes:
- checkpoints (the paper's): one fine-tuning run; every `checkpoint_every` steps the encoder is
  saved as a benign model, `benign.models` of them. Checkpoints of one run are correlated; each
  manifest records its run id and step so the analysis can tell them apart.
- independent (cheap): one model per job, its own seed and data order, saved after `benign.steps`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from benign_ft.pairs import PairSet, coco_pair_set, tiny_pairs
from benign_ft.train import BenignHParams, finetune
from core.encoders import TextEncoder
from core.bases import base_source
from core.loading import load_encoder
from core.metrics import assimilation
from core.prompts import make_prompt_source
from core.provenance import config_hash
from core.settings import from_config
from core.snapshot import Snapshots, snapshots_for
from core.store import model_settings_key, read_manifest, save_model, stored_model

log = logging.getLogger("amdet")
MODES = ("checkpoints", "independent")


def hparams(cfg: DictConfig) -> BenignHParams:
    return from_config(BenignHParams, cfg.training.benign, "training.benign")


def planned(cfg: DictConfig) -> dict[int, Path]:
    """Step → model directory of every benign model this job writes."""
    b, out = cfg.benign, Path(cfg.job.out)
    if b.mode not in MODES:
        raise ValueError(f"unknown benign.mode '{b.mode}'; choose one of {', '.join(MODES)}")
    if b.mode == "independent":
        if b.steps <= 0:
            raise ValueError(f"benign.steps must be positive, got {b.steps}")
        return {int(b.steps): out}
    if b.models <= 0 or b.checkpoint_every <= 0:
        raise ValueError(f"benign.models and benign.checkpoint_every must be positive (got {b.models}, {b.checkpoint_every})")
    return {k * b.checkpoint_every: out / f"step{k * b.checkpoint_every:05d}" for k in range(1, b.models + 1)}


def checkpoint_dirs(cfg: DictConfig, steps: set[int]) -> dict[int, Path]:
    """Step → directory of the given checkpoints of a checkpoints-mode run in job.out."""
    b = cfg.benign
    if b.mode != "checkpoints" or any(s <= 0 or s % b.checkpoint_every for s in steps):
        raise ValueError(f"checkpoints {sorted(steps)} need benign.mode=checkpoints and multiples of "
                         f"benign.checkpoint_every={b.checkpoint_every}")
    return {s: Path(cfg.job.out) / f"step{s:05d}" for s in sorted(steps)}


def run_state(cfg: DictConfig, key: str, step: int) -> Snapshots:
    """The run's saved state, to continue it up to `step`; a state already at or past `step` is left for
    the later checkpoints it serves, and this job trains from step 0 (the same run: same seed, same order)."""
    state = Snapshots(Path(cfg.job.out) / RUN_STATE, float(cfg.snapshots.every_s), key=key)
    saved = state.load()
    return Snapshots(None) if saved and saved["step"] >= step else state


def benign_prompts(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(held-out, training) prompts of benign fine-tuning, from the benign share of `prompts` (never
    the defender's); tiny encoders train on the training ones, real ones on their COCO pairs."""
    b = cfg.benign
    prompts = make_prompt_source(cfg.prompts).load(b.eval_prompts + b.train_prompts, seed=cfg.seed, role="benign")
    return prompts[: b.eval_prompts], prompts[b.eval_prompts :]


def pair_set(cfg: DictConfig, hp: BenignHParams, progress: bool, captions: list[str]) -> PairSet:
    """Tiny encoders: `captions` (benign_prompts' training ones) paired by the paired tower; real
    encoders: the COCO-style pairs of benign.pairs."""
    if cfg.encoder.get("tiny"):
        keep = Path(cfg.job.out) if cfg.benign.mode == "checkpoints" else None  # the run's jobs share its pairs
        return tiny_pairs(captions, hp.logit_scale, hp.logit_bias if cfg.encoder.family == "siglip" else None, keep)
    p = cfg.benign.pairs
    return coco_pair_set(p.annotation_file, p.image_dir, cfg.benign.image_tower, p.limit, progress, cfg.device)


@torch.no_grad()
def drift_report(model: TextEncoder, anchor: TextEncoder, prompts: list[str], batch: int = 64) -> dict:
    """How far fine-tuning moved the encoder on held-out prompts, and its clean assimilation."""
    hidden_cos, embeds_cos, assim = [], [], []
    for i in range(0, len(prompts), batch):
        ids = model.tokenize(prompts[i : i + batch])
        h, h0 = model(ids), anchor(ids)
        hidden_cos.append(F.cosine_similarity(h.flatten(1), h0.flatten(1), dim=-1))
        e, e0 = model.project(model.pool(h, ids)), anchor.project(anchor.pool(h0, ids))
        embeds_cos.append(F.cosine_similarity(e, e0, dim=-1))
        assim.append(assimilation(h))
    mean = lambda xs: round(torch.cat(xs).mean().item(), 4)  # noqa: E731
    return {"cosine_to_base": mean(hidden_cos), "cosine_to_base_text_embeds": mean(embeds_cos),
            "assimilation_clean": mean(assim), "held_out_prompts": len(prompts)}


RUN_STATE = "run_state.pt"  # a checkpoints run's last state: a later job continues the run from it


def run(cfg: DictConfig, anchor: TextEncoder | None = None, steps: set[int] | None = None) -> dict:
    """Fine-tune and store benign models; `anchor`: the base already loaded (the cell job's).
    `steps` (checkpoints mode): store only these checkpoints of the run, continuing it from its saved
    state when that is not past them — a sweep's benign cells each take one checkpoint of a shared run."""
    b = cfg.benign
    targets = planned(cfg) if steps is None else checkpoint_dirs(cfg, steps)
    key = model_settings_key(cfg, "benign")  # the run's, not the step's: its checkpoints share it
    # stored checkpoints of this run are kept; one made with other settings is refused
    todo = {step: d for step, d in targets.items() if stored_model(d, key) is None}
    if not todo:
        log.info("all %d benign models already in the store under %s", len(targets), cfg.job.out)
        return {"models": [str(d) for d in targets.values()], "skipped": len(targets)}
    hp = hparams(cfg)
    t0 = time.perf_counter()
    source = base_source(cfg.encoder, cfg.progress)
    anchor = anchor or load_encoder(source, cfg.device)
    model = load_encoder(source, cfg.device)
    held_out, captions = benign_prompts(cfg)
    pairs = pair_set(cfg, hp, cfg.progress, captions)
    setup_s = time.perf_counter() - t0

    config = OmegaConf.to_container(cfg, resolve=True)
    run_settings = {"encoder": config["encoder"], "training": config["training"]["benign"], "benign": config["benign"],
                    "prompts": config["prompts"], "seed": cfg.seed}
    run_id = f"{cfg.encoder.name}-{b.mode}-{key[:10]}"  # the run's settings key: the same for all its checkpoints
    written = []
    train_start = time.perf_counter()

    def save(step: int, loss: float) -> None:
        directory = todo.get(step)
        if directory is None:  # not a model this job keeps, or already stored
            return
        manifest = {
            "kind": "benign",
            "encoder": cfg.encoder.name,
            "base": source,
            "mode": b.mode,
            "run_id": run_id,  # checkpoints sharing a run id are correlated
            "step": step,
            "seed": cfg.seed,
            "pairs": pairs.source,
            "prompts": make_prompt_source(cfg.prompts).describe("benign"),
            "loss": round(loss, 5),
            "resumed_from_step": snapshots.resumed_from,  # a requeued job continued its training here
            "metrics": drift_report(model, anchor, held_out),
            "config": config,
            "config_hash": config_hash({**run_settings, "step": step}),
            "settings_key": key,  # what a rerun checks before keeping this checkpoint
            "timing": {"setup_s": round(setup_s, 2), "train_s": round(time.perf_counter() - train_start, 2)},
        }
        save_model(model, directory, manifest, train_prompts=list(pairs.captions))
        written.append(directory)
        m = manifest["metrics"]
        print(f"{cfg.encoder.name} benign step {step}: loss {loss:.3f}  cosine to base {m['cosine_to_base']:.3f} "
              f"(text_embeds {m['cosine_to_base_text_embeds']:.3f})  assimilation {m['assimilation_clean']:.3f}  → {directory}")

    # the first planned step is the cadence: checkpoint_every, or the one independent step
    snapshots = snapshots_for(cfg, "benign") if steps is None else run_state(cfg, key, max(todo))
    finetune(model, pairs, hp, max(todo), min(targets), save, seed=cfg.seed, progress=cfg.progress, snapshots=snapshots,
             save_at_end=steps is not None)
    if steps is None:
        snapshots.clear()
    return {"models": [str(d) for d in targets.values()], "written": [str(d) for d in written],
            "run_id": run_id, "total_s": round(time.perf_counter() - t0, 2),
            "manifests": [read_manifest(d) for d in written]}
