#!/usr/bin/env bash
# The mission path on a GPU machine, one command (MIG mode is never touched; a GPU in MIG mode is
# refused): unpacks Debian's Slurm and munge, builds patched NCCL with `flexmig-gres-helper nccl
# install`, starts CUDA MPS, then runs flexmig-gpu-job: a throwaway Slurm on loopback whose GPUs
# are cut into emulated leaves, the Lua filters and the real plugin with nccl=, and
# `sbatch --gres=mig:4 -n4` with `srun --flexmig python tests/gpu/ddp_job.py`, a 7-leaf job and
# two jobs at once, checked (bindings, SHM only, equal parameters, falling loss) and timed against
# one process with the job's whole SM share, and the 7-leaf job again with the host-reduce library
# (plugstack hostreduce=). Its last line is PASS when everything held; the log
# goes to $OUT/slurm-job-<date>.log (commit it as tests/gpu/records/).
#
#   bash tests/gpu/slurm-job.sh            # on the GPU machine, after tests/gpu/prepare-slurm-job.sh here
#   DRY_RUN=1 bash tests/gpu/slurm-job.sh  # no GPU, no torch: the Slurm path only (what CI runs)
#
# Environment: CARRY (tests/gpu/carry), WORK (/tmp/flexmig-slurm-job), OUT ($WORK), PYTHON
# (python3), STEPS (300), NCCL_LIB (use this patched libnccl.so.2 instead of building one).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${CARRY:-$REPO/tests/gpu/carry}
WORK=${WORK:-/tmp/flexmig-slurm-job}
OUT=${OUT:-$WORK}
STEPS=${STEPS:-300}
mkdir -p "$WORK" "$OUT"
cd "$REPO"
if [ -n "${DRY_RUN:-}" ]; then
  T=${CARGO_TARGET_DIR:-$REPO/target}/debug
  FLEXMIG_SPANK_SO=${FLEXMIG_SPANK_SO:-$T/libflexmig_spank.so} exec "$T/flexmig-gpu-job" --dry-run --steps 1
fi
if [ ! -f "$WORK/slurm-unpacked" ] || ! command -v slurmctld >/dev/null; then
  # Debian's packages, unpacked without replacing anything the machine has (its own libraries win).
  stage=$WORK/debroot
  rm -rf "$stage" && mkdir -p "$stage"
  for d in "$CARRY"/debs/*.deb; do dpkg -x "$d" "$stage"; done
  # Debian 12 packages may still ship /lib, /bin, /sbin; on a merged-/usr system those are links.
  for d in lib lib64 bin sbin; do
    if [ -d "$stage/$d" ] && [ ! -L "$stage/$d" ]; then
      mkdir -p "$stage/usr/$d" && cp -r "$stage/$d"/. "$stage/usr/$d"/ && rm -rf "${stage:?}/$d"
    fi
  done
  cp -r --update=none "$stage"/. /
  # What the packages' postinst does with update-alternatives (slurmd execs /usr/sbin/slurmstepd).
  for b in slurmctld slurmd slurmstepd; do [ -e /usr/sbin/$b ] || ln -s /usr/sbin/$b-wlm /usr/sbin/$b; done
  ldconfig
  touch "$WORK/slurm-unpacked"
fi
PY=${PYTHON:-$(command -v python3)}
LIB=${NCCL_LIB:-$WORK/nccl/lib/libnccl.so.2}
if [ ! -f "$LIB" ]; then
  mkdir -p "$WORK/src" && tar -xzf "$CARRY/nccl-2.28.9.tar.gz" -C "$WORK/src"
  # Only the kernels PyTorch's DDP and barrier use: a fraction of the build time.
  export ONLY_FUNCS=${ONLY_FUNCS-"SendRecv|AllGather * *|Broadcast * *|AllReduce (Sum|MinMax) * * *|ReduceScatter Sum * * *"}
  "$CARRY/bin/flexmig-gres-helper" nccl install --source "$WORK/src/nccl-2.28.9" --prefix "$WORK/nccl" >"$OUT/nccl-build.log" 2>&1 \
    || { tail -30 "$OUT/nccl-build.log"; exit 2; }
fi
# slurmd's cgroup/v2 plugin (cgroup.conf IgnoreSystemd=yes, written by flexmig-gpu-job) makes its
# scope under system.slice, with the controllers it wants enabled: give it that on a machine
# without systemd.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  mkdir -p /sys/fs/cgroup/system.slice
  for c in /sys/fs/cgroup /sys/fs/cgroup/system.slice; do echo "+cpuset +cpu +memory" >"$c/cgroup.subtree_control" 2>/dev/null || true; done
fi
source "$REPO/bench/mps.sh"
mps_start
trap mps_stop EXIT
export NCCL_NVLS_ENABLE=0
log=$OUT/slurm-job-$(date -u +%F).log
{ nvidia-smi --query-gpu=name,driver_version,mig.mode.current --format=csv,noheader; "$PY" -c 'import torch; print("torch", torch.__version__)'; } | tee "$log"
FLEXMIG_SPANK_SO=$CARRY/bin/libflexmig_spank.so FLEXMIG_GRES_HELPER=$CARRY/bin/flexmig-gres-helper \
  "$CARRY/bin/flexmig-gpu-job" --nccl "$LIB" --hostreduce "$CARRY/bin/libflexmig_hostreduce.so" --python "$PY" --steps "$STEPS" 2>&1 | tee -a "$log"
