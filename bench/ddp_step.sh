#!/usr/bin/env bash
# A real training step over emulated MIG leaves of one GPU, on a GPU
# machine (MIG untouched). One command:
#
#   bash bench/ddp_step.sh
#
# Builds patched NCCL 2.28.9 (bench/nccl_leaves.sh PHASES=build), starts CUDA MPS (each rank
# ~1/7 of the SMs, as a 1g leaf), and runs a torchvision ResNet-50 and a 6-layer transformer
# encoder with DistributedDataParallel over 2, 4 and 7 leaves: patched SHM against the NET
# workaround, and against one process with k/7 of the GPU and k times the batch (one bigger
# instance). Results: $OUTDIR/ddp_step.jsonl.
# Environment: as bench/nccl_leaves.sh (NCCL_SRC, FLEXMIG_HELPER, WORK, OUTDIR), MODELS, RANKS,
# VARIANTS ("single patched net"; empty for none, only TUNE), TUNE (extra patched runs with NCCL settings, "K=V[,K=V] ..."),
# MPS (1; 0 runs the ranks time-sliced, without the MPS daemon), PLUGIN_MAX_CHANNELS (the plugin's nccl_max_channels=, mirrored; default off, as recorded),
# TIMEOUT (120: seconds before the ranks of one run are killed as hung), PATCHED_LIB (as bench/nccl_leaves.sh),
# GPUS (1; 2 spreads the leaves of the patched and net runs over GPUs 0 and 1, the plugin's order).
set -uo pipefail
# REPO, WORK, OUTDIR, PY, PATCHED (PATCHED_LIB), mps_start, ...
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_gpu
J="$OUTDIR/ddp_step.jsonl"
PHASES=build BUILD_NEW=0 MODES=none WORK=$WORK OUTDIR=$OUTDIR bash "$REPO/bench/nccl_leaves.sh" || exit 2
echo "{\"machine\": \"$(gpu_names)\", \"torch\": \"$($PY -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')\", \"date\": \"$(utc_now)\"}" >>"$J"
MPSFLAG=""
if [ "${MPS:-1}" = 1 ]; then
  mps_start
  trap 'mps_stop >/dev/null 2>&1' EXIT
  MPSFLAG=--mps
fi
for model in ${MODELS:-resnet transformer}; do
  for k in ${RANKS:-2 4 7}; do
    for v in ${VARIANTS-single patched net}; do
      $PY "$REPO/bench/ddp_step.py" run --model "$model" --variant "$v" --ranks "$k" --gpus "${GPUS:-1}" --plugin-max-channels "${PLUGIN_MAX_CHANNELS:-off}" --lib "$PATCHED" --timeout "${TIMEOUT:-120}" $MPSFLAG | result_lines >>"$J"
    done
    # SHM settings for the patched library inside a real step (TUNE="K=V[,K=V] ...").
    for s in ${TUNE:-}; do
      setting_envs "$s"
      $PY "$REPO/bench/ddp_step.py" run --model "$model" --variant patched --ranks "$k" --gpus "${GPUS:-1}" --plugin-max-channels "${PLUGIN_MAX_CHANNELS:-off}" --lib "$PATCHED" --timeout "${TIMEOUT:-120}" $MPSFLAG --tag "tune:$s" "${envs[@]}" | result_lines >>"$J"
    done
  done
done
echo "== done $(utc_now)"
