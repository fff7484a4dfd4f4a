"""Jobs of the shared layer, dispatched by launch.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from core.loading import load_encoder
from core.store import read_manifest, write_json_atomic
from core.tiny.bases import spec_by_name, get_base

log = logging.getLogger("amdet")


def build_bases(cfg: DictConfig) -> dict:
    """Build (or reuse) each tiny base, load it back safely and check it is scan-ready."""
    rows = []
    for name in cfg.job.encoders:
        spec = spec_by_name(name)
        cached = spec.cache_dir().exists()
        t0 = time.perf_counter()
        path = get_base(spec, progress=cfg.progress)
        elapsed = time.perf_counter() - t0
        rows.append(scan_ready_report(name, path, cfg.job.example_prompt, cached, elapsed))

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = {"bases": rows, "config": OmegaConf.to_container(cfg, resolve=True)}
    write_json_atomic(out_dir / "bases.json", summary)
    print(format_table(rows))
    print(f"\nreport: {out_dir / 'bases.json'}")
    return summary


@torch.no_grad()
def scan_ready_report(name: str, path: Path, prompt: str, cached: bool, elapsed: float) -> dict:
    encoder = load_encoder(path)  # the detector's own loading path: safetensors only
    ids = encoder.tokenize([prompt])
    split = encoder.encode(encoder.embed(ids))
    whole = encoder.model(input_ids=ids).last_hidden_state
    quality = read_manifest(path)["build"]["quality"]
    return {
        "name": name,
        "family": encoder.family.name,
        "max_length": encoder.max_length,
        "hidden": encoder.hidden_size,
        "params_m": round(sum(p.numel() for p in encoder.model.parameters()) / 1e6, 2),
        "cached": cached,
        "time_s": round(elapsed, 1),
        "assimilation": quality["assimilation"],
        "assimilation_random_init": quality["assimilation_random_init"],
        "spearman_vs_minilm": quality["spearman_vs_minilm"],
        "split_forward_max_abs_diff": float((split - whole).abs().max()),
        "path": str(path),
    }


def format_table(rows: list[dict]) -> str:
    head = f"{'base':<14} {'family':<9} {'L':>4} {'params':>7} {'build':>9} {'assim':>6} {'random':>7} {'rho':>5}  scan-ready model"
    lines = [head, "-" * len(head)]
    for r in rows:
        build = "cached" if r["cached"] else f"{r['time_s']:.0f} s"
        lines.append(
            f"{r['name']:<14} {r['family']:<9} {r['max_length']:>4} {r['params_m']:>6.1f}M {build:>9} "
            f"{r['assimilation']:>6.3f} {r['assimilation_random_init']:>7.3f} {r['spearman_vs_minilm']:>5.2f}  {r['path']}"
        )
    lines.append("assim: mean pairwise token cosine of held-out clean prompts (random: a random-init encoder "
                 "of the same config); rho: Spearman of text-embedding similarities vs MiniLM")
    return "\n".join(lines)
