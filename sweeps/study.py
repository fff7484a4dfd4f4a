"""The main job (`python launch.py`): an experiment's whole grid on this machine, then its Table I
next to the paper's and the path of the report. Default: the embedded study (conf/experiment/embedded.yaml)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from analyze.report import table1_text
from sweeps.run import run_experiment


def run(cfg: DictConfig) -> dict:
    overrides = [f"experiment={cfg.job.experiment}", *command_line(), *cfg.job.overrides]
    summary = run_experiment(overrides, progress=cfg.progress)
    tables = summary.get("report") or {}
    print()
    if "table1" in tables:  # under the paper's fixed thresholds and the calibrated profile, then the floor line
        print(table1_text(tables, f", {cfg.job.experiment} (ours) next to the paper's"))
    for phase in ("calibration", "scored"):
        s = summary.get(phase)
        if s and s["failed"]:
            print(f"{len(s['failed'])} {phase} cells failed: " + "; ".join(f"{f['cell']}: {f['reason']}" for f in s["failed"]))
    print(f"\nreport: {summary['sweep_dir']}/report/report.md  ({summary['time_s']:.0f} s)")
    return {k: v for k, v in summary.items() if k != "report"}


def command_line() -> list[str]:
    """The main job's own command-line overrides (`paths.output_dir=...`, `experiment.workers=1`,
    `threads=1`, `device=cuda`, ...), for every cell; `job...` ones choose the study itself."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("job")]
