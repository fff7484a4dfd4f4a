"""Detectors as plugins. A detector is a config, `conf/detector/<name>.yaml` or `detector/<name>.yaml`
in any directory on `hydra.searchpath`, whose `_target_` names a function

    detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context, **params) -> dict

(params: the config's other keys). It returns the detection: `verdict` (backdoor, benign, or null
when it only scores), `score` (higher = more likely backdoored), `times` (seconds per phase),
`time_s` (the detection's cost), and any statistics of its own; files it writes go under `out`.
The harness (sweeps/cell.py) adds the model's coordinates and provenance and writes the record.
A detector sees the model and its clean anchor, never the ground truth.

Keys the harness reads and does not pass on: `reads` (the config groups besides the detector's own
node that its result depends on, e.g. AMDET's [scan, losses]) and `profiles` (true: it is scored
with calibrated threshold profiles, which its results' settings key then covers; only such
detectors run in calibration cells) and `models` (the kinds of model it can scan, e.g. [text_encoder] or
[prompt_tuned]; default text_encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from core.encoders import TextEncoder

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
HARNESS_KEYS = ("reads", "profiles", "models")
DEFAULT_MODELS = ("text_encoder",)  # what a detector scans when its config says nothing (cell.kinds' `model`)


@dataclass
class Context:
    cfg: DictConfig  # the job's whole config: the detector reads its own node and the groups it `reads`
    model: TextEncoder | object  # the model under test, loaded once for every detector (a prompt-tuned classifier for those)
    anchor: TextEncoder | object  # its clean reference: the base encoder, or the frozen towers
    observe: bool = False  # a calibration cell: record statistics, decide nothing


def listed(cfg: DictConfig) -> list[str]:
    return [str(n) for n in cfg.cell.detectors]


def names(cfg: DictConfig) -> list[str]:
    """The detectors a cell runs: cell.detectors; in a calibration cell (cell.observe) only those scored
    with calibrated profiles, since fitting profiles is all a calibration cell is for."""
    if not cfg.cell.get("observe"):
        return listed(cfg)
    return [n for n in listed(cfg) if (OmegaConf.select(cfg, f"detector.{n}") or {}).get("profiles")]


def search_dirs(searchpath) -> list[Path]:
    """The directories of `hydra.searchpath` (file:// or plain paths), then conf/."""
    dirs = []
    for entry in searchpath or []:
        entry = str(entry)
        if entry.startswith("pkg://"):
            raise ValueError(f"hydra.searchpath entry {entry}: detectors are found in file:// directories only; "
                             "give the directory holding detector/<name>.yaml as file://DIR")
        dirs.append(Path(entry.removeprefix("file://")).expanduser())
    return [*dirs, CONF_DIR]


def resolve(cfg: DictConfig, searchpath=None) -> DictConfig:
    """cfg with a `detector.<name>` node for every name in cell.detectors: the built-in ones composed with
    the config, the others loaded from `detector/<name>.yaml` on the search path."""
    missing = [n for n in listed(cfg) if OmegaConf.select(cfg, f"detector.{n}") is None]
    if not missing:
        return cfg
    with open_dict(cfg):
        if cfg.get("detector") is None:
            cfg.detector = {}
        for name in missing:
            found = [d / "detector" / f"{name}.yaml" for d in search_dirs(searchpath)]
            path = next((p for p in found if p.is_file()), None)
            if path is None:
                raise ValueError(f"unknown detector '{name}' in cell.detectors: no detector/{name}.yaml in "
                                 f"{', '.join(str(p.parent.parent) for p in found)}; add one (its _target_ names the "
                                 "detect function) and put its directory on hydra.searchpath=[file://DIR]")
            cfg.detector[name] = OmegaConf.load(path)
    return cfg


def models(cfg: DictConfig, name: str) -> tuple[str, ...]:
    """The kinds of model detector `name` scans (its config's `models`)."""
    return tuple(config(cfg, name).get("models") or DEFAULT_MODELS)


def view_for(cfg: DictConfig, name: str, model: str, shows: tuple[str, ...]) -> str | None:
    """As which kind of model detector `name` sees a cell's `model` (whose kind can be shown as any of
    `shows`): the model itself when the detector scans its kind, else the first view it scans; None
    when the detector can see none of them."""
    scanned = models(cfg, name)
    return model if model in scanned else next((m for m in scanned if m in shows), None)


def config(cfg: DictConfig, name: str) -> DictConfig:
    node = OmegaConf.select(cfg, f"detector.{name}")
    if node is None or "_target_" not in node:
        raise ValueError(f"detector '{name}' has no config with a _target_ (detector.{name}); "
                         f"add conf/detector/{name}.yaml or a search-path directory holding detector/{name}.yaml")
    return node


def run(cfg: DictConfig, name: str, model_dir: Path, anchor_dir: Path, out: Path, context: Context) -> dict:
    """Run one detector; its detection, checked for the fields every record needs."""
    node = OmegaConf.to_container(config(cfg, name), resolve=True)
    detect = instantiate({k: v for k, v in node.items() if k not in HARNESS_KEYS}, _partial_=True)
    out.mkdir(parents=True, exist_ok=True)
    found = detect(model_dir=Path(model_dir), anchor_dir=Path(anchor_dir), out=out, context=context)
    for field in ("verdict", "score", "times", "time_s"):
        if field not in found:
            raise ValueError(f"detector '{name}' ({node['_target_']}) returned no '{field}'; a detection has "
                             "verdict, score, times and time_s (see core/detectors.py)")
    return found
