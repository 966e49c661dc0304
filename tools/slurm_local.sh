#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, so that `srun --mpi=pmix` runs (and tests/test_data_parallel.cpp's srun
# cases run instead of skipping). Debian 12 as root: installs slurm-wlm and munge, writes /etc/slurm/slurm.conf for
# this host (only if there is none, or it is ours), starts munged, slurmctld and slurmd unless they already run, and
# waits until the node takes jobs. Safe to run twice. Not needed to use the engine on a real cluster.
#   tools/slurm_local.sh          set up and start
#   tools/slurm_local.sh --stop   stop the three daemons
set -euo pipefail
marker="# written by unet-engine tools/slurm_local.sh"
if [ "${1:-}" = --stop ]; then
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
  exit 0
fi
[ $# -eq 0 ] || { echo "slurm_local.sh: unknown argument '$1' (expected --stop or nothing)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "slurm_local.sh: must run as root (it installs packages and starts daemons)" >&2; exit 2; }
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge > /dev/null
fi
host=$(hostname -s)
cores=$(nproc)
conf=/etc/slurm/slurm.conf
if [ -f "$conf" ] && ! grep -qxF "$marker" "$conf"; then
  echo "slurm_local.sh: $conf exists and was not written by this script; leaving it (and this machine's Slurm) alone" >&2
else
  mkdir -p /etc/slurm
  # linuxproc / task none / no accounting: no cgroups or database needed; root runs the jobs, as everything here does.
  cat > "$conf" << EOF
$marker
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
NodeName=$host CPUs=$cores State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
fi
mkdir -p /var/spool/slurmd /var/spool/slurmctld /run/munge
chown munge:munge /run/munge
pgrep -x munged > /dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld > /dev/null || slurmctld
pgrep -x slurmd > /dev/null || slurmd
for _ in $(seq 30); do
  if sinfo -h -o %t 2> /dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm_local.sh: one-node Slurm up on $host ($cores CPUs): $(srun --version)"
    exit 0
  fi
  sleep 1
done
echo "slurm_local.sh: the node did not come up within 30 s; see /var/log/slurmctld.log and /var/log/slurmd.log" >&2
sinfo >&2 || true
exit 1
