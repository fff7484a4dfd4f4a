"""Baseline: the relative weight distance ‖θ − θ0‖/‖θ0‖ of the model to its anchor, as a score.
Needs no data and decides nothing; its AUROC is half of the benchmark's difficulty floor."""

from __future__ import annotations

import time
from pathlib import Path

from core.detectors import Context
from core.drift import weight_distance


def detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context) -> dict:
    t = time.perf_counter()
    distance = weight_distance(context.model, context.anchor)
    elapsed = time.perf_counter() - t
    return {"verdict": None, "score": distance, "weight_distance": distance,
            "times": {"distance_s": round(elapsed, 3)}, "time_s": round(elapsed, 3)}
