"""AMDET as a registered detector (conf/detector/amdet.yaml): the scan of amdet.job on the model the
harness hands it, reading its settings from the `scan` and `losses` groups."""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

from amdet.job import scan
from core.detectors import Context


def detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context) -> dict:
    cfg = context.cfg.copy()
    with open_dict(cfg):
        cfg.scan.model_path, cfg.scan.anchor_path = str(model_dir), str(anchor_dir)
    return scan(out, cfg, context.model, context.anchor, observe=context.observe)
