"""Sweeps: grids as Hydra expands them, stable cell dirs, validation, the cell job, skip/resume, wandb."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeps.__main__ import main as sweeps_main
from sweeps.cell import StaleResult, settings_key
from sweeps.claim import CLAIM, Claimed, claim
from sweeps.grid import cell_directory, compose_config, override_dirname, plan
from sweeps.naming import MAX_NAME, cell_dirname, legacy_cell_dirname
from sweeps import submit as submit_module
from sweeps.run import resume, run_experiment
from sweeps.submit import CellGroup
from tests.helpers import MICRO_ATTACK, MICRO_BASE
from tests.test_benign import MICRO_BENIGN

ROOT = Path(__file__).resolve().parents[1]
# the paper's grids (cells, calibration cells); ablation grids where the paper lost its values are ours
GRIDS = {
    "table1": (3600, 360), "fig10_similarity": (900, 0), "fig11_trigger_length": (600, 0),
    "fig12_data_source": (900, 0), "table2_data_scale": (1200, 0), "table3_loss_ablation": (1200, 0),
    "table4_thresholds": (1920, 0), "fig13_multi_trigger": (200, 0), "table5_adaptive": (225, 0),
    "embedded": (16, 8), "real_shapes": (6, 0),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_experiment_lists_its_grid_with_unique_cell_dirs(name):
    _, scored, calibration = plan([f"experiment={name}"])
    assert (len(scored), len(calibration)) == GRIDS[name]
    assert len({c.directory for c in scored + calibration}) == len(scored) + len(calibration)


def test_table1_is_half_backdoored_half_benign_and_a_command_line_override_narrows_it():
    _, scored, _ = plan(["experiment=table1"])
    kinds = [dict(o.split("=", 1) for o in c.overrides)["cell.kind"] for c in scored]
    assert kinds.count("backdoor") == kinds.count("benign") == 1800
    _, tiny, calibration = plan(["experiment=table1", "encoder=tiny-clip", "seed=0,1"])
    assert len(tiny) == 2 * 2 * 15 * 2 and all("encoder=tiny-clip" in c.overrides for c in tiny)
    assert len(calibration) == 2 * 2 * 15 * 2, "calibration seeds replace the command line's seeds"


def test_cell_dirs_are_hydras_override_dirname():
    job = ["seed=3", "encoder=tiny-clip", "experiment=table1", "progress=false", "attack.triggers.length=2",
           "hydra.launcher.timeout_min=5"]  # a hydra override is not a task override: it never names a cell
    exclude = ["experiment", "progress"]
    ours = override_dirname(job, exclude)
    task = job[:-1]  # Hydra computes override_dirname from the task overrides alone
    hydra = get_overrides_dirname(OverridesParser.create().parse_overrides(task), exclude, ",", "=")
    assert ours == hydra == cell_dirname(ours) == "attack.triggers.length=2,encoder=tiny-clip,seed=3"


def test_a_long_cell_name_keeps_the_grids_axes_readable_and_stays_unique():
    shared = ("+detector@detector.extra=inspector_referenced,detector.extra.batch=64,detector.extra.pool_size=1000,"
              "detector.extra.reference_models=16,{},repair.detectors=[a,x],{}")
    names = {cell_dirname(shared.format(poison, seed)) for poison in ("poison=none", "poison=badclip")
             for seed in ("seed=36", "seed=37")}
    assert len(names) == 4 and all(len(n.encode()) <= MAX_NAME for n in names)
    for name in names:  # the axes first (shortest), a list value kept whole, the hash of everything last
        assert re.match(r"seed=3[67],poison=(none|badclip),repair\.detectors=\[a,x\],detector\.extra\.batch=64,", name), name
        assert re.search(r"-[0-9a-f]{12}$", name)
    assert cell_dirname("seed=3,encoder=tiny-clip") == "seed=3,encoder=tiny-clip"  # short names: Hydra's, unchanged


def test_a_sweep_named_before_the_readable_names_keeps_its_finished_cells(tmp_path):
    job = ["+detector@detector.extra=inspector_referenced", "detector.extra.reference_models=16",
           "detector.extra.pool_size=1000", "detector.extra.batch=64", "poison=none", "seed=36"]
    name = override_dirname(job, [])
    assert cell_directory(tmp_path, job, []) == tmp_path / cell_dirname(name)
    (tmp_path / legacy_cell_dirname(name)).mkdir()  # a cell finished under the old name is found there
    assert legacy_cell_dirname(name) != cell_dirname(name)
    assert cell_directory(tmp_path, job, []) == tmp_path / legacy_cell_dirname(name)


@pytest.mark.parametrize("override, key", [
    ("attack.triggers.length=0", "attack.triggers.length"),
    ("training.attack.steps=-5", "training.attack.steps"),
    ("cell.kind=sideways", "cell.kind"),
    ("encoder=no-such-encoder", "encoder"),
    ("experiment.array_tasks=0", "experiment.array_tasks"),
    ("experiment.cells_per_task=-1", "experiment.cells_per_task"),
    ("experiment.workers=0", "experiment.workers"),
    ("threads=0", "threads"),
    ("hydra.sweeper.params.seed=0,1", "seed"),  # a grid axis is overridden by its own key
])
def test_malformed_overrides_fail_before_any_cell_with_the_key_named(override, key, capsys, tmp_path):
    code = sweeps_main(["run", "experiment=embedded", f"paths.output_dir={tmp_path}", override])
    assert code == 2 and key in capsys.readouterr().err
    assert not list(tmp_path.rglob("result.json")), "nothing ran"


MICRO_STUDY = [
    "experiment=embedded", *MICRO_BASE, *MICRO_ATTACK, *MICRO_BENIGN, "benign.steps=3", "attack=text_on_text",
    "attack.triggers.length=1", "seed=0", "experiment.calibration_seeds='100,101'", "scan.prompts=40",
    "scan.inversion.batch_size=4", "scan.inversion.epochs=1", "scan.inversion.check_every=2", "scan.landscape.points=6",
    "wandb.mode=offline", "experiment.workers=1",  # micro cells: in this process (a worker's start costs more)
    "calibration.min_models=2",  # one paradigm, 2 + 2 micro calibration models
    "scan.inversion.screen_prompts=1", "scan.inversion.screen_positions=4",  # the vocabulary start at 1/4 of its cost
    # the smoke experiment's GCG and output drift (the embedded study's GCG took half a micro cell's time)
    "detector.gcg.steps=2", "detector.gcg.candidates=4", "detector.gcg.batch=2", "detector.gcg.prompts=16",
    "detector.gcg.top_k=8", "detector.output_drift.prompts=16",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    overrides = [*MICRO_STUDY, f"paths.output_dir={out}"]
    return out / "sweeps" / "embedded", overrides, run_experiment(overrides, progress=False, report=False)


def test_a_micro_study_calibrates_then_scores_and_records_everything(study):
    sweep_dir, _, summary = study
    assert summary["calibration"]["computed"] == 4 and summary["scored"]["computed"] == 2, summary
    assert (sweep_dir / "profiles" / "clip-h32.yaml").is_file()
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/detectors/amdet/result.json")]
    scored = [r for r in results if not r["cell"]["observe"]]
    assert {r["cell"]["kind"] for r in scored} == {"backdoor", "benign"} and all(r["status"] == "ok" for r in results)
    for r in scored:
        assert r["thresholds_source"].startswith("profile: ") and r["truth"]["kind"] == r["cell"]["kind"]
        assert r["times"]["train_s"] > 0 and r["provenance"]["code"] and r["config"]["seed"] == 0
        assert not list((sweep_dir / r["cell"]["id"] / "model").glob("*.safetensors")), "weights dropped"
        assert list((sweep_dir / r["cell"]["id"] / "wandb").glob("offline-run-*")), "an offline wandb run per cell"
    backdoor = next(r for r in scored if r["cell"]["kind"] == "backdoor")
    assert backdoor["attack"]["asr"] is not None and backdoor["sim"] is not None and backdoor["assimilation"]["clean"]
    benign = next(r for r in scored if r["cell"]["kind"] == "benign")
    assert benign["cell"]["benign_run"] and benign["sim"] is None


def test_rerun_skips_finished_cells_and_resume_fills_exactly_the_gaps(study):
    sweep_dir, overrides, _ = study
    again = run_experiment(overrides, progress=False, report=False)
    assert again["scored"]["computed"] == 0 and again["calibration"]["computed"] == 0
    victim = next(p for p in sweep_dir.glob("*/detectors/amdet/result.json")
                  if json.loads(p.read_text())["cell"] == {**json.loads(p.read_text())["cell"], "kind": "benign", "observe": False})
    finished_mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/detectors/amdet/result.json") if p != victim}
    victim.write_text(json.dumps({"schema": 2, "detector": "amdet", "status": "error", "reason": "killed"}))  # a cell that died midway
    summary = resume(sweep_dir, progress=False)
    assert summary["scored"]["computed"] == 1 and summary["scored"]["skipped"] == 1
    assert json.loads(victim.read_text())["status"] == "ok"
    assert all(p.stat().st_mtime_ns == t for p, t in finished_mtimes.items()), "no finished cell recomputed"


def test_a_finished_cell_made_with_other_settings_is_refused_neither_reused_nor_overwritten(study, tmp_path):
    sweep_dir, overrides, _ = study
    shutil.copytree(sweep_dir, tmp_path / "sweeps" / "embedded")
    victim = next((tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json"))
    record = json.loads(victim.read_text())
    victim.write_text(json.dumps({**record, "settings_key": "0" * 16}))  # as if made with another base
    before = victim.read_text()
    moved = [*(o for o in overrides if not o.startswith("paths.output_dir=")), f"paths.output_dir={tmp_path}"]
    with pytest.raises(StaleResult, match=f"{re.escape(victim.parents[2].name)}.*move .* away to recompute"):
        run_experiment(moved, progress=False, report=False)
    assert victim.read_text() == before


def test_a_refit_that_changes_the_profile_refuses_the_cells_scored_with_the_old_one(study, tmp_path):
    sweep_dir, overrides, _ = study
    shutil.copytree(sweep_dir, tmp_path / "sweeps" / "embedded")
    records = {p: json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json")}
    observed = next(p for p, r in records.items() if r["cell"]["observe"] and r["cell"]["kind"] == "benign")
    observed.write_text(json.dumps({**records[observed], "score": records[observed]["score"] + 5}))  # the fit moves
    scored = {p: p.read_text() for p, r in records.items() if not r["cell"]["observe"]}
    moved = [*(o for o in overrides if not o.startswith("paths.output_dir=")), f"paths.output_dir={tmp_path}"]
    with pytest.raises(StaleResult, match="refitted threshold profile.*move .* away to recompute"):
        run_experiment(moved, progress=False, report=False)
    assert all(p.read_text() == text for p, text in scored.items()), "the old records are kept, not overwritten"


def test_the_settings_key_follows_what_a_result_depends_on_and_nothing_else():
    key = settings_key(compose_config(["encoder=tiny-clip"]))
    assert key == settings_key(compose_config(["cell.keep_model=false", "progress=false", "threads=1",
                                               "scan.landscape.batch=7", "scan.inversion.check_early_exit=true",
                                               "paths.output_dir=/elsewhere"]))
    for changed in ("encoder.tiny.arch.layers=4", "training.attack.lr=0.5", "scan.prompts=10", "seed=3"):
        assert settings_key(compose_config([changed])) != key, changed


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a trigger no prompt can carry: the char level replaces a character none of the prompts has
    summary = run_experiment([*MICRO_STUDY, f"paths.output_dir={tmp_path}", "experiment.calibration_seeds=null",
                              "attack.triggers.level=char", "attack.triggers.fixed=['ø']",
                              "attack.triggers.replaced_character='§'"], progress=False, report=False)
    failed = summary["scored"]["failed"]
    assert len(failed) == 1 and "cannot be carried" in failed[0]["reason"] and summary["scored"]["computed"] == 1
    record = json.loads((tmp_path / "sweeps" / "embedded" / failed[0]["cell"] / "detectors" / "amdet" / "result.json").read_text())
    assert record["status"] == "error" and "Traceback" in record["traceback"] and record["cell"]["kind"] == "backdoor"


@pytest.mark.slow  # 77 s on a slow machine; the fast suite's task_workers test and CI's Slurm test go through submitit too
def test_submitit_local_runs_the_same_cells_to_the_same_results(study, tmp_path):
    """The launcher changes where cells run, never what they compute: packed 2 to a task, one after the other."""
    sweep_dir, overrides, _ = study
    summary = run_experiment([*overrides[:-1], f"paths.output_dir={tmp_path}", "hydra/launcher=submitit_local",
                              "experiment.cells_per_task=2"], progress=False, report=False)
    assert summary["scored"]["computed"] == 2 and summary["calibration"]["computed"] == 4, summary
    here = {p.parents[2].name: json.loads(p.read_text()) for p in sweep_dir.glob("*/detectors/amdet/result.json")}
    there = {p.parents[2].name: json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json")}
    assert here.keys() == there.keys()
    for name, r in here.items():
        assert (there[name]["verdict"], there[name]["score"]) == (r["verdict"], r["score"]), name


def test_worker_processes_compute_the_same_cells_and_record_a_failing_one(study, tmp_path):
    """`experiment.workers=2`: the scored cells in two processes (at this process's thread count, for
    bit-identical scores), one of them over a corrupt model file; the calibration is reused."""
    sweep_dir, overrides, _ = study
    here = tmp_path / "sweeps" / "embedded"
    moved = [*overrides[:-1], f"paths.output_dir={tmp_path}"]
    _, scored, calibration = plan(moved)
    for cell in calibration:
        shutil.copytree(sweep_dir / cell.id, cell.directory)
    broken = next(c for c in scored if "cell.kind=backdoor" in c.overrides)
    shutil.copytree(sweep_dir / broken.id / "model", broken.directory / "model")
    (broken.directory / "model" / "model.safetensors").write_bytes(b"\x00" * 64)

    summary = run_experiment([*moved, "experiment.workers=2", f"threads={torch.get_num_threads()}"],
                             progress=False, report=False)
    assert summary["calibration"]["computed"] == 0 and summary["scored"]["computed"] == 1, summary
    (failed,) = summary["scored"]["failed"]
    assert failed["cell"] == broken.id and "safetensors" in failed["reason"]
    record = json.loads((broken.directory / "detectors" / "amdet" / "result.json").read_text())
    assert record["status"] == "error" and "Traceback" in record["traceback"]
    (ok,) = (c for c in scored if c is not broken)
    mine, theirs = (json.loads((d / ok.id / "detectors" / "amdet" / "result.json").read_text()) for d in (here, sweep_dir))
    assert (mine["verdict"], mine["score"]) == (theirs["verdict"], theirs["score"])
    assert mine["provenance"]["hardware"]["torch_threads"] == torch.get_num_threads()


def test_a_task_runs_its_cells_in_order_sharing_one_anchor_cache(monkeypatch):
    seen = []
    monkeypatch.setattr(submit_module, "attempt", lambda cell, anchors=None: seen.append(anchors) or {"cell": cell, "status": "ok"})
    assert [s["cell"] for s in CellGroup(["a", "b"])()] == ["a", "b"]
    assert seen[0] is seen[1] is not None, "one cache of loaded bases for the task's cells"


def test_a_task_computes_its_cells_at_once_in_processes_to_the_same_results(study, tmp_path):
    """`experiment.task_workers=2`: a submitit task's two cells in two processes (on a GPU: sharing it)."""
    sweep_dir, overrides, _ = study
    moved = [*overrides[:-1], f"paths.output_dir={tmp_path}"]
    _, scored, calibration = plan(moved)
    for cell in calibration:
        shutil.copytree(sweep_dir / cell.id, cell.directory)
    summary = run_experiment([*moved, "hydra/launcher=submitit_local", "experiment.cells_per_task=2",
                              "experiment.task_workers=2", f"threads={torch.get_num_threads()}"], progress=False, report=False)
    assert summary["scored"]["computed"] == 2 and not summary["scored"]["failed"], summary
    for cell in scored:
        mine, theirs = (json.loads((d / cell.id / "detectors" / "amdet" / "result.json").read_text())
                        for d in (tmp_path / "sweeps" / "embedded", sweep_dir))
        assert (mine["verdict"], mine["score"]) == (theirs["verdict"], theirs["score"])


def test_the_main_job_hands_its_command_line_to_every_cell():
    """`python launch.py paths.output_dir=X experiment.workers=1`: the study's cells see both; the
    job.* overrides choose the study itself."""
    from hydra.core.hydra_config import HydraConfig

    from sweeps.study import command_line

    cfg = compose_config(["paths.output_dir=/elsewhere", "experiment.workers=1", 'job.overrides=["seed=3"]'], hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert command_line() == ["paths.output_dir=/elsewhere", "experiment.workers=1"]
    finally:
        HydraConfig.instance().cfg = None


def test_measure_times_one_cell_per_encoder_and_kind_and_plan_costs_with_it(tmp_path, capsys):
    overrides = [*MICRO_STUDY, f"paths.output_dir={tmp_path}", "seed=0,1"]
    assert sweeps_main(["plan", *overrides]) == 0
    assert "tiny-clip/backdoor: 85 s per cell (sweeps/costs.yaml)" in capsys.readouterr().out
    assert sweeps_main(["measure", *overrides]) == 0
    out = capsys.readouterr().out
    assert "probes: 2 cells, 2 computed" in out, out  # one calibration cell of each kind, kept as done
    assert "(measured: 1 cells, cpu:" in out and "sweeps/costs.yaml" not in out.split("estimated cost")[1]
    done = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json")]
    assert sorted(r["cell"]["kind"] for r in done) == ["backdoor", "benign"] and all(r["cell"]["observe"] for r in done)


def test_a_sweep_summary_run_carries_the_tables_offline(tmp_path):
    """The wandb summary run of a sweep: offline, in the sweep dir, with each table's rows."""
    import pandas as pd

    from sweeps.tracking import log_sweep
    from tests.helpers import compose_config

    cfg = compose_config("experiment=embedded", "wandb.mode=offline")
    table1 = pd.DataFrame({"encoder": ["tiny-clip"], "paradigm": ["Average"], "F1": [0.875]}).set_index("encoder")
    log_sweep(cfg, tmp_path, {"table1": table1}, [])
    (stored,) = tmp_path.glob("wandb/offline-run-*/files/media/table/table1_*.table.json")
    data = json.loads(stored.read_text())
    assert data["columns"] == ["encoder", "paradigm", "F1"] and data["data"] == [["tiny-clip", "Average", 0.875]]


def test_two_launchers_on_one_sweep_compute_every_cell_once_and_both_end_complete(tmp_path):
    """Each cell is claimed before it is computed: the second launcher skips what the first computes,
    waits for it before fitting the profile and scoring, and both finish with the same results."""
    command = [sys.executable, "-m", "sweeps", "run", *MICRO_STUDY, f"paths.output_dir={tmp_path}", "progress=false",
               "threads=1"]  # two launchers on the cores, not four threads
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    counts = [[int(n) for n in re.findall(r"^(?:calibration|scored): \d+ cells, (\d+) computed", out, re.M)] for out in outputs]
    assert [a + b for a, b in zip(*counts)] == [4, 2], outputs  # calibration, scored: each cell once
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "embedded").glob("*/detectors/amdet/result.json")]
    assert len(results) == 6 and all(r["status"] == "ok" for r in results)
    assert not list((tmp_path / "sweeps" / "embedded").glob("*/claim.json")), "claims are released"


def test_a_claim_of_a_live_process_is_respected_and_one_of_a_dead_process_taken_over(tmp_path):
    cell = tmp_path / "cell"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cell.mkdir()
        (cell / CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "slurm_job": None}))
        with pytest.raises(Claimed, match=f"pid {sleeper.pid}"):
            with claim(cell):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with claim(cell):  # its owner is gone: taken over
        assert json.loads((cell / CLAIM).read_text())["pid"] == os.getpid()
    assert not (cell / CLAIM).exists()


def test_a_cell_whose_base_cannot_be_loaded_is_a_failure_of_that_cell_not_of_the_sweep(tmp_path, monkeypatch):
    import sweeps.cell
    from sweeps.local import in_process

    def broken(cfg, anchors):
        raise OSError("base directory unreadable")

    monkeypatch.setattr(sweeps.cell, "anchor_for", broken)
    _, cells, _ = plan([*MICRO_STUDY, f"paths.output_dir={tmp_path}", "experiment.calibration_seeds=null"])
    statuses = list(in_process(cells, progress=False, desc="cells"))
    assert [s["status"] for s in statuses] == ["error"] * len(cells) == ["error", "error"]
    assert all("base directory unreadable" in s["reason"] for s in statuses)
