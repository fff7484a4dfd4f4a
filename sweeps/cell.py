"""`python launch.py job=cell ...`: one cell of a sweep — make one model of `cell.kind` (sweeps/kinds.py),
run every detector in `cell.detectors` on it, evaluate each detection against the ground truth
(evaluation/), write one record per detector. What every executor of a sweep runs (`attempt`: one
cell, one status), below them in the imports.

    <cell dir>/model/                          the backdoored or benign model (weights dropped when cell.keep_model=false)
    <cell dir>/detectors/<name>/result.json    one record per detector (core/records.py): verdict, score, times,
                                               the model's coordinates, attack success, provenance; its artefacts beside it
    <cell dir>/wandb/                          the offline wandb run of the cell (unless wandb.mode=disabled)

The base is loaded once and serves as the attack's f0, the benign run's anchor and every detector's
anchor; the model is made once and loaded once for all detectors. A detector whose record says ok
(with the current settings) is skipped, so rerunning a sweep, or adding a detector to a finished one,
only computes what is missing and never retrains a stored model; a failing detector writes an error
record and never touches a finished one.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from amdet.job import explicit_checks
from amdet.profiles import profiles_fingerprint
from core import detectors
from core.errors import one_line
from core.precision import computing_in, keyed_by_precision
from core.provenance import compute_record, config_hash, provenance, settings_hash
from core.records import RECORD, RecordError, read_record, write_record
from core.store import read_manifest
from core.threads import set_threads
from evaluation.evaluate import evaluate
from sweeps.claim import Claimed, claim
from sweeps.grid import Cell
from sweeps.validate import validate
from sweeps import kinds, tracking
from sweeps.naming import cell_dirname

DETECTORS_DIR = "detectors"


def run(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    cfg = detectors.resolve(cfg, hc.searchpath)
    return run_cell(Path(hc.runtime.output_dir), cfg, cell_id=cell_dirname(hc.job.override_dirname))


# how, not what: an early-exiting check pass reaches the same verdicts, score and v; which detectors run
NOT_RESULT = ("cell.keep_model", "cell.detectors", "cell.kinds", "scan.landscape.batch", "scan.inversion.check_early_exit",
              "scan.explicit_checks")


def settings_key(cfg: DictConfig, detector: str = "amdet") -> str:
    """A hash of every setting one detector's record depends on: the model's settings, the detector's
    own config and the groups it `reads`. A finished record whose key differs from the current
    config's was made with other settings (another base, attack, scan). A detector scored with
    calibrated profiles (AMDET) also covers, in a scored cell, the profiles and the checks that win
    over them, so a refit that changes a profile makes the records scored with the old one stale."""
    node = detectors.config(cfg, detector)
    reads = tuple(str(g) for g in node.get("reads") or ())
    # what the cell's model depends on (its kind's groups); the rest (paths, job, progress, threads, ...) does not
    key = keyed_by_precision(settings_hash(cfg, tuple(kinds.of(cfg).settings) + reads, NOT_RESULT), cfg)
    parts = [key, OmegaConf.to_container(node, resolve=True)]
    if node.get("profiles") and not cfg.cell.observe:
        parts += [profiles_fingerprint(cfg.scan.thresholds, cfg.paths.get("profiles_dir")), sorted(explicit_checks(cfg))]
    return config_hash(parts)


class StaleResult(ValueError):
    """A finished record made with other settings than the current config's."""


def record_path(out: Path, detector: str) -> Path:
    return out / DETECTORS_DIR / detector / RECORD


def finished_record(out: Path, detector: str, cfg: DictConfig | None = None) -> dict | None:
    """One detector's record of the cell when it is done (status ok), else None. With `cfg`, a record
    made with other settings raises StaleResult: reusing it would mix two configs in one table, and
    recomputing it would overwrite a finished result."""
    path = record_path(out, detector)
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except RecordError:
        return None  # a torn file, or one of another schema: redone (collect names such files)
    if record["status"] != "ok":
        return None
    if cfg is not None and record.get("settings_key") != (current := settings_key(cfg, detector)):
        raise StaleResult(
            f"{path} was made with other settings than the current config's (settings key "
            f"{record.get('settings_key')} vs {current}: e.g. another base, attack or scan config, or a refitted "
            f"threshold profile); move {out} "
            "away to recompute the cell, or restore the settings it was made with"
        )
    return record


def finished(out: Path, cfg: DictConfig | None = None, names: list[str] | tuple[str, ...] | None = None) -> dict | None:
    """The cell's records (detector → record) when every detector it runs (cfg.cell.detectors, or
    `names`) has finished, else None."""
    names = detectors.names(cfg) if names is None else list(names)
    records = {n: finished_record(out, n, cfg) for n in names}
    return records if names and all(records.values()) else None


def cell_info(cfg: DictConfig, cell_id: str) -> dict:
    return {
        "id": cell_id,
        "kind": cfg.cell.kind,
        "observe": bool(cfg.cell.observe),
        "encoder": cfg.encoder.name,
        "family": cfg.encoder.family,
        # a benign cell fills a (paradigm, length, seed) slot of the grid: it is a negative of that row
        **kinds.of(cfg).coordinates(cfg),
        "seed": int(cfg.seed),
        "variant": {k: OmegaConf.select(cfg, k) for k in cfg.experiment.get("variant", None) or []},
    }


def run_cell(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    """The cell's records (detector → record): the finished ones, or computed here under the cell's
    claim (Claimed when another live process is computing it)."""
    done = finished(out, cfg)
    if done:
        print(f"cell {cell_id}: done ({', '.join(done)}) — skipped")
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


class DetectorFailed(RuntimeError):
    """One or more of a cell's detectors failed (each wrote an error record saying why)."""


def compute_cell(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    """Make the model (or find it in the store) and run every detector without a finished record, in
    the config's precision."""
    with computing_in(cfg):
        return make_and_detect(out, cfg, cell_id, anchor)


def make_and_detect(out: Path, cfg: DictConfig, cell_id: str, anchor=None) -> dict:
    set_threads(cfg)
    cfg = cfg.copy()
    with open_dict(cfg):  # a requeued cell resumes its training or inversion from these; a shared
        # snapshots.dir gets a subdirectory per cell, so cells never load or delete each other's state
        cfg.snapshots.dir = str(Path(cfg.snapshots.dir) / cell_id) if cfg.snapshots.dir else str(out / "snapshots")
    info = cell_info(cfg, cell_id)
    names = detectors.names(cfg)
    records = {n: r for n in names if (r := finished_record(out, n, cfg))}
    todo = [n for n in names if n not in records]
    wrapper = {"experiment": cfg.experiment.name, "cell": info, "compute": compute_record(cfg),  # after set_threads
               "config": OmegaConf.to_container(cfg, resolve=True), "provenance": provenance()}
    t0 = time.perf_counter()
    kind = kinds.of(cfg)
    try:
        source = kind.anchor_source(cfg)
        anchor = anchor or kind.load_anchor(source, cfg)
        t = time.perf_counter()
        model_dir = kind.make(cfg, out, anchor)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        model = kind.load(model_dir, cfg, anchor)
        load_s = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 — the cell's records must say it failed, and why
        for name in todo:
            write_error(out, name, wrapper, "model", one_line(exc), traceback.format_exc(), time.perf_counter() - t0)
        raise
    wrapper.update(training_record(model_dir, info), model_path=str(model_dir), anchor_path=str(source))
    failed = []
    try:
        for name in todo:
            as_model = detectors.view_for(cfg, name, kind.model, tuple(kind.shows))
            view = kind.view(cfg, as_model, model_dir, source, model, anchor)
            records[name] = detect(cfg, name, out, model_dir, view, as_model, wrapper,
                                   {"train_s": round(train_s, 3), "load_s": round(load_s, 3)})
            if records[name]["status"] != "ok":
                failed.append(f"{name}: {records[name]['reason']}")
    finally:
        if not cfg.cell.keep_model:
            for f in model_dir.glob("*.safetensors"):
                f.unlink()
    shutil.rmtree(cfg.snapshots.dir, ignore_errors=True)
    tracking.log_cell(cfg, {n: records[n] for n in todo if records[n]["status"] == "ok"}, out)
    if failed:
        raise DetectorFailed("; ".join(failed))
    return records


def detect(cfg: DictConfig, name: str, out: Path, model_dir: Path, view: tuple, as_model: str, wrapper: dict,
           earlier_times: dict) -> dict:
    """Run one detector on its view of the cell's model (kinds: view) and write its record (ok, or error
    with the reason); the record. Evaluation reads the truth of the cell's own model."""
    directory = record_path(out, name).parent
    view_dir, anchor_dir, model, anchor = view
    context = detectors.Context(cfg=cfg, model=model, anchor=anchor, observe=bool(cfg.cell.observe))
    t0 = time.perf_counter()
    try:
        found = detectors.run(cfg, name, view_dir, Path(anchor_dir), directory, context)
    except Exception as exc:  # noqa: BLE001 — recorded; the cell's other detectors still run
        return write_error(out, name, wrapper, "detect", one_line(exc), traceback.format_exc(), time.perf_counter() - t0)
    try:  # the detection against the ground truth: after the detector, never seen by it
        scored = evaluate(cfg, model_dir, model, found, directory, name)
    except Exception as exc:  # noqa: BLE001
        return write_error(out, name, wrapper, "evaluate", one_line(exc), traceback.format_exc(), time.perf_counter() - t0)
    record = {**wrapper, **found, "truth": scored["truth"], "sim": scored["sim"], "detector": name, "status": "ok",
              "seen_as": as_model,  # the kind of model the detector scanned: the cell's own, or a view of it
              **({"repair": scored["repair"]} if scored["repair"] is not None else {}),
              "settings_key": settings_key(cfg, name), "times": {**earlier_times, **found["times"], "eval_s": scored["eval_s"]}}
    path = write_record(directory, record)
    print(f"{name}: {record['verdict'] or 'no verdict'} (score {record['score']:.3f}, {record['time_s']:.1f} s) → {path}")
    return record


def training_record(model_dir: Path, info: dict) -> dict:
    """What making the model measured, from its manifest: attack success and the per-prompt
    assimilations of clean and triggered prompts (the paper's Fig. 2); a benign model's run and
    step go into the cell's coordinates (`info`)."""
    manifest = read_manifest(model_dir)
    resumed = {"train_resumed_from_step": manifest.get("resumed_from_step")}  # a requeued job continued here
    if manifest.get("model") == "prompt_tuned":  # clean accuracy, and attack success for a backdoor
        return {"attack": manifest.get("metrics"), "assimilation": None, **resumed}
    if manifest.get("kind") != "backdoor":
        info.update(benign_run=manifest.get("run_id"), benign_step=manifest.get("step"))
        return {"attack": None, "assimilation": None, **resumed}
    metrics = dict(manifest.get("metrics") or {})
    clean = metrics.pop("assimilation_clean_values", [])
    triggered = [x for b in metrics.get("backdoors", []) for x in b.pop("assimilation_triggered_values", [])]
    return {"attack": metrics, "assimilation": {"clean": clean, "triggered": triggered}, **resumed}


def attempt(cell: Cell, cfg: DictConfig | None = None, anchors: dict | None = None) -> dict:
    """Compute one cell of a sweep under its claim; its status for the phase summary: ok, claimed
    (another launcher holds it or finished it) or error (recorded in its records), with the reason.
    `anchors`: the process's cache of loaded bases (anchor_for); without it the cell loads its own."""
    try:
        cfg = cfg or cell.config()
        anchor = anchor_for(cfg, anchors) if anchors is not None else None
        compute_claimed(cell.directory, cfg, cell.id, anchor)
        return {"cell": cell.id, "status": "ok"}
    except Claimed:
        return {"cell": cell.id, "status": "claimed"}
    except Exception as exc:  # noqa: BLE001 — recorded in the cell's records; the sweep goes on
        return {"cell": cell.id, "status": "error", "reason": one_line(exc)}


def anchor_for(cfg: DictConfig, anchors: dict):
    """The cell's clean reference (its encoder's base, the frozen towers), loaded once into `anchors` for
    all the cells a process runs."""
    kind = kinds.of(cfg)
    source = kind.anchor_source(cfg)
    key = (source, str(cfg.device))
    if key not in anchors:
        anchors[key] = kind.load_anchor(source, cfg)
    return anchors[key]


def record_dead(cell: Cell, reason: str) -> bool:
    """Error records for the detectors of a cell whose process or task died before finishing them
    (cancelled, killed at its time limit, out of memory, node failure), so that the results store and
    the report list them; resume redoes them. A finished record is never touched (False: none written)."""
    cfg = cell.config()
    missing = [n for n in detectors.names(cfg) if not finished_record(cell.directory, n)]
    about = {"experiment": cfg.experiment.name, "cell": cell_info(cfg, cell.id),
             "config": OmegaConf.to_container(cfg, resolve=True)}
    for name in missing:
        write_error(cell.directory, name, about, "job", reason)
    return bool(missing)


def write_error(out: Path, detector: str, about: dict, phase: str, reason: str, trace: str | None = None,
                seconds: float | None = None) -> dict:
    """Write (and return) the error record of one detector of the cell: the phase that failed and why."""
    record = {**about, "detector": detector, "status": "error", "phase": phase, "reason": reason,
              **({"traceback": trace} if trace else {}), **({"time_s": round(seconds, 2)} if seconds is not None else {})}
    write_record(record_path(out, detector).parent, record)
    return record
