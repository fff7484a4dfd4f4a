"""An experiment's grid of cells, expanded exactly as Hydra's multirun would expand it.

An experiment (conf/experiment/<name>.yaml) sets `hydra.sweeper.params`; command-line overrides
replace params of the same key (Hydra's rule), and sweep syntax (`seed=0,1`, `range(1,16)`) works in
both. Each cell's directory is `<sweep dir>/<override_dirname>`, computed as Hydra computes
`hydra.job.override_dirname`, so `python launch.py -m` and `python -m sweeps` find the same cells.
A calibration grid is the same grid on the experiment's calibration seeds, with observing scans
(`cell.observe=true` names their directories apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from amdet.profiles import overridden_checks
from core import detectors
from sweeps.naming import cell_dirname, legacy_cell_dirname  # also registers the resolver the configs use

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@dataclass(frozen=True)
class Cell:
    overrides: tuple[str, ...]  # what `python launch.py` would be given for this one cell
    directory: Path
    calibration: bool  # an observing cell of the calibration grid
    detectors: tuple[str, ...]  # the experiment's cell.detectors: a cell is done when each has a record

    @property
    def id(self) -> str:
        return self.directory.name

    @property
    def settings(self) -> tuple[str, ...]:
        """Every override but the seed: cells differing only in seed share every other setting."""
        return tuple(o for o in self.overrides if not o.startswith("seed="))

    def config(self) -> DictConfig:
        """The cell's composed config. Outside a Hydra run `${hydra:...}` cannot resolve, so the
        run directory the job config names from it is set to the id, which is known here."""
        cfg = compose_config(list(self.overrides))
        with open_dict(cfg):
            cfg.job.run_dir = self.id
        return cfg


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The config `python launch.py` would compose from `overrides`, with every detector in
    cell.detectors resolved (an external one from hydra.searchpath); with `hydra`, Hydra's own node too."""
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (the study job): same config dir
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    cfg = detectors.resolve(cfg, list(cfg.hydra.searchpath))
    with open_dict(cfg):  # thresholds a cell sets on purpose (table4's τ grid) win over a calibrated profile
        cfg.scan.explicit_checks = overridden_checks(overrides)
        if not hydra:
            del cfg["hydra"]
    return cfg


def split_sweep_args(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(plain overrides, sweep overrides such as seed=0,1)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweep = [o.input_line for o in parsed if o.is_sweep_override()]
    return plain, sweep


def override_dirname(job_overrides: list[str], exclude: list[str]) -> str:
    """Hydra's override_dirname: the job's task overrides (not hydra.* or hydra/ ones, such as launcher
    settings) minus excluded keys, sorted, joined by ','."""
    parsed = OverridesParser.create().parse_overrides(list(job_overrides))
    return ",".join(sorted(o.input_line for o in parsed if not o.is_hydra_override() and o.key_or_group not in exclude))


def cell_directory(sweep_dir: Path, job_overrides: list[str], exclude: list[str]) -> Path:
    """`<sweep dir>/<override_dirname, shortened as the config's cell_dir resolver does>`, or the directory an
    older version named the same cell, where only that exists."""
    name = override_dirname(job_overrides, exclude)
    directory, legacy = sweep_dir / cell_dirname(name), sweep_dir / legacy_cell_dirname(name)
    return legacy if legacy != directory and legacy.is_dir() and not directory.is_dir() else directory


def expand(params: dict, overrides: list[str]) -> list[list[str]]:
    """Every job's override list: sweeper params then the command line (a later key wins)."""
    args = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return [list(job) for batch in batches for job in batch]


GRID_KEY = "hydra.sweeper.params."


def plan(overrides: list[str]) -> tuple[DictConfig, list[Cell], list[Cell]]:
    """The experiment's config, its scored cells and its calibration cells."""
    grid_keys = [o for o in overrides if o.lstrip("+~").startswith(GRID_KEY)]
    if grid_keys:  # it would sweep on top of the param of the same key, every cell twice
        key = grid_keys[0].lstrip("+~")[len(GRID_KEY):]
        raise ValueError(f"'{grid_keys[0]}': override a grid axis by its own key ({key}), which replaces the "
                         "experiment's values for it")
    plain, _ = split_sweep_args(overrides)
    cfg = compose_config(plain, hydra=True)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    exclude = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    params = dict(cfg.hydra.sweeper.params or {})
    names = tuple(detectors.names(cfg))
    scored = [Cell(tuple(job), cell_directory(sweep_dir, job, exclude), False, names) for job in expand(params, overrides)]
    observing = cfg.copy()
    with open_dict(observing):
        observing.cell.observe = True
    observed = tuple(detectors.names(observing))  # calibration cells run the profiled detectors only
    calibration = []
    seeds = cfg.experiment.get("calibration_seeds")
    if seeds:
        extra = [f"seed={seeds}", "cell.observe=true", *(cfg.experiment.get("calibration_overrides") or [])]
        for job in expand(params, list(overrides) + extra):
            calibration.append(Cell(tuple(job), cell_directory(sweep_dir, job, exclude), True, observed))
    return cfg, scored, calibration
