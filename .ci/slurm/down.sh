#!/usr/bin/env bash
# Stop the single-node CI Slurm cluster that .ci/slurm/up.sh started (run as root).
#
# Only the daemons recorded in the state dir are stopped, each by its PID (and only while that PID
# still runs the same program, started at the recorded time: a reused PID is left alone). Nothing
# is killed by name. Packages, /etc/slurm and the state dir (logs, job-id counter) stay, so the
# next up.sh is fast.
#
#   SLURM_CI_STATE     the state dir up.sh used                          [/tmp/amdet-slurm]
#   DOWN_CANCEL_JOBS   1 = scancel all jobs first, so no job process outlives slurmd   [1]
set -euo pipefail

STATE="${SLURM_CI_STATE:-/tmp/amdet-slurm}"
CANCEL="${DOWN_CANCEL_JOBS:-1}"
T0=${EPOCHREALTIME/,/.}
elapsed() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "down.sh [$(elapsed)s] $*"; }
die() { echo "down.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
if ! ls "$STATE"/pids/* >/dev/null 2>&1; then
  log "no daemons recorded in $STATE/pids: nothing to stop"
  exit 0
fi

starttime() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }  # field 22
# a zombie (exited, not yet reaped: this VM's PID 1 reaps lazily) counts as stopped
running() { [ "$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null)" != Z ] && [ -d "/proc/$1" ]; }
ours() {  # ours PID NAME STARTTIME -> 0 while PID still runs that daemon
  running "$1" && [ "$(starttime "$1")" = "$3" ] &&
    [ "$(cut -c1-15 "/proc/$1/comm" 2>/dev/null)" = "$(cut -c1-15 <<<"$2")" ]
}

# 1. cancel the jobs, so that their processes (under slurmstepd, which outlives slurmd) end too
if [ "$CANCEL" = 1 ] && [ -s "$STATE/pids/slurmctld" ] && read -r n p s <"$STATE/pids/slurmctld" && ours "$p" "$n" "$s"; then
  jobs="$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    # KillWait=5: SIGKILL follows SIGTERM after 5 s
    for _ in $(seq 1 150); do
      [ -z "$(squeue -h -t R,CG,CF,S,SO 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi

# 2. stop the daemons by PID. Stages, each waited for: slurmd + slurmctld together (each takes ~2 s
#    to shut down), then slurmdbd (slurmctld flushes accounting to it on exit), mariadbd, munged.
stopped=""
stop() {  # stop NAME...: SIGTERM them all, wait up to 30 s, then SIGKILL
  local name f n pid st live=() i
  for name in "$@"; do
    f="$STATE/pids/$name"
    [ -s "$f" ] || continue
    read -r n pid st <"$f"
    if ours "$pid" "$n" "$st"; then
      kill -TERM "$pid" 2>/dev/null || true
      live+=("$name $pid $st")
    else
      log "$name (pid $pid) was no longer running"
      rm -f "$f"
    fi
  done
  for i in $(seq 1 310); do
    local still=()
    for e in "${live[@]}"; do
      read -r name pid st <<<"$e"
      if ours "$pid" "$name" "$st"; then
        still+=("$e")
        [ "$i" -eq 300 ] && { log "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
      else
        rm -f "$STATE/pids/$name"
        stopped="$stopped $name($pid)"
      fi
    done
    live=("${still[@]}")
    [ ${#live[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  die "still running after SIGKILL: ${live[*]}"
}
stop slurmd slurmctld
stop slurmdbd
stop mariadbd
stop munged
rm -f "$STATE"/run/*.pid
log "stopped:${stopped:- nothing}"
echo "down.sh: done in $(elapsed) s"
