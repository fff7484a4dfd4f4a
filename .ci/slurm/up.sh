#!/usr/bin/env bash
# Bring up a single-node Slurm cluster for CI on Debian 12 / Ubuntu (run as root).
#
# No systemd needed: the daemons are started directly and every PID we start is recorded in the
# state dir, so `.ci/slurm/down.sh` can stop exactly those. No cgroups needed either
# (proctrack/linuxproc + task/none: memory limits are NOT enforced).
#
#   sudo .ci/slurm/up.sh                       # default: no database, `sacct` stand-in (fastest)
#   sudo WITH_SLURMDBD=1 .ci/slurm/up.sh       # real accounting: MariaDB + slurmdbd (~20 s more, cold)
#   sudo OVERSUBSCRIBE_CPUS=8 .ci/slurm/up.sh  # advertise 8 CPUs whatever the machine has
#
# Environment:
#   SLURM_CI_STATE      state dir: PIDs, logs, slurmctld state, spool   [/tmp/amdet-slurm]
#   WITH_SLURMDBD       1 = MariaDB + slurmdbd, real `sacct`; 0 = `sacct` stand-in   [0]
#   OVERSUBSCRIBE_CPUS  N = advertise N CPUs (SlurmdParameters=config_overrides)     [unset]
#   SLURM_CI_RESTART    1 = restart even when the cluster is already up and unchanged  [0]
#   SLURM_CI_CLUSTER    ClusterName                                                    [ci]
#   MIN_JOB_AGE         seconds slurmctld keeps a finished job (squeue/scontrol)        [3600]
#   APT_OPTS            extra apt-get install options                                  [unset]
#
# Idempotent: when every daemon recorded in the state dir is alive and slurm.conf is unchanged,
# the running cluster is reused (checked with `srun hostname`); otherwise our daemons are stopped
# (down.sh) and started again with the new configuration.
#
# Without slurmdbd, Slurm's own `sacct` only says "accounting storage is disabled", and submitit
# (which learns job states only from `sacct -o JobID,State,NodeList --parsable2 -j ID ...`) then
# waits forever on a cancelled job. So this installs /usr/local/bin/sacct, a stand-in that answers
# that query: live jobs from `squeue --states=all`; jobs already purged from slurmctld's memory
# (MinJobAge) from the job-completion log (jobcomp/filetxt). WITH_SLURMDBD=1 removes the stand-in
# and uses the real sacct.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SLURM_CI_STATE:-/tmp/amdet-slurm}"
WITH_SLURMDBD="${WITH_SLURMDBD:-0}"
OVERSUBSCRIBE_CPUS="${OVERSUBSCRIBE_CPUS:-}"
RESTART="${SLURM_CI_RESTART:-0}"
CLUSTER="${SLURM_CI_CLUSTER:-ci}"
MIN_JOB_AGE="${MIN_JOB_AGE:-3600}"
APT_OPTS="${APT_OPTS:-}"
MAX_ARRAY_SIZE=1001
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME/,/.}

elapsed() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "up.sh [$(elapsed)s] $*"; }
die() { echo "up.sh: ERROR: $*" >&2; exit 1; }
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; [ $rc -eq 0 ] || echo "up.sh: FAILED (exit $rc)$([ -d "$STATE/log" ] && echo "; daemon logs: $STATE/log/")" >&2' EXIT

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu system with apt-get"
case "$WITH_SLURMDBD" in 0|1) ;; *) die "WITH_SLURMDBD must be 0 or 1, got '$WITH_SLURMDBD'" ;; esac
if [ -n "$OVERSUBSCRIBE_CPUS" ] && ! [[ "$OVERSUBSCRIBE_CPUS" =~ ^[1-9][0-9]*$ ]]; then
  die "OVERSUBSCRIBE_CPUS must be a positive integer, got '$OVERSUBSCRIBE_CPUS'"
fi

# ---- helpers: a recorded daemon is "NAME PID STARTTIME" in $STATE/pids/NAME ------------------
starttime() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }  # field 22
# a zombie (exited, not yet reaped: this VM's PID 1 reaps lazily) counts as stopped
running() { [ "$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null)" != Z ] && [ -d "/proc/$1" ]; }
alive() {  # alive NAME -> 0 when the recorded PID still runs that daemon
  local f="$STATE/pids/$1" name pid st
  [ -s "$f" ] || return 1
  read -r name pid st <"$f"
  running "$pid" && [ "$(starttime "$pid")" = "$st" ] &&
    [ "$(cut -c1-15 "/proc/$pid/comm" 2>/dev/null)" = "$(cut -c1-15 <<<"$name")" ]
}
record() {  # record NAME PIDFILE: wait (up to 30 s) for the daemon's pid file, record the PID
  local name=$1 pidfile=$2 pid=""
  for _ in $(seq 1 300); do
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] && running "$pid" && [ "$(cut -c1-15 "/proc/$pid/comm" 2>/dev/null)" = "$(cut -c1-15 <<<"$name")" ] && break
    pid=""; sleep 0.1
  done
  [ -n "$pid" ] || die "$name did not start (no live PID in $pidfile); see $STATE/log/"
  echo "$name $pid $(starttime "$pid")" >"$STATE/pids/$name"
  log "$name started, pid $pid"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${secs}s waiting for $what"
}

# ---- 1. packages -----------------------------------------------------------------------------
PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_SLURMDBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  APT_LOG="$(mktemp /tmp/amdet-slurm-apt.XXXXXX)"
  apt-get update -q >"$APT_LOG" 2>&1 || { tail -20 "$APT_LOG" >&2; rm -f "$APT_LOG"; die "apt-get update failed"; }
  # policy-rc.d / missing systemd make the packages' own service starts fail: expected, we start
  # the daemons ourselves below.
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 $APT_OPTS $missing \
      >>"$APT_LOG" 2>&1 || { tail -30 "$APT_LOG" >&2; rm -f "$APT_LOG"; die "apt-get install$missing failed"; }
  rm -f "$APT_LOG"
  log "packages installed"
else
  log "packages already installed"
fi

# ---- 2. configuration --------------------------------------------------------------------------
mkdir -p "$STATE"/{pids,run,log,ctld,spool,conf} /etc/slurm
chmod 755 "$STATE"
HOST="$(hostname -s 2>/dev/null || hostname)"
[ -n "$HOST" ] || die "empty hostname"
if ! getent hosts "$HOST" >/dev/null; then
  echo "127.0.0.1 $HOST" >>/etc/hosts
  log "added '127.0.0.1 $HOST' to /etc/hosts"
fi
# `slurmd -C`: NodeName=.. CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
HW="$(slurmd -C | head -1)"
MEM_MB="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
[ -n "$MEM_MB" ] || die "could not read the hardware from 'slurmd -C': $HW"
REALMEM=$((MEM_MB * 90 / 100))
if [ -n "$OVERSUBSCRIBE_CPUS" ]; then
  NODE_HW="CPUs=$OVERSUBSCRIBE_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$OVERSUBSCRIBE_CPUS ThreadsPerCore=1"
  OVERRIDES="SlurmdParameters=config_overrides"
else
  # the real topology: `CPUs=2` alone makes slurmd complain about socket/core boundaries
  NODE_HW="$(grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$HW")"
  OVERRIDES=""
fi
if [ "$WITH_SLURMDBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

cat >"$STATE/conf/slurm.conf" <<EOF
# written by .ci/slurm/up.sh: single-node CI cluster (state dir $STATE)
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again only cred_expire+1 s later (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# no cgroups: /proc based process tracking, no binding, memory not enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# completion log: the sacct stand-in answers from it once a job has left slurmctld's memory
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
$ACCT
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# the default intervals (60 s / 30 s) leave CPUs idle for seconds between short jobs
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
# submitit ignores SIGTERM: the default 30 s keeps a cancelled job in CG (holding its CPUs) that long
KillWait=5
# finished jobs stay visible to squeue/scontrol this long (then only in the completion log)
MinJobAge=$MIN_JOB_AGE
# array indices 0..MaxArraySize-1 (as Slurm's default). submitit puts a whole sweep into one array,
# so bigger sweeps need hydra.sweeper.max_batch_size. The sacct stand-in relies on this bound
# for arrays cancelled before any task ran
MaxArraySize=$MAX_ARRAY_SIZE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$OVERRIDES
NodeName=$HOST $NODE_HW RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if [ "$WITH_SLURMDBD" = 1 ]; then
  cat >"$STATE/conf/slurmdbd.conf" <<EOF
# written by .ci/slurm/up.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/conf/slurmdbd.conf"
fi

# ---- 3. reuse a running cluster, or stop ours -------------------------------------------------
DAEMONS="munged slurmctld slurmd"
[ "$WITH_SLURMDBD" = 1 ] && DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"
all_alive=1
for d in $DAEMONS; do alive "$d" || all_alive=0; done
conf_same=1
cmp -s "$STATE/conf/slurm.conf" /etc/slurm/slurm.conf || conf_same=0
if [ "$WITH_SLURMDBD" = 1 ]; then cmp -s "$STATE/conf/slurmdbd.conf" /etc/slurm/slurmdbd.conf || conf_same=0; fi
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }
if [ "$RESTART" != 1 ] && [ $all_alive = 1 ] && [ $conf_same = 1 ] && scontrol ping 2>/dev/null | grep -q UP; then
  log "cluster already up (pids in $STATE/pids): reusing it"
else
  if ls "$STATE"/pids/* >/dev/null 2>&1; then
    log "stopping the daemons recorded in $STATE/pids (restart)"
    SLURM_CI_STATE="$STATE" "$HERE/down.sh" >/dev/null
  fi
  # daemons that we did not start would clash with ours
  for d in slurmctld slurmd slurmdbd; do
    pid="$(ps -eo pid=,stat=,comm= | awk -v d="$d" '$2 !~ /^Z/ && $3 == d { print $1; exit }')"
    if [ -n "$pid" ]; then
      die "a $d we did not start is running (pid $pid); stop it first (it is not in $STATE/pids)"
    fi
  done
  install -m 644 "$STATE/conf/slurm.conf" /etc/slurm/slurm.conf
  [ "$WITH_SLURMDBD" = 1 ] && install -m 600 "$STATE/conf/slurmdbd.conf" /etc/slurm/slurmdbd.conf
  rm -f /etc/slurm/cgroup.conf
  rm -f "$STATE"/run/*.pid

  # -- munge (Debian's postinst normally generates /etc/munge/munge.key) --
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null ||
      { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null &&
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key; }
  fi
  install -d -o munge -g munge -m 0755 /run/munge   # systemd's RuntimeDirectory, normally
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "a munged we did not start is already answering: using it (down.sh will leave it alone)"
    rm -f "$STATE/pids/munged"
  else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force   # daemonizes; --force: a stale socket from a killed munged
    record munged /run/munge/munged.pid
    wait_for 10 "munge credentials" sh -c 'munge -n | unmunge'
  fi

  # -- accounting: MariaDB + slurmdbd, or the sacct stand-in --
  if [ "$WITH_SLURMDBD" = 1 ]; then
    if mariadb-admin ping >/dev/null 2>&1; then
      log "a MariaDB we did not start is already answering: using it"
      rm -f "$STATE/pids/mariadbd"
    else
      install -d -o mysql -g mysql -m 0755 /run/mysqld
      rm -f /run/mysqld/mysqld.pid
      # runs in the foreground: detached from this shell, it switches to the mysql user itself
      setsid nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
        >"$STATE/log/mariadb.log" 2>&1 </dev/null &
      record mariadbd /run/mysqld/mysqld.pid
      # a stale socket file survives a stop: ask the server, do not look for the socket
      wait_for 30 "MariaDB" mariadb-admin ping
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    /usr/sbin/slurmdbd                               # daemonizes
    record slurmdbd "$STATE/run/slurmdbd.pid"
    wait_for 30 "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true   # "already exists" on re-runs
    rm -f /usr/local/bin/sacct
  fi

  # -- slurm --
  /usr/sbin/slurmctld                                  # daemonizes
  record slurmctld "$STATE/run/slurmctld.pid"
  /usr/sbin/slurmd                                     # daemonizes
  record slurmd "$STATE/run/slurmd.pid"
fi

if [ "$WITH_SLURMDBD" = 0 ]; then
  # (re)installed on every run, with the state dir baked in
  cat >/usr/local/bin/sacct.tmp <<'STANDIN'
#!/bin/bash
# sacct stand-in for a Slurm cluster WITHOUT slurmdbd, installed by amdet-bench's .ci/slurm/up.sh
# (WITH_SLURMDBD=1 removes it). It answers the query submitit makes:
#     sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]
# and prints JobID|State|NodeList for every job or array task whose job id, array job id or
# JobID is asked for (all jobs when no -j). Other options are accepted and ignored.
# Sources, newest wins:
#   1. `squeue --states=all`: slurmctld keeps finished jobs for MinJobAge (3600 s);
#   2. the job-completion log (jobcomp/filetxt) for jobs already purged from slurmctld. An array
#      cancelled before some tasks ran leaves one record without a task id for all of them: it is
#      printed as ID_[0-MAXIDX] (MaxArraySize-1), overridden by the tasks' own records.
STATE="@STATE@"
MAXIDX="@MAXIDX@"
ids=""
add() { ids="$ids ${1//,/ }"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) add "${2:-}"; shift; [ $# -gt 0 ] && shift ;;
    -j*) add "${1#-j}"; shift ;;
    --jobs=*) add "${1#--jobs=}"; shift ;;
    -h|--help|--usage)
      echo "sacct stand-in (no slurmdbd): sacct [-j ID[,ID...]]... prints JobID|State|NodeList"
      exit 0 ;;
    *) shift ;;
  esac
done
echo "JobID|State|NodeList"
{
  [ -r "$STATE/log/jobcomp.log" ] && sed 's/^/C /' "$STATE/log/jobcomp.log"
  squeue -h --states=all -o 'Q %A|%F|%i|%T|%N' 2>/dev/null
} | awk -v want="$ids" -v maxidx="$MAXIDX" '
  BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1 }
  function wanted(raw, base, disp) { return n == 0 || (raw in W) || (base in W) || (disp in W) }
  function field(key) {
    if (match($0, " " key "=[^ ]*")) return substr($0, RSTART + length(key) + 2, RLENGTH - length(key) - 2)
    return ""
  }
  $1 == "C" {
    raw = field("JobId"); st = field("JobState"); nl = field("NodeList")
    arr = field("ArrayJobId"); task = field("ArrayTaskId")
    base = (arr != "") ? arr : raw
    disp = (task != "") ? base "_" task : raw
    if (!wanted(raw, base, disp)) next
    if (task == "" && field("NodeCnt") == "0") {  # never ran: maybe the rest of an array
      meta[base] = base "_[0-" maxidx "]|" st "|"
    }
    if (!(disp in C)) order[++nc] = disp
    C[disp] = st "|" nl; next
  }
  $1 == "Q" {
    split(substr($0, 3), q, "|")
    if (!wanted(q[1], q[2], q[3])) next
    Q[q[3]] = 1; out[++no] = q[3] "|" q[4] "|" q[5]; next
  }
  END {  # submitit reads the lines in order: the later, more specific ones win
    for (b in meta) print meta[b]
    for (i = 1; i <= nc; i++) if (!(order[i] in Q)) print order[i] "|" C[order[i]]
    for (i = 1; i <= no; i++) print out[i]
  }'
exit 0
STANDIN
  sed -i -e "s#@STATE@#$STATE#g" -e "s#@MAXIDX@#$((MAX_ARRAY_SIZE - 1))#g" /usr/local/bin/sacct.tmp
  chmod 755 /usr/local/bin/sacct.tmp
  mv -f /usr/local/bin/sacct.tmp /usr/local/bin/sacct
fi

# ---- 4. wait for the node, then prove it runs a job ------------------------------------------------
ok_state() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
wait_for 60 "node $HOST to become idle (see sinfo -R and $STATE/log/slurmd.log)" ok_state
# after a restart the node may briefly show unk/down; ReturnToService=2 brings it back
out="$(timeout 120 srun -t 1 -N1 -n1 hostname 2>&1)" || die "'srun hostname' failed: $out"
[ "$out" = "$HOST" ] || die "'srun hostname' printed '$out', expected '$HOST'"
log "node $HOST $(node_state); srun hostname -> $out"
sinfo
echo "up.sh: Slurm CI cluster up in $(elapsed) s; stop it with: $HERE/down.sh"
