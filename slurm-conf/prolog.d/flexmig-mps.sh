#!/bin/bash
# Slurm Prolog for nodes with emulated flexmig leaves (`flexmig-gres-helper emulate`): makes sure
# a CUDA MPS control daemon runs before a job's tasks start, so the ranks on one GPU run side by
# side, each on the SM share its leaf gives it (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, exported by the
# plugin). It starts the daemon once and leaves it running for later jobs; nodes with real MIG
# leaves need none of this.
#
# slurm.conf:  Prolog=/etc/slurm/prolog.d/flexmig-mps.sh   PrologFlags=Alloc
# The clients find the daemon through its pipe directory: keep MPS's default (/tmp/nvidia-mps)
# or export the same CUDA_MPS_PIPE_DIRECTORY to the jobs.
export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}
export CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/var/log/nvidia-mps}
# Only on nodes whose inventory says the leaves are emulated.
grep -q '^\[emulation\]' /etc/slurm/flexmig.toml 2>/dev/null || exit 0
if ! echo get_server_list | nvidia-cuda-mps-control >/dev/null 2>&1; then
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d || { echo "flexmig-mps: nvidia-cuda-mps-control -d failed" >&2; exit 0; }
fi
exit 0
