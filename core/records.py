"""The result schema: one record per (model, detector), one writer, validated when written and when read.

    <cell dir>/detectors/<detector>/result.json    in a sweep (sweeps/cell.py)
    <run dir>/result.json                          a standalone `job=scan`

A record says which detector made it and on what (`cell`: the model's coordinates, `settings_key`),
whether it finished (`status` ok | error, with `reason`), the detection (`verdict`, a continuous
`score` where higher = more likely backdoored, `times` per phase, `time_s` the detection's cost) and
its provenance; a detector adds its own statistics beside them. A record of another schema version,
or missing a field, is refused with its path and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.store import write_json_atomic

SCHEMA = 2  # 1: the single-detector result.json of AMDET scans before detectors were plugins
RECORD = "result.json"
VERDICTS = (None, "backdoor", "benign")
# field → (types it may hold); every record has these, a finished one also the DETECTION fields
COMMON = {"schema": (int,), "detector": (str,), "status": (str,)}
ERROR = {"reason": (str,)}
DETECTION = {"verdict": (str, type(None)), "score": (float, int, type(None)), "times": (dict,),
             "time_s": (float, int), "provenance": (dict,)}


class RecordError(ValueError):
    """A record that does not follow the schema (names the file and the field)."""


def check(record: dict, where: str) -> dict:
    """The record itself when it follows the schema; RecordError naming `where` and the field otherwise."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record is a JSON object, not a {type(record).__name__}")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"{where}: field 'schema' is {record.get('schema')!r}, this version reads schema {SCHEMA}; "
                          "recompute it (move it away and rerun) or read it with the version that wrote it")
    fields = {**COMMON, **(DETECTION if record.get("status") == "ok" else ERROR)}
    for field, types in fields.items():
        if field not in record:
            raise RecordError(f"{where}: field '{field}' is missing (status {record.get('status')!r})")
        if not isinstance(record[field], types):
            raise RecordError(f"{where}: field '{field}' is a {type(record[field]).__name__}, expected "
                              + " or ".join(t.__name__ for t in types))
    if record["status"] not in ("ok", "error"):
        raise RecordError(f"{where}: field 'status' is {record['status']!r}; expected 'ok' or 'error'")
    if record["status"] == "ok" and record["verdict"] not in VERDICTS:
        raise RecordError(f"{where}: field 'verdict' is {record['verdict']!r}; expected backdoor, benign or null")
    return record


def write_record(directory: Path, record: dict) -> Path:
    """Validate the record (schema version added) and write directory/result.json atomically."""
    path = Path(directory) / RECORD
    record = check({"schema": SCHEMA, **record}, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def read_record(path: Path) -> dict:
    """A record from disk, validated; RecordError for a torn file too (its path and what is wrong)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path}: unreadable: {type(exc).__name__}: {exc}") from None
    return check(record, str(path))
