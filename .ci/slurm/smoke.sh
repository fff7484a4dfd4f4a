#!/usr/bin/env bash
# Smoke test of a running Slurm cluster (e.g. the CI one of .ci/slurm/up.sh) through the project's
# own launcher config, conf/hydra/launcher/slurm.yaml. Needs no root.
#
#   1. multirun: `launch.py -m hydra/launcher=slurm` with 2 jobs (default: job=bases on the tiny-clip
#      base, seed=0,1: ~10 s when that base is cached in $AMDET_CACHE, minutes when it must be
#      built). Checks the exit code, that sacct reports both array tasks COMPLETED, that submitit's
#      result pickles hold COMPLETED JobReturns, and that each job wrote its bases.json.
#   2. cancel (SMOKE_CANCEL=1): a 2-task array of sleeping jobs submitted with submitit; once both
#      run, task 1 is scancel'ed: sacct and submitit must report it CANCELLED while task 0 still
#      runs; then task 0 is cancelled too.
#   3. with the sacct stand-in (no slurmdbd): it must give the same states for those jobs from the
#      completion log alone, i.e. after slurmctld has forgotten them (MinJobAge).
#
# Environment:
#   PYTHON        interpreter with the project installed   [.venv/bin/python, else python3]
#   SMOKE_DIR     where the sweep and logs go               [a new /tmp/amdet-slurm-smoke.XXXXXX]
#   SMOKE_ARGS    the multirun's overrides (2 jobs)         [job=bases 'job.encoders=[tiny-clip]' progress=false seed=0,1]
#   SMOKE_CANCEL  1 = run stage 2 (and its part of stage 3) [1]
#   SMOKE_TIMEOUT seconds allowed for the multirun          [900]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${SMOKE_DIR:-$(mktemp -d /tmp/amdet-slurm-smoke.XXXXXX)}"
SMOKE_ARGS="${SMOKE_ARGS:-job=bases 'job.encoders=[tiny-clip]' progress=false seed=0,1}"
CANCEL="${SMOKE_CANCEL:-1}"
TIMEOUT="${SMOKE_TIMEOUT:-900}"
mkdir -p "$OUT"
T0=${EPOCHREALTIME/,/.}
elapsed() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "smoke.sh [$(elapsed)s] $*"; }
fail() { echo "smoke.sh: FAILED: $*" >&2; echo "smoke.sh: logs in $OUT" >&2; exit 1; }

scontrol ping 2>/dev/null | grep -q UP || fail "no slurmctld answers (start the CI cluster: sudo .ci/slurm/up.sh)"
# sacct_states ARRAY_ID: "JOBID STATE" per array task (steps dropped, "CANCELLED by 0" cut to
# CANCELLED); the real sacct can lag a moment behind a job's end (slurmdbd), so callers retry
sacct_states() { sacct -o JobID,State --parsable2 -j "$1" 2>/dev/null | awk -F'|' -v id="$1" '$1 ~ "^" id "_[0-9]+$" { split($2, st, " "); print $1, st[1] }' | sort; }
expect_states() {  # expect_states ARRAY_ID "ID STATE ..." (sorted lines) SECONDS
  local got=""
  for _ in $(seq 1 $(($3 * 5))); do
    got="$(sacct_states "$1")"
    [ "$got" = "$2" ] && return 0
    sleep 0.2
  done
  fail "sacct -j $1 gave
$got
expected
$2"
}

# ---- 1. a 2-job multirun through hydra/launcher=slurm -------------------------------------------------
log "multirun through hydra/launcher=slurm: $SMOKE_ARGS (sweep dir $OUT/sweep)"
args=()
eval "args=($SMOKE_ARGS)"
rc=0
timeout "$TIMEOUT" "$PYTHON" launch.py -m hydra/launcher=slurm hydra.sweep.dir="$OUT/sweep" \
  hydra.launcher.timeout_min=15 hydra.launcher.mem_gb=1 "${args[@]}" >"$OUT/multirun.log" 2>&1 || rc=$?
[ $rc -eq 0 ] || { tail -30 "$OUT/multirun.log" >&2; fail "multirun exited with $rc (log: $OUT/multirun.log)"; }
# slurm.yaml: submitit_folder = <sweep dir>/.submitit/<launch time>/<job id>
mapfile -t tasks < <(find "$OUT/sweep/.submitit" -mindepth 2 -maxdepth 2 -type d -regex '.*/[0-9]+_[0-9]+' -printf '%f\n' | sort -t_ -k2n)
[ ${#tasks[@]} -eq 2 ] || fail "expected 2 array tasks under $OUT/sweep/.submitit, found: ${tasks[*]:-none}"
SUBMITIT_DIR="$(dirname "$(find "$OUT/sweep/.submitit" -mindepth 2 -maxdepth 2 -type d -name "${tasks[0]}")")"
AID="${tasks[0]%%_*}"
log "multirun done: array job $AID, tasks ${tasks[*]}"
expect_states "$AID" "$(printf '%s COMPLETED\n' "${tasks[@]}")" 15
log "sacct: ${tasks[*]} COMPLETED"
"$PYTHON" - "$SUBMITIT_DIR" "${tasks[@]}" <<'EOF'
import sys
from pathlib import Path

import submitit

for jid in sys.argv[2:]:
    job = submitit.SlurmJob(folder=Path(sys.argv[1]) / "%j", job_id=jid)
    ret = job.result()  # the task's hydra JobReturn
    print(f"smoke.sh: submitit {jid}: state={job.state} JobReturn.status={ret.status.name}")
    assert job.state == "COMPLETED" and ret.status.name == "COMPLETED", (job.state, ret.status)
EOF
# each job's output dir is <sweep dir>/<hydra.sweep.subdir> (conf/config.yaml names it by the overrides)
n="$(find "$OUT/sweep" -path "$OUT/sweep/.submitit" -prune -o -name bases.json -size +0 -print | wc -l)"
[ "$n" -eq 2 ] || fail "expected 2 bases.json (one per job) under $OUT/sweep, found $n"
log "stage 1 ok: both jobs COMPLETED and wrote bases.json"

# ---- 2. scancel one of two sleeping array tasks ----------------------------------------------------
CID=""
if [ "$CANCEL" = 1 ]; then
  log "cancel: 2 sleeping array tasks through submitit, scancel task 1"
  CID="$("$PYTHON" - "$OUT/cancel" <<'EOF'
import subprocess
import sys
import time

import submitit

ex = submitit.AutoExecutor(folder=sys.argv[1] + "/%j", cluster="slurm")
ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1, slurm_array_parallelism=2,
                     name="amdet-smoke-sleep")
jobs = ex.map_array(time.sleep, [600, 600])
print(f"smoke.sh: submitted {[j.job_id for j in jobs]}", file=sys.stderr)
try:
    deadline = time.time() + 120
    while not all(j.watcher.get_state(j.job_id, mode="force") == "RUNNING" for j in jobs):
        if time.time() > deadline:
            sys.exit(f"not both RUNNING after 120 s: {[j.state for j in jobs]}")
        time.sleep(0.5)
    subprocess.check_call(["scancel", jobs[1].job_id])
    t = time.time()
    # the real sacct says "CANCELLED by <uid>"
    while not jobs[1].watcher.get_state(jobs[1].job_id, mode="force").startswith("CANCELLED"):
        if time.time() - t > 30:
            sys.exit(f"task 1 not CANCELLED 30 s after scancel: {jobs[1].state}")
        time.sleep(0.5)
    jobs[1]._results_timeout_s = 1  # submitit waits 15 s for a result file (NFS lag) by default
    try:
        jobs[1].result()
        sys.exit("result() of a cancelled job returned")
    except submitit.core.utils.UncompletedJobError as e:
        assert "CANCELLED" in str(e), e
    state0 = jobs[0].watcher.get_state(jobs[0].job_id, mode="force")
    print(f"smoke.sh: submitit: {jobs[1].job_id} CANCELLED (result() raised UncompletedJobError),"
          f" {jobs[0].job_id} {state0}", file=sys.stderr)
    assert state0 == "RUNNING", state0
finally:
    subprocess.call(["scancel", jobs[0].job_id.split("_")[0]])
    print(jobs[0].job_id.split("_")[0])
EOF
)" || fail "cancel stage"
  expect_states "$CID" "$(printf '%s_0 CANCELLED\n%s_1 CANCELLED' "$CID" "$CID")" 15
  log "stage 2 ok: array $CID, both tasks CANCELLED (task 1 while task 0 still ran)"
fi

# ---- 3. the sacct stand-in, with slurmctld's memory taken away ---------------------------------------
if head -5 "$(command -v sacct)" | grep -q "sacct stand-in"; then
  mkdir -p "$OUT/no-squeue"
  printf '#!/bin/sh\nexit 1\n' >"$OUT/no-squeue/squeue"   # as if every job were past MinJobAge
  chmod +x "$OUT/no-squeue/squeue"
  for id in $AID $CID; do
    live="$(sacct_states "$id")"
    old="$(PATH="$OUT/no-squeue:$PATH" sacct_states "$id")"
    [ "$live" = "$old" ] || fail "stand-in from the completion log alone gave
$old
for $id, squeue gave
$live"
  done
  log "stage 3 ok: the sacct stand-in answers from the completion log alone as from squeue"
fi
echo "smoke.sh: ok in $(elapsed) s (sweep and logs: $OUT)"
