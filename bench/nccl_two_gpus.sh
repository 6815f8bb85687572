#!/usr/bin/env bash
# Emulated MIG leaves spread round-robin over two GPUs (the plugin's
# order) against packed on one, patched SHM against the NET workaround, plainly and under CUDA
# MPS. Needs a machine with two GPUs (nvidia-h200-x2 here); MIG mode is never touched and
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0). One command:
#
#   bash bench/nccl_two_gpus.sh
#
# It is bench/nccl_leaves.sh with GPUS="1 2" (packed, spread), RANKS="2 4 7 14" (14 = every leaf
# of both GPUs, spread only), VARIANTS="patched net"; the copy phase measures each GPU's pinned
# copy bandwidth and both GPUs at once. Leaves on different GPUs use SHM too: a GPU in MIG mode
# has no GPU-to-GPU P2P, and the patch keeps MIG leaves off P2P (nccl-patch/README.md, hunk 7).
# Results: $OUTDIR/nccl_leaves.jsonl (field "gpus"); bench/nccl_leaves_report.py makes the tables.
# Environment: as bench/nccl_leaves.sh (WORK, OUTDIR, MODES, NCCL_SRC, FLEXMIG_HELPER, ...).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
n=$(gpu_count 2>/dev/null)
[ "$n" -ge 2 ] || { echo "nccl_two_gpus: needs two GPUs, nvidia-smi lists $n" >&2; exit 2; }
bench_gpu
GPUS=${GPUS:-1 2} RANKS=${RANKS:-2 4 7 14} VARIANTS=${VARIANTS:-patched net} BUILD_NEW=${BUILD_NEW:-0} \
  PHASES=${PHASES:-build copy main} exec bash "$REPO/bench/nccl_leaves.sh"
