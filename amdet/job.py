"""AMDET's scan of one HF-format text encoder against its clean anchor (what `job=scan` and
`job=calibrate` run; in a sweep, amdet/detector.py): OUT/result.json with the verdict, the score, the
thresholds used and their source, every check's log, per-phase times and provenance. Any failure (a
mismatched or corrupt model, NaNs) ends in a result.json with `status: "error"` and the reason,
never in a half-written result. The scan sees the model and its anchor only: the ground truth is
evaluation's (evaluation/), after the scan.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from amdet.checks import CheckThresholds, observing
from amdet.inversion import LossWeights
from amdet.landscape import LandscapeConfig
from amdet.outputs import write_artifacts
from amdet.profiles import (check_disjoint, find_profile, load_profile, model_identity, overridden_checks, profile_checks,
                            require_file)
from amdet.scan import ScanConfig, scan_regimes
from core.encoders import TextEncoder
from core.errors import one_line
from core.loading import load_encoder
from core.prompts import make_prompt_source
from core.provenance import compute_record, provenance
from core.records import write_record
from core.settings import from_config
from core.snapshot import snapshots_for
from core.drift import drift
from core.store import write_lines_atomic

log = logging.getLogger("amdet")
SHALLOW_PROMPTS = "shallow_prompts.txt"  # beside result.json: the prompts the scan used, one per line
HELD_OUT_PROMPTS = "held_out_prompts.txt"  # the shallow prompts the inversion never saw (evaluation measures Sim on them)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


DETECTOR = "amdet"  # its name in records and in conf/detector/
PAPER, CALIBRATED = "paper", "calibrated"  # the two threshold regimes every scored scan reports


def explicit_checks(cfg: DictConfig) -> set[str]:
    """Check thresholds the user set on purpose (scan.checks.X=...): they win over a profile. A sweep's
    cell lists its own in scan.explicit_checks; a plain job reads its command line."""
    listed = cfg.scan.get("explicit_checks")
    if listed is not None:
        return set(listed)
    if not HydraConfig.initialized():
        return set()
    return set(overridden_checks(HydraConfig.get().overrides.task))


def regimes(cfg: DictConfig, model: TextEncoder, observe: bool) -> dict[str, tuple[CheckThresholds, dict]]:
    """Name → (thresholds, where they came from) of every regime the scan decides under:
    - paper: the fixed thresholds in scan.checks (the paper's CLIP-L values, or the user's);
    - calibrated: a profile (scan.thresholds=FILE, else the one in paths.profiles_dir matching the
      model's family and width), with explicitly set scan.checks.* values winning over it; absent
      when there is no profile.
    An observing (calibration) scan has one regime that checks everything and decides nothing."""
    s = cfg.scan
    values = OmegaConf.to_container(s.checks, resolve=True)
    paper = thresholds_defaults(s)
    if observe:
        return {"observe": (observing(paper), {"source": "calibration: observe mode", "score_cut": None})}
    out = {PAPER: (paper, {"source": f"config: {s.profile}", "score_cut": None})}
    path = Path(s.thresholds) if s.thresholds else find_profile(cfg.paths.get("profiles_dir"), model.family.name, model.hidden_size)
    if path is None:
        return out
    profile = load_profile(path)
    check_disjoint(profile, s.model_path, f"profile {path}")
    explicit = explicit_checks(cfg)
    fitted = {k: v for k, v in profile_checks(profile).items() if k not in explicit}
    fitted_with, current = profile.get("calibration", {}).get("scan", {}), OmegaConf.to_container(s, resolve=True)
    for key in ("prompts", "inversion", "weights"):
        if key in fitted_with and fitted_with[key] != current.get(key):
            log.warning("profile %s was fitted with other scan.%s settings than this scan uses; its "
                        "thresholds may not transfer (recalibrate with these settings)", path, key)
    kind = "file" if s.thresholds else "profile"
    source = {"source": f"{kind}: {path}" + (f" (explicit: {', '.join(sorted(explicit))})" if explicit else ""),
              "profile": profile.get("profile"), "score_cut": profile.get("score_cut")}
    out[CALIBRATED] = (from_config(CheckThresholds, {**values, **fitted}, "scan.checks"), source)
    return out


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


def scan_to(out: Path, cfg: DictConfig, observe: bool = False) -> dict:
    """`job=scan`: scan cfg.scan.model_path against cfg.scan.anchor_path and write out/result.json (ok
    or error) through the one record writer."""
    t0 = time.perf_counter()
    base = {"detector": DETECTOR, "compute": compute_record(cfg), "model_path": str(cfg.scan.model_path),
            "anchor_path": str(cfg.scan.anchor_path), "config": OmegaConf.to_container(cfg, resolve=True),
            "provenance": provenance()}
    try:
        check_paths(cfg.scan)
        t = time.perf_counter()
        model = load_encoder(cfg.scan.model_path, cfg.device)
        anchor = load_encoder(cfg.scan.anchor_path, cfg.device)
        load_s = time.perf_counter() - t
        result = scan(out, cfg, model, anchor, observe)
    except Exception as exc:  # noqa: BLE001 — every failure must end in a result that says so
        write_record(out, {**base, "status": "error", "reason": one_line(exc), "traceback": traceback.format_exc(),
                           "time_s": round(time.perf_counter() - t0, 2)})
        raise
    result["times"]["load_s"] = round(load_s, 3)
    path = write_record(out, {**base, **result})
    print(f"{summary_line(result)} → {path}")
    return {**base, **result}


def summary_line(result: dict) -> str:
    sim = result.get("sim")  # present once evaluation has added it
    sim_text = f", Sim {sim:.3f}" if sim is not None else ""
    verdicts = ", ".join(f"{k} {v}" for k, v in (result["verdicts"] or {}).items() if v)
    ratio = result["landscape_ratio"]
    landscape = "off" if ratio is None else f"{ratio:.2f}"
    return (f"{verdicts or 'observed'} (score {result['score']:.3f}, landscape {landscape}, "
            f"{result['steps']} steps{sim_text}, {result['time_s']:.1f} s)")


def scan(out: Path, cfg: DictConfig, model: TextEncoder, anchor: TextEncoder, observe: bool = False) -> dict:
    """Scan `model` (from cfg.scan.model_path) against its clean `anchor`; its artefacts go to `out`, the
    detection comes back (status ok, verdicts, score, times, ...); a failure raises.

    Every threshold regime (paper's fixed thresholds, calibrated profile) in one scan, sharing the
    shallow features and the inversion for as long as their trajectories agree; the primary regime
    (calibrated when there is a profile) gives the top-level verdict and the artefacts in `out`, the
    other its own in out/regimes/<name>/.
    observe: the calibration mode (checks from the first step, no early stop, no verdict rule).
    """
    s = cfg.scan
    t0 = time.perf_counter()
    plans = regimes(cfg, model, observe)
    t = time.perf_counter()
    prompts, shallow_desc = shallow_prompts(cfg)
    write_lines_atomic(out / SHALLOW_PROMPTS, prompts)
    prompts_s = time.perf_counter() - t
    # the primary regime (calibrated when there is a profile) gives the top-level record
    name0 = CALIBRATED if CALIBRATED in plans else next(iter(plans))
    order = [name0, *(name for name in plans if name != name0)]
    configs = {name: scan_config(s, plans[name][0]) for name in order}
    if observe:  # calibration fits on the full statistics (the landscape too), and nothing is decided to stop on
        configs = {name: dataclasses.replace(c, check_early_exit=False,
                                             landscape=dataclasses.replace(c.landscape, undecided=True))
                   for name, c in configs.items()}
    snapshots = snapshots_for(cfg, "scan")
    found, scan_times, _ = scan_regimes(model, anchor, prompts, configs, cfg.progress, snapshots)
    primary = found[order[0]]
    files = write_artifacts(out, primary)
    write_lines_atomic(out / HELD_OUT_PROMPTS, primary["test_prompts"])
    files["held_out_prompts"] = HELD_OUT_PROMPTS
    for name in order[1:]:
        write_artifacts(out / "regimes" / name, found[name])
    scan_s = time.perf_counter() - t0  # the detection's cost; the floor below is a statistic of the model
    t = time.perf_counter()
    floor = drift(model, anchor, primary["test_prompts"])
    floor_s = time.perf_counter() - t
    times = {"prompts_s": prompts_s, **scan_times}
    cut = plans[name0][1]["score_cut"]
    result = {
        "status": "ok",
        "model": {"family": model.family.name, "hidden_size": model.hidden_size, "max_length": model.max_length},
        # a calibration scan names its model by path and weights, so a profile refuses to score it
        **({"model_identity": model_identity(s.model_path)} if observe else {}),
        "verdict": None if observe else primary["verdict"],  # an observing scan decides nothing
        "verdicts": None if observe else {PAPER: found[PAPER]["verdict"],
                                          CALIBRATED: found[CALIBRATED]["verdict"] if CALIBRATED in found else None},
        "thresholds_sources": None if observe else {PAPER: plans[PAPER][1]["source"],
                                                    CALIBRATED: plans[CALIBRATED][1]["source"] if CALIBRATED in plans else None},
        "regimes": {name: regime_record(found[name], plans[name]) for name in order},
        "score": primary["score"],  # budget-fixed: the same under every regime
        "score_steps": primary["score_steps"],
        "final_assimilation": primary["final_assimilation"],
        "score_cut": cut,
        "score_verdict": None if cut is None else ("backdoor" if primary["score"] > cut else "benign"),
        "floor": floor,
        "landscape_ratio": primary["landscape_ratio"],
        "decision": primary["decision"],  # flagged: the checks at the deciding step, and whether v had settled
        "start": primary["start"],  # init=vocabulary: the token rows v started from
        "best_running_loss": primary["best_running_loss"],
        "steps": primary["steps"],
        "resumed_from_step": primary["resumed_from_step"],  # a requeued scan continued its inversion here
        "thresholds": vars(plans[name0][0]),
        "thresholds_source": plans[name0][1]["source"],
        "checks": primary["checks"],
        "shallow": {**primary["shallow"], **shallow_desc, "file": SHALLOW_PROMPTS},
        "files": files,
        "times": {k: round(v, 3) for k, v in {**times, "floor_s": floor_s}.items()},
        "detection_s": round(sum(scan_times.values()), 2),  # the detector's own phases, every regime
        "time_s": round(scan_s, 2),  # one detection: prompts, the scans, their artefacts
    }
    snapshots.clear()
    return result


def regime_record(found: dict, plan: tuple[CheckThresholds, dict]) -> dict:
    """What one regime's scan decided, and on what: its thresholds, steps, checks, landscape, times."""
    return {"verdict": found["verdict"], "thresholds": vars(plan[0]), "thresholds_source": plan[1]["source"],
            "steps": found["steps"], "best_running_loss": found["best_running_loss"], "decision": found["decision"],
            "landscape_ratio": found["landscape_ratio"], "checks": found["checks"],
            "times": {k: round(v, 3) for k, v in found["regime_times"].items()}}  # its own checks and landscapes


def shallow_prompts(cfg: DictConfig) -> tuple[list[str], dict]:
    """The scan's shallow prompts — the defender's share of its source, disjoint from every model's
    training prompts — and what the result records of where they came from."""
    source = make_prompt_source(shallow_source(cfg))
    return source.load(cfg.scan.prompts, seed=cfg.scan.seed, role="defender"), source.describe("defender")
