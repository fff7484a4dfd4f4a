"""`python launch.py job=scan scan.model_path=DIR scan.anchor_path=DIR0 hydra.run.dir=OUT`: AMDET's
scan of one model (amdet.job.scan_to writes OUT/result.json), then its evaluation against the
store's ground truth (truth, Sim) added to the same record. A bare HF directory has no truth: the
record then holds the detection alone."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from amdet.job import scan_to as detect_to
from core.loading import load_encoder
from core.records import write_record
from evaluation.evaluate import evaluate


def run(cfg: DictConfig) -> dict:
    return scan_to(Path(HydraConfig.get().runtime.output_dir), cfg)


def scan_to(out: Path, cfg: DictConfig) -> dict:
    """The detection, written; then the record with its evaluation, written over it."""
    record = detect_to(out, cfg)
    model = load_encoder(cfg.scan.model_path, cfg.device)  # the detector's copy is gone with its job
    found = evaluate(cfg, Path(cfg.scan.model_path), model, record, out)
    record = {**record, "truth": found["truth"], "sim": found["sim"], "times": {**record["times"], "eval_s": found["eval_s"]}}
    write_record(out, {k: v for k, v in record.items() if k != "schema"})
    if found["sim"] is not None:
        print(f"evaluation: {found['truth']['kind']} with trigger(s) {found['truth']['triggers']}, Sim {found['sim']:.3f}")
    return record
