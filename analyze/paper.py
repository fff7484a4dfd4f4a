"""The paper's numbers (paper.yaml) and how our rows map onto its rows."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

PAPER_YAML = Path(__file__).with_name("paper.yaml")
FAMILY_LABEL = {"clip": "CLIP", "longclip": "LongCLIP", "siglip": "SigLIP"}
PAPER_ENCODER = {"clip-l": "clip", "longclip-l": "longclip", "siglip": "siglip"}  # the models the paper scanned
PARADIGM_LABEL = {"text_on_text": "Text-on-Text", "text_on_pair": "Text-on-Pair"}


@cache
def load() -> dict:
    return yaml.safe_load(PAPER_YAML.read_text())


def table1_row(encoder: str, family: str | None, paradigm: str | None) -> tuple[str | None, dict]:
    """The paper's Table I row for one of ours: (label, numbers). Tiny encoders get their family's row,
    labelled "(family)" because the paper never scanned them."""
    fam = PAPER_ENCODER.get(encoder) or family
    if fam not in FAMILY_LABEL or paradigm not in PARADIGM_LABEL:
        return None, {}
    name = FAMILY_LABEL[fam]
    label = f"{name} · {PARADIGM_LABEL[paradigm]}" + ("" if encoder in PAPER_ENCODER else " (family)")
    for row in load()["table1"]["rows"]:
        if row["encoder"] == name and row["paradigm"] == paradigm:
            return label, row
    return label, {}


def ablation(experiment: str) -> dict:
    """The paper block for an ablation experiment ({} when the paper has none)."""
    return load().get("ablations", {}).get(experiment) or {}


def matches(value, ours: dict) -> bool:
    """Does a paper row's `value` name a row of ours (`ours`: its key columns → values)? A plain value
    names a row keyed by one column; a mapping names a row keyed by several (Table IV's three
    thresholds), by the experiment's variant keys: scan.checks.assim_ratio → variant_scan.checks.assim_ratio."""
    if isinstance(value, dict):
        wanted = {f"variant_{key}": v for key, v in value.items()}
        return wanted.keys() == ours.keys() and all(same_value(v, ours[c]) for c, v in wanted.items())
    return len(ours) == 1 and same_value(value, next(iter(ours.values())))


def same_value(a, b) -> bool:
    """Sweep values against paper values: 4000 == "4000" == 4000.0, "Dev+Assim" == "assim+dev"."""
    return normalise(a) == normalise(b)


def normalise(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return "+".join(sorted(part.strip() for part in str(value).lower().split("+")))
