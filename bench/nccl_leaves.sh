#!/usr/bin/env bash
# Collective bandwidth between emulated MIG leaves of one GPU, on a GPU
# machine (MIG mode is never touched: leaves are emulated as ranks sharing GPU 0, each with its
# own NCCL_MIG_ID). One command:
#
#   bash bench/nccl_leaves.sh
#
# Builds patched NCCL 2.28.9 and stock NCCL >= 2.30 with `flexmig-gres-helper nccl install`,
# measures the pinned host<->device copy bandwidth (the bound), then for 2, 4 and 7 leaves,
# 8 KiB..256 MiB, all_reduce and all_gather: patched NCCL over SHM, the NET workaround (stock
# 2.28.9, one NCCL_HOSTID per rank), stock >= 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1; plainly
# and under CUDA MPS (each rank ~1/7 of the SMs, as a leaf would have). Then SHM settings
# side by side (PHASES=tune). Results: one JSON line per run in $OUTDIR/nccl_leaves.jsonl;
# bench/nccl_leaves_report.py turns them into tables and plots.
#
# Environment: NCCL_SRC (holds nccl-2.28.9/ and nccl-2.3x/; default <repo>/.nccl/src),
# FLEXMIG_HELPER (default: cargo-built), WORK (/tmp/flexmig-bench), OUTDIR ($WORK/out),
# PHASES ("build copy main tune"), MODES ("plain mps"), RANKS ("2 4 7"), TUNE_RANKS ("2 7"),
# PLUGIN_MAX_CHANNELS (the plugin's nccl_max_channels= mirrored in the ranks' environment; "off"
# by default, so NCCL picks its channels as in the recorded results; the plugin's default is 2),
# GPUS ("1": leaves packed on GPU 0; "1 2" adds the leaves spread over GPUs 0 and 1, as for
# bench/nccl_two_gpus.sh; more than 7 leaves per GPU are skipped), VARIANTS ("patched net multirank"),
# TUNE ("..." settings, see below), TUNE_COLLS (all_reduce; comma-separated, all_gather too), ONLY_FUNCS (kernels to build; empty for all), BUILD_NEW=0
# (skip the stock >= 2.30 build), PATCHED_LIB (measure this libnccl.so.2 as "patched" instead of the
# one built here; it must exist), TIMEOUT (90: seconds before the ranks of one run are killed as hung).
set -uo pipefail
# REPO, NCCL_SRC, WORK, OUTDIR, PY, PATCHED (PATCHED_LIB), bench_helper, nccl_install, mps_start, ...
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PHASES=${PHASES:-build copy main tune}
MODES=${MODES:-plain mps}
RANKS=${RANKS:-2 4 7}
GPUS=${GPUS:-1}
VARIANTS=${VARIANTS:-patched net multirank}
NGPU=$(gpu_count)
B="$REPO/bench/nccl_leaves.py"
bench_gpu
J="$OUTDIR/nccl_leaves.jsonl"
bench_helper
NEW=$WORK/stock-new/lib/libnccl.so.2

echo "== nccl_leaves on $(hostname), $(utc_now); phases: $PHASES; modes: $MODES" | tee "$OUTDIR/nccl_leaves.log"
nvidia-smi --query-gpu=name,driver_version,mig.mode.current,pci.bus_id --format=csv,noheader | tee -a "$OUTDIR/nccl_leaves.log"
echo "{\"machine\": \"$(gpu_names)\", \"cpus\": $(nproc), \"torch\": \"$($PY -c 'import torch; print(torch.__version__)')\", \"date\": \"$(utc_now)\"}" >>"$J"

if has build; then
  t0=$(date +%s)
  [ -f "$PATCHED" ] || nccl_install "$NCCL_SRC/nccl-2.28.9" "$WORK/patched-2.28.9" "$WORK/build-patched.log" &
  newsrc=$(ls -d "$NCCL_SRC"/nccl-2.3[0-9]* 2>/dev/null | sort -V | tail -1)
  [ -f "$NEW" ] || [ "${BUILD_NEW:-1}" = 0 ] || nccl_install "$newsrc" "$WORK/stock-new" "$WORK/build-new.log" --no-patch &
  wait
  echo "builds done in $(( $(date +%s) - t0 )) s" | tee -a "$OUTDIR/nccl_leaves.log"
  for l in "$PATCHED" "$NEW"; do [ -f "$l" ] && "$HELPER" nccl status "$l" 2>&1 | tee -a "$OUTDIR/nccl_leaves.log"; done
  [ -f "$PATCHED" ] || { tail -20 "$WORK/build-patched.log"; exit 2; }
fi

trap 'mps_stop >/dev/null 2>&1' EXIT

one() { # args for nccl_leaves.py run
  $PY "$B" run --log "$WORK/logs" --timeout "${TIMEOUT:-90}" --plugin-max-channels "${PLUGIN_MAX_CHANNELS:-off}" "$@" | result_lines | tee -a "$J" | $PY "$B" summarize
}

if has copy; then
  maxg=1; for g in $GPUS; do [ "$g" -gt "$maxg" ] && maxg=$g; done
  $PY "$B" copy "$maxg" | result_lines | tee -a "$J"
fi

for mode in $MODES; do
  mflag=""
  if [ "$mode" = mps ]; then mps_start || { echo "MPS did not start"; continue; }; mflag="--mps"; fi
  if has main; then
    for g in $GPUS; do
      [ "$g" -gt "$NGPU" ] && { echo "skipping $g GPUs: this machine has $NGPU"; continue; }
      for k in $RANKS; do
        [ "$k" -gt $((7 * g)) ] && continue  # at most 7 leaves per GPU
        for v in $VARIANTS; do
          case $v in
            patched) one --variant patched --lib "$PATCHED" --ranks "$k" --gpus "$g" $mflag ;;
            net) one --variant net --ranks "$k" --gpus "$g" $mflag ;;
            multirank) [ -f "$NEW" ] && one --variant multirank --lib "$NEW" --ranks "$k" --gpus "$g" $mflag ;;
          esac
        done
      done
    done
  fi
  if has tune; then
    # SHM settings side by side on the patched library, all_reduce at 4-256 MiB.
    TUNE=${TUNE:-"base NCCL_SHM_USE_CUDA_MEMCPY=1 NCCL_CUMEM_HOST_ENABLE=0 NCCL_MIN_NCHANNELS=16 NCCL_BUFFSIZE=16777216 NCCL_NTHREADS=512 NCCL_PROTO=Simple NCCL_SHM_USE_CUDA_MEMCPY=1,NCCL_MIN_NCHANNELS=8"}
    for g in $GPUS; do
      [ "$g" -gt "$NGPU" ] && continue
      for k in ${TUNE_RANKS:-2 7}; do
        [ "$k" -gt $((7 * g)) ] && continue
        for s in $TUNE; do
          envs=()
          if [ "$s" != base ]; then setting_envs "$s"; fi
          one --variant patched --lib "$PATCHED" --ranks "$k" --gpus "$g" $mflag --colls "${TUNE_COLLS:-all_reduce}" --sizes 4194304,33554432,268435456 --tag "tune:$s" "${envs[@]}"
        done
      done
    done
  fi
  [ "$mode" = mps ] && mps_stop
done
echo "== done $(utc_now)" | tee -a "$OUTDIR/nccl_leaves.log"
