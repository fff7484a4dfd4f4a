"""Threshold profiles: the check thresholds (and score cut) fitted for one encoder family and width.

A profile is a YAML file written by `job=calibrate`:

    profile: clip-h96           # <family>-h<hidden size>
    family: clip
    hidden_size: 96
    checks: {assim_ratio: ..., same_ratio: ..., ..., loss_start: ..., loss_stop: ...}
    score_cut: 0.66             # score > cut ⇒ backdoor, for a verdict from the continuous score
    calibration: {models: [{path, weights_sha256, kind}, ...], fit: {...}, scan: {...}}

A scan uses, in order: `scan.thresholds=FILE`; the profile in `paths.profiles_dir` that matches the
model's family and hidden size; the paper's CLIP-L values in `scan.checks`. Models a profile was
calibrated on cannot be scored with it: a model is known by its path and its weights' hash, never by
the store's manifest, which a detector does not read.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from core.provenance import config_hash, file_sha256

WEIGHTS = "model.safetensors"


def profile_name(family: str, hidden_size: int) -> str:
    return f"{family}-h{hidden_size}"


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file not found: {path}; pass a YAML file written by job=calibrate")
    return path


def load_profile(path: str | Path) -> dict:
    path = require_file(path)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 — a YAML error is a bad file, said in one line
        raise ValueError(f"thresholds file {path} is not valid YAML ({type(exc).__name__}); rewrite it with job=calibrate") from exc
    if not isinstance(data, dict) or not isinstance(profile_checks(data), dict):
        raise ValueError(f"thresholds file {path} has no 'checks' mapping; rewrite it with job=calibrate")
    return data


def profile_checks(profile: dict) -> dict:
    """The check thresholds of a loaded profile: its `checks` block, or the whole file when it is flat."""
    return profile.get("checks", profile)


def overridden_checks(overrides) -> list[str]:
    """The check thresholds an override list sets on purpose (scan.checks.X=...): they win over a profile."""
    keys = (str(o).split("=", 1)[0].lstrip("+~") for o in overrides)
    return sorted({k.removeprefix("scan.checks.") for k in keys if k.startswith("scan.checks.")})


def profiles_fingerprint(thresholds_file: str | None, profiles_dir: str | Path | None) -> str | None:
    """A hash of what the profile(s) a scored scan may use decide with — the file it names, else every
    profile in the directory: thresholds and score cut, not when they were fitted — so that a refit
    that changes them makes the cells scored with the old ones stale."""
    if thresholds_file:
        paths = [Path(thresholds_file)]
    else:
        paths = sorted(Path(profiles_dir).glob("*.yaml")) if profiles_dir and Path(profiles_dir).is_dir() else []
    decided = {p.name: [profile_checks(d := load_profile(p)), d.get("score_cut")] for p in paths if p.is_file()}
    return config_hash(decided) if decided else None


def find_profile(profiles_dir: str | Path | None, family: str, hidden_size: int) -> Path | None:
    if not profiles_dir:
        return None
    path = Path(profiles_dir) / f"{profile_name(family, hidden_size)}.yaml"
    return path if path.is_file() else None


def model_identity(model_path: str | Path) -> dict:
    """What identifies a model across copies: its resolved path and the SHA-256 of its weights."""
    weights = Path(model_path) / WEIGHTS
    return {"path": str(Path(model_path).resolve()), "weights_sha256": file_sha256(weights) if weights.is_file() else None}


def check_disjoint(profile: dict, model_path: str | Path, where: str) -> None:
    """Refuse to score a model with a profile that was calibrated on it (the same path or weights)."""
    me = model_identity(model_path)
    for used in profile.get("calibration", {}).get("models", []):
        same_path = used.get("path") == me["path"]
        same_model = me["weights_sha256"] and used.get("weights_sha256") == me["weights_sha256"]
        if same_path or same_model:
            raise ValueError(
                f"model {model_path} was a calibration model of {where}; calibration and scored models must be "
                "disjoint: score it with another profile (scan.thresholds=FILE) or calibrate on other seeds"
            )
