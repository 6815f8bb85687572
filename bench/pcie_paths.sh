#!/usr/bin/env bash
# The PCIe ceiling under the collectives between leaves of one GPU (bench/nccl_leaves.sh), by
# path: copy engines against SM loads/stores
# (what NCCL's SHM transport uses) against Hopper bulk copies, one direction and both at once,
# for a range of CTA counts (a 1g leaf has about 16 of an H200's 132 SMs). GPU machine, one
# command, MIG untouched:
#
#   bash bench/pcie_paths.sh
#
# Environment: WORK (/tmp/flexmig-bench), OUTDIR ($WORK/out), BLOCKS ("2 4 8 16 32 64 132 264 528"),
# SPLITS (H2D:D2H CTA counts for SM loads against SM stores),
# PATHS ("sm4 sm8 tma"), MIXED ("ce+sm4 sm4+ce"), MIB (256), GPU (0). Results: $OUTDIR/pcie_paths.jsonl, one JSON line per
# measurement after a first line naming the machine.
#
# PHASES ("paths loop"): "paths" is the above; "loop" measures copy engines as several leaves
# drive them at once: PROCS (1 2 4 7) processes started together under MPS, each with one flow
# (one stream each way, or one pipe), against one process with as many flows, in copies of
# CHUNKS_KIB (1024 4096 8192 16384) for LOOP_SECONDS (1.5) each, for LOOP_DIRS (both pipe).
# One JSON line per process; lines of one measurement share start_ms.
set -uo pipefail
# REPO, WORK, OUTDIR, has, mps_start, ...
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_gpu
J="$OUTDIR/pcie_paths.jsonl"
BIN=$WORK/pcie_paths
nvcc -O3 -std=c++17 -arch=sm_90 -o "$BIN" "$REPO/bench/pcie_paths.cu" || exit 2
export CUDA_VISIBLE_DEVICES=${GPU:-0}
echo "{\"machine\": \"$(nvidia-smi -i "${GPU:-0}" --query-gpu=name,driver_version,mig.mode.current,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader)\", \"nvcc\": \"$(nvcc --version | tail -1)\", \"date\": \"$(utc_now)\"}" >>"$J"
run() { "$BIN" "$@" "${MIB:-256}" | tee -a "$J"; }
PHASES=${PHASES:-paths loop}
if has paths; then
for d in h2d d2h both; do run "ce_$d" 1; done
for p in ${PATHS:-sm4 sm8 tma}; do
  for d in h2d d2h both; do
    for b in ${BLOCKS:-2 4 8 16 32 64 132 264 528}; do run "${p}_$d" "$b"; done
  done
done
# SM loads against SM stores with unequal CTA counts (H2D:D2H): the best split is the SM path's
# ceiling, whatever number of CTAs a transport gives each direction.
for split in ${SPLITS:-16:2 16:8 64:2 64:8 64:16 132:2 132:8 132:16 132:32 264:16 264:32 264:66 528:32 528:132 16:64 32:132}; do run sm4_both "$split"; done
# One direction by copy engines, the other by SM stores or loads (NCCL's SHM copy-engine modes).
for m in ${MIXED:-ce+sm4 sm4+ce}; do
  for b in 1 ${BLOCKS:-2 4 8 16 32 64 132 264 528}; do run "${m}_both" "$b"; done
done
# The copy engines once more at the end: the machine did not change under the run.
for d in h2d d2h both; do run "ce_$d" 1; done
fi
# loop PROCS FLOWS DIR CHUNK_KIB: PROCS processes with FLOWS flows each, started together.
loop() {
  local procs=$1 flows=$2 dir=$3 kib=$4 start pids=() i
  start=$(($(date +%s%3N) + 2500))
  for ((i = 0; i < procs; i++)); do
    PCIE_PROCS=$procs "$BIN" "loop_$dir" "$flows" "$kib" "${LOOP_SECONDS:-1.5}" "$start" >"$WORK/loop.$i" &
    pids+=($!)
  done
  wait "${pids[@]}"
  cat "$WORK"/loop.* | tee -a "$J"
  rm -f "$WORK"/loop.*
}
if has loop; then
  loop 1 1 both 8192 # without MPS, against ce_both above
  mps_start
  for dir in ${LOOP_DIRS:-both pipe}; do
    for kib in ${CHUNKS_KIB:-1024 4096 8192 16384}; do
      for p in ${PROCS:-1 2 4 7}; do
        loop "$p" 1 "$dir" "$kib"
        [ "$p" -gt 1 ] && loop 1 "$p" "$dir" "$kib"
      done
    done
  done
  mps_stop
fi
echo "== done $(utc_now)"
