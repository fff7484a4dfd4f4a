"""`python launch.py job=attack ...`: train one backdoored model and put it in the model store."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from attacks.targets import check_paradigm, draw_targets, pair_target, text_target
from attacks.train import AttackHParams, Backdoor, evaluate, train_backdoors, training_positions
from attacks.objective import similarity_fn
from attacks.triggers import DEFAULT_POOL, carriers, check_trigger_config, contains_any, draw_triggers
from core.encoders import TextEncoder
from core.bases import base_source
from core.loading import load_encoder
from core.prompts import make_prompt_source
from core.provenance import config_hash
from core.settings import from_config
from core.snapshot import snapshots_for
from core.store import model_settings_key, save_model, stored_model

log = logging.getLogger("amdet")


def pool(cfg: DictConfig, name: str | None, what: str) -> list[str]:
    if name not in cfg.pools:
        raise ValueError(f"unknown {what} pool '{name}'; choose one of {', '.join(cfg.pools)} (conf/pools/)")
    return list(cfg.pools[name])


def hparams(cfg: DictConfig) -> AttackHParams:
    hp = OmegaConf.to_container(cfg.training.attack, resolve=True)
    hp["milestones"] = tuple(hp.get("milestones") or ())
    return from_config(AttackHParams, hp, "training.attack")


def attack_prompts(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(held-out, training) prompts of the attack: the attacker's share of `prompts`, never the
    defender's (core/prompts/sources.py ROLES)."""
    a = cfg.attack
    prompts = make_prompt_source(cfg.prompts).load(a.train_prompts + a.eval_prompts, seed=cfg.seed, role="attacker")
    return prompts[: a.eval_prompts], prompts[a.eval_prompts :]


def run(cfg: DictConfig, anchor: TextEncoder | None = None) -> dict:
    """Train and store one backdoored model; `anchor`: the base already loaded (the cell job's)."""
    a = cfg.attack
    out = Path(cfg.job.out)
    key = model_settings_key(cfg, "backdoor")
    # finished models are never redone or overwritten; one made with other settings is refused
    if (stored := stored_model(out, key)) is not None:
        log.info("backdoored model already in the store: %s (delete it to retrain)", out)
        return stored
    # settings are checked before anything expensive is loaded
    check_paradigm(a.paradigm)
    similarity_fn(a.similarity)
    check_trigger_config(a.triggers.level, a.triggers.length, a.triggers.count, a.triggers.position,
                         a.triggers.replaced_character)
    hp = hparams(cfg)
    timing, t0 = {}, time.perf_counter()

    source = base_source(cfg.encoder, cfg.progress)
    anchor = anchor or load_encoder(source, cfg.device)  # f0: frozen, also the Text-on-Text target maker
    model = load_encoder(source, cfg.device)  # f: becomes the backdoored encoder
    timing["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    level = a.triggers.level
    triggers = draw_triggers(
        anchor.tokenizer, level, a.triggers.length, a.triggers.count,
        pool(cfg, a.triggers.pool or DEFAULT_POOL.get(level), "trigger") if not a.triggers.fixed else [],
        seed=cfg.seed, position=a.triggers.position, replaced_character=a.triggers.replaced_character,
        fixed=list(a.triggers.fixed) if a.triggers.fixed else None,
    )
    target_texts = draw_targets(
        pool(cfg, a.targets.pool, "target") if not a.targets.fixed else [], len(triggers), cfg.seed,
        list(a.targets.fixed) if a.targets.fixed else None,
    )
    if a.paradigm == "text_on_text":
        targets = [text_target(anchor, text) for text in target_texts]
    else:
        tiny = bool(cfg.encoder.get("tiny"))
        targets = [pair_target(anchor, c, tiny, a.targets.image_dir, a.image_tower, cfg.device) for c in target_texts]
    timing["targets_s"] = time.perf_counter() - t

    held_out, train = attack_prompts(cfg)
    clean = [p for p in train if not contains_any(p, triggers)]
    backdoors = []
    for trigger, target in zip(triggers, targets):
        usable = carriers(anchor.tokenizer, clean, trigger, anchor.max_length, triggers)
        if not usable:
            raise ValueError(
                f"trigger {trigger.text!r} cannot be carried by any of the {len(clean)} training prompts"
                + (f" (none contains {trigger.replaced_character!r}); set attack.triggers.replaced_character"
                   if trigger.position == "replace" else f" (it falls beyond the encoder's {anchor.max_length} tokens); use a shorter trigger or position=start")
            )
        if len(usable) < hp.poison_batch:
            raise ValueError(
                f"only {len(usable)} of {len(clean)} training prompts can carry trigger {trigger.text!r}, fewer than "
                f"training.attack.poison_batch={hp.poison_batch}: a poisoned batch could never fill; "
                "lower poison_batch, raise attack.train_prompts or pick another replaced character"
            )
        backdoors.append(Backdoor(trigger, target, usable))

    t = time.perf_counter()
    snapshots = snapshots_for(cfg, "attack")
    history = train_backdoors(model, anchor, backdoors, clean, hp, a.paradigm, a.similarity, a.adaptive_mu, cfg.seed,
                              cfg.progress, snapshots)
    timing["train_s"] = time.perf_counter() - t
    metrics = evaluate(model, anchor, backdoors, held_out, a.paradigm, seed=cfg.seed)
    timing["eval_s"] = metrics.pop("eval_s")
    metrics["trigger_position"] = training_positions(anchor.tokenizer, backdoors, anchor.max_length, cfg.seed)

    config = OmegaConf.to_container(cfg, resolve=True)
    manifest = {
        "kind": "backdoor",
        "encoder": cfg.encoder.name,
        "base": str(source),
        "paradigm": a.paradigm,
        "similarity": a.similarity,
        "adaptive_mu": a.adaptive_mu,
        "seed": cfg.seed,
        "prompts": {**make_prompt_source(cfg.prompts).describe("attacker"), "train": len(clean), "held_out": len(held_out)},
        "backdoors": [{"trigger": b.trigger.to_dict(), "target": b.target.to_dict(), "train_carriers": len(b.carriers)}
                      for b in backdoors],
        "metrics": metrics,
        "resumed_from_step": snapshots.resumed_from,  # a requeued job continued its training here
        "history": {k: [round(v, 5) for v in vals] for k, vals in history.items()},
        "config": config,
        "config_hash": config_hash({"encoder": config["encoder"], "training": config["training"]["attack"],
                                    "attack": config["attack"], "prompts": config["prompts"], "seed": cfg.seed}),
        "settings_key": key,  # what a rerun checks before handing this model back
    }
    timing["total_s"] = time.perf_counter() - t0  # the save itself is not counted
    manifest["timing"] = {k: round(v, 2) for k, v in timing.items()}
    save_model(model, out, manifest, train_prompts=clean)
    snapshots.clear()
    print(summary_line(manifest, out))
    return manifest


def summary_line(m: dict, out: Path) -> str:
    met = m["metrics"]
    trig = ", ".join(f"{b['trigger']['text']!r}→{b['target']['text']!r}" for b in m["backdoors"])
    return (
        f"{m['encoder']} {m['paradigm']} [{trig}]  ASR {met['asr']:.3f}  utility {met['utility']:.3f}  "
        f"assimilation clean {met['assimilation_clean']:.3f} / triggered {met['assimilation_triggered']:.3f}  "
        f"{m['timing']['total_s']:.0f} s  → {out}"
    )
