"""Collect every record (result.json) under a sweep directory into one flat table (results.parquet).

One row per record, that is per (model, detector): the `detector` column names who made it. A record
that does not follow the schema (core/records.py: another version, a missing field) is refused with
its path and the field; a file that is not JSON at all (a torn copy) becomes an error row. Cell coordinates keep their own names (encoder, paradigm, ...), the other
sections are prefixed (truth_*, attack_*, times_*, variant_*); lists become "; "-joined strings and
nested objects (config, assimilation) JSON strings, so the table stays flat and parquet-friendly.
The nested values the tables read get columns of their own: the verdict and thresholds source of each
threshold regime (verdict_paper, verdict_calibrated, ...), the difficulty floor (weight_distance,
output_drift) and the attack's trigger position and success by position (trigger_position_relative,
attack_asr_start, ...). Results written before these existed leave them null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.records import check
from core.store import atomic_write

RESULT_NAME = "result.json"
TABLE_NAME = "results.parquet"

# the columns every table has, in this order; sections with extra keys (times, variant) append theirs
COLUMNS = [
    "path", "status", "reason", "traceback", "experiment", "detector",
    "cell_id", "kind", "encoder", "family", "paradigm", "trigger_level", "trigger_length", "trigger_count",
    "similarity", "adaptive_mu", "seed", "benign_run", "benign_step", "variant",
    "truth_kind", "truth_triggers", "truth_targets",
    "attack_asr", "attack_utility", "attack_assimilation_clean", "attack_assimilation_triggered",
    "verdict", "score", "sim", "landscape_ratio", "steps", "time_s", "thresholds_source",
    "phase", "detection_s", "score_cut", "score_verdict",
    "verdict_paper", "verdict_calibrated", "thresholds_source_paper", "thresholds_source_calibrated", "score_steps",
    "weight_distance", "output_drift",
    "trigger_position_relative", "trigger_position_token", "attack_asr_start", "attack_asr_middle", "attack_asr_end",
    "git_commit", "git_dirty", "hostname", "gpu", "cpu", "cpu_model", "cpu_kernels", "config", "assimilation",
    "predicted_target", "repair", "per_class", "seen_as",
]
INT_COLUMNS = ["trigger_length", "trigger_count", "seed", "benign_step", "steps", "score_steps"]
TOP_LEVEL = ["status", "reason", "traceback", "experiment", "detector", "verdict", "score", "sim",
             "landscape_ratio", "steps", "time_s", "thresholds_source",
             # optional: the failing phase of an error, the detector's own time, a calibrated score cut
             "phase", "detection_s", "score_cut", "score_verdict",
             "score_steps",  # the inversion steps the budget-fixed score was measured at
             "predicted_target",  # a detector of prompt-tuned models: the class it names as the target
             "seen_as"]  # the kind of model the detector scanned: the cell's own, or a view of it
REGIMES = ("paper", "calibrated")  # the threshold regimes a scan records a verdict under
POSITIONS = ("start", "middle", "end")  # where attack success was measured with the trigger inserted


def collect(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """All result.json files under `sweep_dir` as one row each; unreadable files become error rows."""
    root = Path(sweep_dir)
    rows = [read_row(path, root) for path in sorted(root.rglob(RESULT_NAME))]
    return tidy(pd.DataFrame(rows))


def job_dir(rel: str) -> str:
    """The cell (or job) directory of a record: <cell>/detectors/<name>/result.json → <cell>."""
    parent = Path(rel).parent
    return (parent.parent.parent if parent.parent.name == "detectors" else parent).as_posix()


def read_row(path: Path, root: Path) -> dict:
    rel = path.relative_to(root).as_posix()
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        # one torn file must not hide the other results; the job's directory stands in for its cell id
        return {"path": rel, "status": "error", "cell_id": job_dir(rel), "detector": Path(rel).parent.name,
                "reason": f"unreadable result.json: {type(exc).__name__}: {exc}"}
    row = {"path": rel, **flatten(check(record, str(path)))}
    row["cell_id"] = row["cell_id"] or job_dir(rel)  # every row needs an id to dedupe by
    return row


def flatten(record: dict) -> dict:
    """One result.json record as a flat dict (see the module docstring for the naming)."""
    row = {key: record.get(key) for key in TOP_LEVEL}
    cell = dict(record.get("cell") or {})
    row["cell_id"] = cell.pop("id", None)
    variant = cell.pop("variant", None) or {}
    row.update({key: scalar(value) for key, value in cell.items()})
    row["variant"] = variant_label(variant)
    row.update(prefixed("variant", variant))
    row.update(prefixed("truth", record.get("truth")))
    attack = record.get("attack") or {}
    row.update(prefixed("attack", attack))
    verdicts, sources = record.get("verdicts") or {}, record.get("thresholds_sources") or {}
    for regime in REGIMES:
        row[f"verdict_{regime}"], row[f"thresholds_source_{regime}"] = verdicts.get(regime), sources.get(regime)
    floor = record.get("floor") or {}
    row.update(weight_distance=floor.get("weight_distance"), output_drift=floor.get("output_drift"))
    position, asr = attack.get("trigger_position") or {}, attack.get("asr_by_position") or {}
    row.update(trigger_position_relative=position.get("relative_mean"),
               trigger_position_token=position.get("token_mean"))
    row.update({f"attack_asr_{where}": asr.get(where) for where in POSITIONS})
    row.update(prefixed("times", record.get("times")))
    row.update(prefixed("decision", record.get("decision")))  # a flagged scan's deciding step: stable, assimilating
    prov = record.get("provenance") or {}
    code, hardware = prov.get("code") or {}, prov.get("hardware") or {}
    row.update(git_commit=code.get("git_commit"), git_dirty=code.get("git_dirty"),
               hostname=hardware.get("hostname"), gpu=scalar(hardware.get("gpu")), cpu=scalar(hardware.get("cpu")),
               cpu_model=hardware.get("cpu_model"), cpu_kernels=hardware.get("cpu_kernels"))  # None in older records
    row["config"] = as_json(record.get("config"))
    row["assimilation"] = as_json(record.get("assimilation"))
    row["repair"] = as_json(record.get("repair"))
    row["per_class"] = as_json(record.get("per_class"))  # a prompt-tuned detector's statistics per candidate class  # the repair test of a prompt-tuned backdoor's flagged trigger
    return row


def variant_label(variant: dict) -> str | None:
    """{"scan.weights": "assim+dev"} -> "scan.weights=assim+dev"; None for no variant (so it groups as null)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(variant.items())) or None


def prefixed(prefix: str, section: dict | None) -> dict:
    return {f"{prefix}_{key}": scalar(value) for key, value in (section or {}).items()}


def scalar(value):
    """Lists of plain values as "; "-joined strings, anything nested as JSON: parquet columns hold one plain type."""
    if isinstance(value, (list, tuple)) and not any(isinstance(v, (list, tuple, dict)) for v in value):
        return "; ".join(str(v) for v in value)
    if isinstance(value, (list, tuple, dict)):
        return as_json(value)
    return value


def as_json(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed columns first (added when no record had them), nullable ints, one type per column."""
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df.reindex(columns=COLUMNS + extra)
    for col in df.columns:
        df[col] = one_type(df[col])
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    return df


def one_type(col: pd.Series) -> pd.Series:
    """Records may disagree on a value's type (4000 vs "4000"); pyarrow refuses mixed columns."""
    if col.dtype != object:
        return col
    types = {type(v) for v in col.dropna()}
    if len(types) <= 1:
        return col if types else col.astype(object)
    if types <= {int, float, np.int64, np.float64}:
        return pd.to_numeric(col)
    return col.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write through a temporary file in the same directory and a rename: readers never see half a table."""
    with atomic_write(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def summary(df: pd.DataFrame) -> str:
    """One line: how many results finished or failed and how many cells of each kind."""
    status = df["status"].value_counts()
    cells = df.drop_duplicates("cell_id")["kind"].fillna("unknown").value_counts()
    kinds = ", ".join(f"{n} {kind}" for kind, n in cells.items()) or "none"
    return (f"{len(df)} result.json: {status.get('ok', 0)} ok, {status.get('error', 0)} error; "
            f"cells by kind: {kinds}")


def load_results(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """results.parquet of a sweep, (re)collected first when missing, older than a result.json, or
    written before a column of COLUMNS existed (its rows would lack what the tables read)."""
    root = Path(sweep_dir)
    table = root / TABLE_NAME
    files = list(root.rglob(RESULT_NAME))
    if table.is_file() and all(f.stat().st_mtime <= table.stat().st_mtime for f in files):
        df = pd.read_parquet(table)
        if set(COLUMNS) <= set(df.columns):
            return df
    df = collect(root)
    if len(df):
        write_parquet_atomic(df, table)
    return df
