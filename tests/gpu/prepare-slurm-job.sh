#!/usr/bin/env bash
# Prepares, on a Debian 12 build machine, what tests/gpu/slurm-job.sh needs on a GPU machine that
# reaches no package registry: Debian's Slurm and munge packages (with the few libraries an
# Ubuntu 24.04 GPU machine lacks), the plugin, the helper and the job runner built here, and the
# NCCL source the helper patches there. Everything lands in tests/gpu/carry/ (git-ignored; well
# under the 64 MiB a device call carries).
#
#   bash tests/gpu/prepare-slurm-job.sh [NCCL_SOURCE_TARBALL]
#
# NCCL_SOURCE_TARBALL: nccl-2.28.9 sources (PyTorch 2.11's NCCL) as a .tar.gz whose top folder
# is nccl-2.28.9/; default: made with `git archive` from $NCCL_GIT (a clone of NVIDIA/nccl).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=$REPO/tests/gpu/carry
mkdir -p "$CARRY/debs" "$CARRY/bin"
cd "$CARRY/debs"
# slurmd/slurmctld/slurmstepd/srun and munged link these; libslurmfull comes with the plugins.
# An Ubuntu 24.04 GPU machine already has libmunge2, hwloc, lz4, pam, readline, ssl, gcrypt, systemd.
apt-get download slurm-wlm-basic-plugins slurmd slurmctld slurm-client munge liblua5.1-0 libjson-c5 libnuma1 libyaml-0-2 libdbus-1-3 >/dev/null
cd "$REPO"
cargo build -q --release -p flexmig-spank -p flexmig-gres-helper
cargo build -q --release -p flexmig-integration --bin flexmig-gpu-job
cargo build -q --release -p flexmig-hostreduce --lib --example reduce_speed
T=${CARGO_TARGET_DIR:-$REPO/target}/release
cp "$T/libflexmig_spank.so" "$T/flexmig-gres-helper" "$T/flexmig-gpu-job" "$T/libflexmig_hostreduce.so" "$T/examples/reduce_speed" "$CARRY/bin/"
# The helper's read-only NVML checks, run there as `FLEXMIG_HELPER=bin/flexmig-gres-helper bin/real_gpu --ignored`.
real_gpu=$(cargo test -q --release -p flexmig-gres-helper --test real_gpu --no-run --message-format=json \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "real_gpu"][0])')
cp "$real_gpu" "$CARRY/bin/real_gpu"
strip "$CARRY/bin/"*
if [ -n "${1:-}" ]; then
  cp "$1" "$CARRY/nccl-2.28.9.tar.gz"
elif [ -n "${NCCL_GIT:-}" ]; then
  git -C "$NCCL_GIT" archive --format=tar.gz --prefix=nccl-2.28.9/ v2.28.9-1 >"$CARRY/nccl-2.28.9.tar.gz"
else
  echo "prepare-slurm-job: give the NCCL 2.28.9 source tarball, or NCCL_GIT=<clone of NVIDIA/nccl>" >&2
  exit 2
fi
du -sh "$CARRY"
