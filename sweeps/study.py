"""The main job (`python launch.py`): each experiment's whole grid on this machine, then its tables next to
the paper's and the path of its report. Default: AMDET's embedded study (conf/experiment/embedded.yaml), then
CLIP-Inspector's (conf/experiment/inspector_embedded.yaml)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from analyze import inspector
from analyze.report import table1_text
from sweeps.run import run_experiment


def run(cfg: DictConfig) -> dict:
    return {name: run_one(name, cfg) for name in cfg.job.experiments}


def run_one(experiment: str, cfg: DictConfig) -> dict:
    overrides = [f"experiment={experiment}", *command_line(), *cfg.job.overrides]
    summary = run_experiment(overrides, progress=cfg.progress)
    tables = summary.get("report") or {}
    print()
    if "table1" in tables:  # under the paper's fixed thresholds and the calibrated profile, then the floor line
        print(table1_text(tables, f", {experiment} (ours) next to the paper's"))
    if "inspector_detection" in tables:  # a study of prompt-tuned classifiers
        print(f"{experiment} (ours) next to the paper's:\n{inspector.text(tables)}")
    for phase in ("calibration", "scored"):
        s = summary.get(phase)
        if s and s["failed"]:
            print(f"{len(s['failed'])} {phase} cells failed: " + "; ".join(f"{f['cell']}: {f['reason']}" for f in s["failed"]))
    print(f"\nreport: {summary['sweep_dir']}/report/report.md  ({summary['time_s']:.0f} s)\n")
    return {k: v for k, v in summary.items() if k != "report"}


def command_line() -> list[str]:
    """The main job's own command-line overrides (`paths.output_dir=...`, `experiment.workers=1`,
    `threads=1`, `device=cuda`, ...), for every cell; `job...` ones choose the study itself."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("job")]
