"""`python launch.py job=cell ...`: one cell of a sweep — make one model, scan it, write result.json.
What every executor of a sweep runs (`attempt`: one cell, one status), below them in the imports.

    <cell dir>/model/           the backdoored or benign model (weights dropped when cell.keep_model=false)
    <cell dir>/result.json      verdict, score, Sim, checks, times, ground truth, cell coordinates, provenance
    <cell dir>/wandb/           the offline wandb run of the cell (unless wandb.mode=disabled)

The base is loaded once and serves as the attack's f0, the benign run's anchor and the scan's
anchor. A cell whose result.json says ok is skipped, so rerunning a sweep only fills its gaps; a
failing cell writes an error result (reason and traceback) and never touches a finished one.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from filelock import FileLock

from amdet.job import explicit_checks, scan_to
from amdet.outputs import write_result
from amdet.profiles import profiles_fingerprint
from attacks.job import run as attack
from attacks.triggers import MAX_LENGTH
from benign_ft.job import checkpoint_dirs, run as benign
from core.errors import one_line
from sweeps.grid import Cell
from core.bases import base_source
from core.loading import load_encoder
from core.provenance import compute_record, config_hash, provenance, settings_hash
from core.store import model_settings_key, read_manifest
from core.threads import set_threads
from sweeps.claim import Claimed, claim
from sweeps.validate import validate
from sweeps import tracking
from sweeps.naming import cell_dirname


def run(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    return run_cell(Path(hc.runtime.output_dir), cfg, cell_id=cell_dirname(hc.job.override_dirname))


# what a cell's result depends on; the rest (paths, job, progress, threads, wandb, snapshots, ...) does not
RESULT_SETTINGS = ("encoder", "training", "prompts", "pools", "attack", "benign", "scan", "losses", "cell", "seed")
# how, not what: an early-exiting check pass reaches the same verdicts, score and v
NOT_RESULT = ("cell.keep_model", "scan.landscape.batch", "scan.inversion.check_early_exit")


def settings_key(cfg: DictConfig) -> str:
    """A hash of every setting the cell's result depends on, recorded in result.json: a finished result
    whose key differs from the current config's was made with other settings (another base, attack, scan).
    A scored cell's key also covers the calibrated profiles it may be scored with and the checks that
    win over them, so a refit that changes a profile makes the cells scored with the old one stale."""
    key = settings_hash(cfg, RESULT_SETTINGS, NOT_RESULT + ("scan.explicit_checks",))
    if cfg.cell.observe:
        return key
    profiles = profiles_fingerprint(cfg.scan.thresholds, cfg.paths.get("profiles_dir"))
    return config_hash([key, profiles, sorted(explicit_checks(cfg))])


class StaleResult(ValueError):
    """A finished cell whose result was made with other settings than the current config's."""


def finished(out: Path, cfg: DictConfig | None = None) -> dict | None:
    """The cell's result when it is done (status ok), else None. With `cfg`, a result made with other
    settings raises StaleResult: reusing it would mix models of two configs in one table, and
    recomputing it would overwrite a finished result."""
    path = out / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None  # a torn or hand-edited file: the cell is redone
    if result.get("status") != "ok":
        return None
    recorded = result.get("settings_key")  # results written before keys existed are taken as they are
    if cfg is not None and recorded and recorded != (current := settings_key(cfg)):
        raise StaleResult(
            f"{path} was made with other settings than the current config's (settings key {recorded} vs "
            f"{current}: e.g. another base, attack or scan config); move {out} away to recompute it, "
            "or restore the settings it was made with"
        )
    return result


def benign_seed(cfg: DictConfig) -> int:
    """A benign cell's fine-tuning seed, distinct for every grid slot (paradigm, trigger length, seed)
    it fills, so that a grid's benign models are all different."""
    slot = {"paradigm": cfg.attack.paradigm, "length": cfg.attack.triggers.length, "seed": cfg.seed}
    return int(config_hash(slot, 8), 16) % 2**31


def cell_info(cfg: DictConfig, cell_id: str) -> dict:
    a, backdoor = cfg.attack, cfg.cell.kind == "backdoor"
    return {
        "id": cell_id,
        "kind": cfg.cell.kind,
        "observe": bool(cfg.cell.observe),
        "encoder": cfg.encoder.name,
        "family": cfg.encoder.family,
        # a benign cell fills a (paradigm, length, seed) slot of the grid: it is a negative of that row
        "paradigm": a.paradigm,
        "trigger_level": a.triggers.level if backdoor else None,
        "trigger_length": int(a.triggers.length) if backdoor else None,
        "trigger_count": int(a.triggers.count) if backdoor else None,
        "similarity": a.similarity if backdoor else None,
        "adaptive_mu": float(a.adaptive_mu) if backdoor else None,
        "seed": int(cfg.seed),
        "variant": {k: OmegaConf.select(cfg, k) for k in cfg.experiment.get("variant", None) or []},
    }


PARADIGMS = ("text_on_text", "text_on_pair")
RUNS_DIR = "benign_runs"  # beside a sweep's cells: the benign fine-tuning runs their checkpoints come from


def benign_checkpoint(cfg: DictConfig) -> int:
    """The step of the shared run whose checkpoint fills a benign cell's grid slot: slot k (paradigm-major,
    then trigger length) takes checkpoint k + 1, so each (paradigm, length) of one seed gets its own
    checkpoint and a grid asks a run for its checkpoints in increasing order."""
    slot = PARADIGMS.index(cfg.attack.paradigm) * MAX_LENGTH + int(cfg.attack.triggers.length) - 1
    return (slot + 1) * int(cfg.benign.checkpoint_every)


def make_model(cfg: DictConfig, out: Path, anchor) -> Path:
    """Make the cell's model and return its directory: a backdoor in <out>/model; a benign model as the
    paper makes them, a checkpoint of a fine-tuning run shared by the sweep's benign cells of one seed
    (<sweep>/benign_runs/<run>/step*, benign.mode=checkpoints), or with benign.mode=independent a run of
    its own in <out>/model. Stored models are reused; one whose weights a finished attempt dropped is
    made again (same settings, same model)."""
    cfg = cfg.copy()
    if cfg.cell.kind == "benign" and cfg.benign.mode == "checkpoints":
        with open_dict(cfg):
            cfg.job.out = str(out.parent / RUNS_DIR / benign_run_name(cfg))
        step = benign_checkpoint(cfg)
        model_dir = checkpoint_dirs(cfg, {step})[step]
        with FileLock(f"{cfg.job.out}.lock"):  # one job trains a run at a time; the others wait and reuse it
            drop_stale_weights(model_dir)
            benign(cfg, anchor=anchor, steps={step})
        return model_dir
    model_dir = out / "model"
    drop_stale_weights(model_dir)
    with open_dict(cfg):
        cfg.job.out = str(model_dir)
        if cfg.cell.kind == "backdoor":
            attack(cfg, anchor=anchor)
        else:
            cfg.seed = benign_seed(cfg)  # independent mode: its own run, distinct for every grid slot
            benign(cfg, anchor=anchor)
    return model_dir


def benign_run_name(cfg: DictConfig) -> str:
    """The shared run's directory name: the encoder and the settings key of the run."""
    return f"{cfg.encoder.name}-seed{cfg.seed}-{model_settings_key(cfg, 'benign')[:10]}"


def drop_stale_weights(model_dir: Path) -> None:
    if model_dir.exists() and not (model_dir / "model.safetensors").exists():
        shutil.rmtree(model_dir)  # weights dropped by an earlier attempt: made again


def run_cell(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    """The cell's result: the finished one, or computed here under the cell's claim (Claimed when
    another live process is computing it)."""
    done = finished(out, cfg)
    if done:
        print(f"cell {cell_id}: done ({done['verdict']}, score {done['score']:.3f}) — skipped")
        return done
    try:
        return compute_claimed(out, cfg, cell_id, anchor)
    except Claimed:
        if done := finished(out, cfg):  # another launcher finished it meanwhile
            return done
        raise


def compute_claimed(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    """What a sweep's executors run: compute the cell under its claim. Claimed when another live process
    holds the claim or the cell is finished (by whoever), so each cell counts as computed by the one
    launcher that computed it."""
    validate(cfg)  # every setting, before anything is loaded
    with claim(out):
        if finished(out, cfg):
            raise Claimed(f"cell {cell_id} was finished by another launcher")
        return compute_cell(out, cfg, cell_id, anchor)


def compute_cell(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    set_threads(cfg)
    cfg = cfg.copy()
    with open_dict(cfg):  # a requeued cell resumes its training or inversion from these; a shared
        # snapshots.dir gets a subdirectory per cell, so cells never load or delete each other's state
        cfg.snapshots.dir = str(Path(cfg.snapshots.dir) / cell_id) if cfg.snapshots.dir else str(out / "snapshots")
    info = cell_info(cfg, cell_id)
    extra = {"experiment": cfg.experiment.name, "cell": info, "settings_key": settings_key(cfg),
             "compute": compute_record(cfg)}  # after set_threads: the threads it computes with
    t0 = time.perf_counter()
    try:
        source = base_source(cfg.encoder, cfg.progress)
        anchor = anchor or load_encoder(source, cfg.device)
        t = time.perf_counter()
        model_dir = make_model(cfg, out, anchor)
        train_s = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 — the cell's record must say it failed, and why
        write_result(out, {**extra, "status": "error", "phase": "model", "reason": one_line(exc),
                           "traceback": traceback.format_exc(), "config": OmegaConf.to_container(cfg, resolve=True),
                           "provenance": provenance(), "time_s": round(time.perf_counter() - t0, 2)})
        raise
    extra.update(training_record(model_dir, info))
    scan_cfg = cfg.copy()
    with open_dict(scan_cfg):
        scan_cfg.scan.model_path, scan_cfg.scan.anchor_path = str(model_dir), str(source)
    try:
        result = scan_to(out, scan_cfg, observe=cfg.cell.observe, anchor=anchor, extra=extra,
                         earlier_times={"train_s": round(train_s, 3)})
    finally:
        if not cfg.cell.keep_model:
            for f in model_dir.glob("*.safetensors"):
                f.unlink()
    shutil.rmtree(cfg.snapshots.dir, ignore_errors=True)
    tracking.log_cell(cfg, result, out)
    return result


def training_record(model_dir: Path, info: dict) -> dict:
    """What making the model measured, from its manifest: attack success and the per-prompt
    assimilations of clean and triggered prompts (the paper's Fig. 2); a benign model's run and
    step go into the cell's coordinates (`info`)."""
    manifest = read_manifest(model_dir)
    resumed = {"train_resumed_from_step": manifest.get("resumed_from_step")}  # a requeued job continued here
    if manifest.get("kind") != "backdoor":
        info.update(benign_run=manifest.get("run_id"), benign_step=manifest.get("step"))
        return {"attack": None, "assimilation": None, **resumed}
    metrics = dict(manifest.get("metrics") or {})
    clean = metrics.pop("assimilation_clean_values", [])
    triggered = [x for b in metrics.get("backdoors", []) for x in b.pop("assimilation_triggered_values", [])]
    return {"attack": metrics, "assimilation": {"clean": clean, "triggered": triggered}, **resumed}


def attempt(cell: Cell, cfg: DictConfig | None = None, anchor=None) -> dict:
    """Compute one cell of a sweep under its claim; its status for the phase summary: ok, claimed
    (another launcher holds it or finished it) or error (recorded in its result.json), with the reason."""
    try:
        result = compute_claimed(cell.directory, cfg or cell.config(), cell.id, anchor)
        return {"cell": cell.id, "status": "ok", "verdict": result.get("verdict")}
    except Claimed:
        return {"cell": cell.id, "status": "claimed"}
    except Exception as exc:  # noqa: BLE001 — recorded in the cell's result.json; the sweep goes on
        return {"cell": cell.id, "status": "error", "reason": one_line(exc)}


def anchor_for(cfg: DictConfig, anchors: dict):
    """The frozen base of the cell's encoder, loaded once into `anchors` for all the cells a process runs."""
    key = (cfg.encoder.name, cfg.device)
    if key not in anchors:
        anchors[key] = load_encoder(base_source(cfg.encoder, cfg.progress), cfg.device)
    return anchors[key]


def record_dead(cell: Cell, reason: str) -> bool:
    """An error result for a cell whose process or task died before finishing it (cancelled, killed at
    its time limit, out of memory, node failure), so that the results store and the report list it;
    resume redoes it. A finished result is never touched (returns False)."""
    if finished(cell.directory):
        return False
    cfg = cell.config()
    write_result(cell.directory, {"status": "error", "phase": "job", "reason": reason, "experiment": cfg.experiment.name,
                                  "cell": cell_info(cfg, cell.id), "config": OmegaConf.to_container(cfg, resolve=True)})
    return True
