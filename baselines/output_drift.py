"""Baseline: clean-output drift 1 − mean cos(f(x), f0(x)) of the model against its anchor on the
defender's prompts (the defender's share of `prompts`, never a model's training prompts), as a
score. Decides nothing; its AUROC is the other half of the benchmark's difficulty floor."""

from __future__ import annotations

import time
from pathlib import Path

from core.detectors import Context
from core.drift import output_cosines
from core.prompts import make_prompt_source
from core.store import write_lines_atomic

PROMPTS_FILE = "prompts.txt"  # beside the record: the prompts it measured on


def detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context, prompts: int = 200, seed: int = 0) -> dict:
    t = time.perf_counter()
    texts = make_prompt_source(context.cfg.prompts).load(prompts, seed=seed, role="defender")
    write_lines_atomic(out / PROMPTS_FILE, texts)
    prompts_s = time.perf_counter() - t
    t = time.perf_counter()
    drift = 1.0 - output_cosines(context.model, context.anchor, texts).mean().item()
    forward_s = time.perf_counter() - t
    return {"verdict": None, "score": drift, "output_drift": drift, "prompts": len(texts),
            "files": {"prompts": PROMPTS_FILE},
            "times": {"prompts_s": round(prompts_s, 3), "forward_s": round(forward_s, 3)},
            "time_s": round(prompts_s + forward_s, 3)}
