"""`python launch.py job=scan scan.model_path=DIR scan.anchor_path=DIR0 hydra.run.dir=OUT`.

Scans one HF-format text encoder against its clean anchor and writes OUT/result.json with the
verdict, the score, the thresholds used and their source, every check's log, per-phase times and
provenance. Any failure (a mismatched or corrupt model, NaNs) ends in a result.json with
`status: "error"` and the reason, never in a half-written result.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from amdet.calibrate import observing
from amdet.checks import CheckThresholds
from amdet.fidelity import trigger_similarities
from amdet.inversion import LossWeights
from amdet.landscape import LandscapeConfig
from amdet.outputs import write_artifacts, write_result
from amdet.profiles import check_disjoint, find_profile, load_profile, profile_checks, require_file
from amdet.scan import ScanConfig, scan
from core.encoders import TextEncoder
from core.errors import one_line
from core.loading import load_encoder
from core.prompts import make_prompt_source
from core.provenance import provenance
from core.settings import from_config
from core.snapshot import snapshots_for
from core.store import MANIFEST, read_manifest

log = logging.getLogger("amdet")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def thresholds_of(s: DictConfig, paths: DictConfig, model: TextEncoder, observe: bool) -> tuple[CheckThresholds, dict]:
    """The scan's thresholds and where they came from: scan.thresholds=FILE, else the calibrated
    profile matching the model's family and width, else the config (the paper's CLIP-L values)."""
    values = OmegaConf.to_container(s.checks, resolve=True)
    source = {"source": f"config: {s.profile}", "score_cut": None}
    path = Path(s.thresholds) if s.thresholds else find_profile(paths.get("profiles_dir"), model.family.name, model.hidden_size)
    if path is not None and not observe:
        profile = load_profile(path)
        check_disjoint(profile, s.model_path, f"profile {path}")
        values.update(profile_checks(profile))
        fitted_with, current = profile.get("calibration", {}).get("scan", {}), OmegaConf.to_container(s, resolve=True)
        for key in ("prompts", "inversion", "weights"):
            if key in fitted_with and fitted_with[key] != current.get(key):
                log.warning("profile %s was fitted with other scan.%s settings than this scan uses; its "
                            "thresholds may not transfer (recalibrate with these settings)", path, key)
        kind = "file" if s.thresholds else "profile"
        source = {"source": f"{kind}: {path}", "profile": profile.get("profile"), "score_cut": profile.get("score_cut")}
    thresholds = from_config(CheckThresholds, values, "scan.checks")
    if observe:
        thresholds, source = observing(thresholds), {"source": "calibration: observe mode", "score_cut": None}
    return thresholds, source


def thresholds_defaults(s: DictConfig) -> CheckThresholds:
    """The thresholds in the config itself (validated), before any profile or file."""
    return from_config(CheckThresholds, OmegaConf.to_container(s.checks, resolve=True), "scan.checks")


def scan_config(s: DictConfig, thresholds: CheckThresholds) -> ScanConfig:
    opt = OmegaConf.to_container(s.inversion, resolve=True)
    return ScanConfig(
        **opt,
        seed=s.seed,
        weights=from_config(LossWeights, s.weights, "scan.weights"),
        thresholds=thresholds,
        landscape=from_config(LandscapeConfig, s.landscape, "scan.landscape"),
    )


def ground_truth(model_path: str, model: TextEncoder, found: dict) -> tuple[dict | None, float | None]:
    """What the model store knows of the model (nothing for a bare HF directory) and, for a
    backdoored model, Sim of the reversed feature against each real trigger (best of them)."""
    if not (Path(model_path) / MANIFEST).is_file():
        return None, None
    m = read_manifest(model_path)
    truth = {"kind": m.get("kind"), "encoder": m.get("encoder"), "seed": m.get("seed"), "config_hash": m.get("config_hash")}
    if m.get("kind") == "benign":
        truth.update(run_id=m.get("run_id"), step=m.get("step"))
    if m.get("kind") != "backdoor":
        return truth, None
    backdoors = m.get("backdoors", [])
    truth.update(paradigm=m.get("paradigm"), triggers=[b["trigger"]["text"] for b in backdoors],
                 targets=[b["target"]["text"] for b in backdoors])
    sims = trigger_similarities(model, found["v"], backdoors, found["test_prompts"])
    truth["sims"] = sims
    known = [x for x in sims if x is not None]
    return truth, (max(known) if known else None)


def shallow_source(cfg: DictConfig) -> DictConfig:
    """The shallow dataset's prompt source: scan.source names a conf/prompts option; null = `prompts`."""
    name = cfg.scan.get("source")
    if not name:
        return cfg.prompts
    path = CONF_DIR / "prompts" / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in (CONF_DIR / "prompts").glob("*.yaml")))
        raise ValueError(f"unknown scan.source '{name}'; choose one of {options} (conf/prompts/) or null")
    return OmegaConf.load(path)


def check_paths(s: DictConfig) -> None:
    if not s.model_path or not s.anchor_path:
        raise ValueError("give the model to scan and its clean anchor: scan.model_path=DIR scan.anchor_path=DIR")
    if s.thresholds:
        require_file(s.thresholds)


def run(cfg: DictConfig) -> dict:
    return scan_to(Path(HydraConfig.get().runtime.output_dir), cfg)


def scan_to(out: Path, cfg: DictConfig, observe: bool = False, anchor: TextEncoder | None = None,
            extra: dict | None = None, earlier_times: dict | None = None) -> dict:
    """Scan cfg.scan.model_path against cfg.scan.anchor_path; write out/result.json (ok or error).

    observe: the calibration mode (checks from the first step, no early stop, no verdict rule).
    anchor: the anchor already loaded (a cell job's base); extra: more fields for result.json;
    earlier_times: phase times (seconds) measured before the scan, e.g. a cell's training.
    """
    s = cfg.scan
    t0 = time.perf_counter()
    base = {**(extra or {}), "model_path": str(s.model_path), "anchor_path": str(s.anchor_path),
            "config": OmegaConf.to_container(cfg, resolve=True), "provenance": provenance()}
    try:
        check_paths(s)
        t = time.perf_counter()
        model = load_encoder(s.model_path, cfg.device)
        anchor = anchor or load_encoder(s.anchor_path, cfg.device)
        load_s = time.perf_counter() - t
        thresholds, source = thresholds_of(s, cfg.paths, model, observe)
        scan_cfg = scan_config(s, thresholds)
        if observe:  # calibration fits on the full statistics, and nothing is decided to stop on
            scan_cfg = dataclasses.replace(scan_cfg, check_early_exit=False)
        t = time.perf_counter()
        prompts = make_prompt_source(shallow_source(cfg)).load(s.prompts, seed=s.seed)
        prompts_s = time.perf_counter() - t
        snapshots = snapshots_for(cfg, "scan")
        found = scan(model, anchor, prompts, scan_cfg, cfg.progress, snapshots)
        files = write_artifacts(out, found)
        scan_s = time.perf_counter() - t0  # the detection's cost; Sim below is evaluation
        t = time.perf_counter()
        truth, sim = ground_truth(s.model_path, model, found)
        sim_s = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 — every failure must end in a result that says so
        write_result(out, {**base, "status": "error", "reason": one_line(exc), "traceback": traceback.format_exc(),
                           **({"times": earlier_times} if earlier_times else {}),
                           "time_s": round(time.perf_counter() - t0, 2)})
        raise
    times = {**(earlier_times or {}), "load_s": load_s, "prompts_s": prompts_s, **found["times"]}
    detection_s = sum(found["times"].values())
    cut = source["score_cut"]
    result = {
        **base,
        "status": "ok",
        "model": {"family": model.family.name, "hidden_size": model.hidden_size, "max_length": model.max_length},
        "verdict": None if observe else found["verdict"],  # an observing scan decides nothing
        "score": found["score"],
        "score_cut": cut,
        "score_verdict": None if cut is None else ("backdoor" if found["score"] > cut else "benign"),
        "sim": sim,
        "truth": truth,
        "landscape_ratio": found["landscape_ratio"],
        "best_running_loss": found["best_running_loss"],
        "steps": found["steps"],
        "resumed_from_step": found["resumed_from_step"],  # a requeued scan continued its inversion here
        "thresholds": vars(scan_cfg.thresholds),
        "thresholds_source": source["source"],
        "checks": found["checks"],
        "shallow": found["shallow"],
        "files": files,
        "times": {k: round(v, 3) for k, v in {**times, "sim_s": sim_s}.items()},
        "detection_s": round(detection_s, 2),  # the detector's own phases: features, inversion, checks, landscape
        "time_s": round(scan_s, 2),  # one detection: loading, prompts, the scan, its artefacts
    }
    path = write_result(out, result)
    snapshots.clear()
    sim_text = f", Sim {sim:.3f}" if sim is not None else ""
    print(f"{result['verdict'] or 'observed'} (score {result['score']:.3f}, landscape {result['landscape_ratio']:.2f}, "
          f"{result['steps']} steps{sim_text}, {result['time_s']:.1f} s) → {path}")
    return result
