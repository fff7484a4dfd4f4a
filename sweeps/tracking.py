"""wandb: one run per cell (grouped by sweep, tagged by cell and by each detector it ran, each detector's
summary under its name: amdet/score, weight_distance/score, ...) and one summary run per sweep.

Offline by default — runs are written under each cell's directory and synced later with
`wandb sync DIR` — online when WANDB_API_KEY is set (wandb.mode=auto), off with wandb.mode=disabled.
A run is opened only after its cell has finished, for a few seconds, so thousands of Slurm cells
never hold thousands of live connections; tracking trouble is logged and never fails a cell.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("amdet")
MODES = ("auto", "online", "offline", "disabled")
SUMMARY_KEYS = ("verdict", "score", "score_cut", "sim", "time_s", "steps", "landscape_ratio", "best_running_loss")


def mode_of(w: DictConfig) -> str:
    if w.mode not in MODES:
        raise ValueError(f"unknown wandb.mode '{w.mode}'; choose one of {', '.join(MODES)}")
    if w.mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return w.mode


def _init(cfg: DictConfig, out: Path, **kwargs):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, mode=mode_of(cfg.wandb), dir=str(out),
                      reinit="finish_previous", settings=wandb.Settings(init_timeout=120, console="off"), **kwargs)


def log_cell(cfg: DictConfig, records: dict[str, dict], out: Path) -> None:
    """One run for the cell's records (detector → record, each under detectors/<name>/ in `out`)."""
    if mode_of(cfg.wandb) == "disabled" or not records:
        return
    try:
        import wandb

        first = next(iter(records.values()))
        cell = first.get("cell", {})
        tags = [str(t)[:64] for t in (cell.get("encoder"), cell.get("kind"), cell.get("paradigm"), cell.get("attack"),
                                      f"len{cell.get('trigger_length')}" if cell.get("trigger_length") else None,
                                      *(f"detector:{d}" for d in records)) if t]
        run = _init(cfg, out, group=first.get("experiment"), job_type=cell.get("kind"), name=cell.get("id"),
                    tags=tags, config=OmegaConf.to_container(cfg, resolve=True))
        summary = {f"attack/{k}": v for k, v in (first.get("attack") or {}).items() if isinstance(v, (int, float))}
        for name, record in records.items():
            summary.update({f"{name}/{k}": record.get(k) for k in SUMMARY_KEYS})
            summary.update({f"{name}/times/{k}": v for k, v in (record.get("times") or {}).items()})
            summary[f"{name}/truth"] = (record.get("truth") or {}).get("kind")
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        images = {f"{name}/{label}": wandb.Image(str(out / "detectors" / name / f)) for name in records
                  for label, f in (("landscape", "landscape.png"), ("hessian_spectrum", "hessian_spectrum.png"),
                                   ("triggers", "triggers.png"))
                  if (out / "detectors" / name / f).is_file()}
        if images:
            run.log(images)
        run.finish()
    except Exception as exc:  # noqa: BLE001 — tracking is a convenience, the result.json is the record
        log.warning("wandb logging of %s failed (%s: %s); the result is safe in result.json", out, type(exc).__name__, exc)


def log_sweep(cfg: DictConfig, sweep_dir: Path, tables: dict, figures: list[Path]) -> None:
    """One run per sweep carrying the aggregated tables and figures, so sweeps compare in the dashboard."""
    if mode_of(cfg.wandb) == "disabled":
        return
    try:
        import wandb

        run = _init(cfg, sweep_dir, group=cfg.experiment.name, job_type="summary", name=f"{cfg.experiment.name}-summary",
                    tags=["summary"], config={"experiment": cfg.experiment.name, "sweep_dir": str(sweep_dir)})
        run.log({name: wandb.Table(dataframe=df.reset_index()) for name, df in tables.items()})
        run.log({p.stem: wandb.Image(str(p)) for p in figures if p.is_file()})
        run.finish()
    except Exception as exc:  # noqa: BLE001
        log.warning("wandb summary run of %s failed (%s: %s)", sweep_dir, type(exc).__name__, exc)
