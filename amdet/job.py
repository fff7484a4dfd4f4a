"""`python launch.py job=scan scan.model_path=DIR scan.anchor_path=DIR0 hydra.run.dir=OUT`.

Scans one HF-format text encoder against its clean anchor and writes OUT/result.json with the
verdict, the score, the thresholds used and their source, every check's log, per-phase times and
provenance. Any failure (a mismatched or corrupt model, NaNs) ends in a result.json with
`status: "error"` and the reason, never in a half-written result.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from amdet.checks import CheckThresholds
from amdet.inversion import LossWeights
from amdet.landscape import LandscapeConfig
from amdet.outputs import write_artifacts, write_result
from amdet.scan import ScanConfig, scan
from core.loading import load_encoder
from core.prompts import make_prompt_source
from core.provenance import provenance
from core.settings import from_config

log = logging.getLogger("amdet")


def thresholds_of(s: DictConfig) -> tuple[CheckThresholds, str]:
    """The scan's thresholds and where they came from (a file given by scan.thresholds, or the config)."""
    values = OmegaConf.to_container(s.checks, resolve=True)
    source = f"config: {s.profile}"
    if s.thresholds:
        path = Path(s.thresholds)
        if not path.is_file():
            raise FileNotFoundError(f"thresholds file not found: {path}; pass a YAML file written by job=calibrate")
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        values.update(loaded.get("checks", loaded))
        source = f"file: {path}"
    return from_config(CheckThresholds, values, "scan.checks"), source


def scan_config(s: DictConfig) -> tuple[ScanConfig, str]:
    thresholds, source = thresholds_of(s)
    opt = OmegaConf.to_container(s.inversion, resolve=True)
    return ScanConfig(
        **opt,
        seed=s.seed,
        weights=from_config(LossWeights, s.weights, "scan.weights"),
        thresholds=thresholds,
        landscape=from_config(LandscapeConfig, s.landscape, "scan.landscape"),
    ), source


def run(cfg: DictConfig) -> dict:
    return scan_to(Path(HydraConfig.get().runtime.output_dir), cfg)


def scan_to(out: Path, cfg: DictConfig) -> dict:
    s = cfg.scan
    t0 = time.perf_counter()
    base = {"model_path": str(s.model_path), "anchor_path": str(s.anchor_path),
            "config": OmegaConf.to_container(cfg, resolve=True), "provenance": provenance()}
    try:
        if not s.model_path or not s.anchor_path:
            raise ValueError("give the model to scan and its clean anchor: scan.model_path=DIR scan.anchor_path=DIR")
        scan_cfg, threshold_source = scan_config(s)
        t = time.perf_counter()
        model = load_encoder(s.model_path, cfg.device)
        anchor = load_encoder(s.anchor_path, cfg.device)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        prompts = make_prompt_source(cfg.prompts).load(s.prompts, seed=s.seed)
        prompts_s = time.perf_counter() - t
        found = scan(model, anchor, prompts, scan_cfg, cfg.progress)
        files = write_artifacts(out, found)
    except Exception as exc:  # noqa: BLE001 — every failure must end in a result that says so
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        write_result(out, {**base, "status": "error", "reason": reason, "time_s": round(time.perf_counter() - t0, 2)})
        raise
    times = {"load_s": load_s, "prompts_s": prompts_s, **found["times"]}
    result = {
        **base,
        "status": "ok",
        "verdict": found["verdict"],
        "score": found["score"],
        "landscape_ratio": found["landscape_ratio"],
        "best_running_loss": found["best_running_loss"],
        "steps": found["steps"],
        "thresholds": vars(scan_cfg.thresholds),
        "thresholds_source": threshold_source,
        "checks": found["checks"],
        "shallow": found["shallow"],
        "files": files,
        "times": {k: round(v, 3) for k, v in times.items()},
        "time_s": round(time.perf_counter() - t0, 2),
    }
    path = write_result(out, result)
    print(f"{result['verdict']} (score {result['score']:.3f}, landscape {result['landscape_ratio']:.2f}, "
          f"{result['steps']} steps, {result['time_s']:.1f} s) → {path}")
    return result
