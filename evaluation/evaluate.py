"""The evaluation step after a detector: its detection against the model's ground truth.

Every record gets `truth` (evaluation/truth.py). A detector that reverses a trigger feature lists
it in its files as `v` (a safetensors tensor "v" [k, D]: vectors inserted where the encoder inserts
them, AMDET's convention) and may list `held_out_prompts` (benign prompts its search never saw);
for a backdoored model its record then gets `sims`, Sim against each real trigger, and `sim`, the
best of them (the paper's Sim). Sim is measured on the held-out prompts, else on the defender's
share of `prompts`.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig
from safetensors.torch import load_file

from core.encoders import TextEncoder
from core.prompts import make_prompt_source
from evaluation.fidelity import trigger_similarities
from evaluation.truth import backdoors, ground_truth
from prompt_tuning.repair import repair_detection

SIM_PROMPTS = 200  # defender prompts for Sim when the detector held none out


def evaluate(cfg: DictConfig, model_dir: Path, model: TextEncoder, detection: dict, out: Path,
             detector: str | None = None) -> dict:
    """The fields evaluation adds to one detection (written by the detector under `out`): the truth, Sim
    of a reversed feature, whether a predicted target class is the true one, and, for a detector in
    `repair.detectors` that flags a backdoored prompt-tuned model, the repair test of its trigger."""
    t = time.perf_counter()
    truth = ground_truth(model_dir)
    files = detection.get("files") or {}
    sims = None
    if truth and truth["kind"] == "backdoor" and "v" in files:
        v = load_file(str(out / files["v"]))["v"]
        sims = trigger_similarities(model, v, backdoors(model_dir), sim_prompts(cfg, out, files))
    known = [x for x in sims or [] if x is not None]
    if truth and truth.get("target_class") is not None and detection.get("predicted_target") is not None:
        truth["target_found"] = int(detection["predicted_target"]) == int(truth["target_class"])
    repaired = None
    if truth and truth.get("model") == "prompt_tuned" and detector in list(cfg.repair.get("detectors") or []):
        repaired = repair_detection(model_dir, model, detection, out, cfg.repair, int(cfg.seed))
    return {"truth": None if truth is None else {**truth, **({"sims": sims} if sims is not None else {})},
            "sim": max(known) if known else None, "repair": repaired, "eval_s": round(time.perf_counter() - t, 3)}


def sim_prompts(cfg: DictConfig, out: Path, files: dict) -> list[str]:
    if "held_out_prompts" in files:
        return (out / files["held_out_prompts"]).read_text().splitlines()
    return make_prompt_source(cfg.prompts).load(SIM_PROMPTS, seed=0, role="defender")
