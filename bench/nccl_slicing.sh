#!/usr/bin/env bash
# How a ring's chunk is cut into slices, against copy engines between 2 leaves. With
# NCCL_SHM_USE_CUDA_MEMCPY=1 a slice crosses the link twice in turn (device to host on the
# sender's copy engine, host to device on the receiver's), and a ring kernel only sends its next
# chunk once it has received the current one. With 2 leaves there is no middle step that receives
# and sends at once, so each chunk of n slices takes about n + 1 slice times, and the link idles
# for the rest: n/(n+1). Stock NCCL cuts all-reduce and all-gather chunks into n = 2 slices
# (CHUNKSTEPS NCCL_STEPS/2, SLICESTEPS NCCL_STEPS/4); these are compile-time constants of the
# kernels (src/include/collectives.h). This builds the patched 2.28.9 once per slicing
# (flexmig-gres-helper nccl install --ring-slice-steps) and runs
# the SHM settings of bench/nccl_leaves.sh side by side on each (GPU machine, MIG untouched):
#
#   bash bench/nccl_slicing.sh
#
# Environment: SLICINGS ("4x2 4x1": CHUNKSTEPSxSLICESTEPS of all-reduce and all-gather, out of
# NCCL_STEPS = 8; 4x2 is NCCL's own), TUNE_RANKS ("2"), TUNE (the settings, as for nccl_leaves.sh),
# TUNE_COLLS (all_reduce,all_gather), COPY (1: measure the pinned copies first), COLLS (1; 0 skips
# the collectives), NCCL_SRC, FLEXMIG_HELPER, WORK, OUTDIR, TIMEOUT (60), as for
# bench/nccl_leaves.sh. Each run's setting gains FLEXMIG_BENCH_SLICING=CxS (an inert variable that
# names the library in the results), DDP_MODELS ("": no training steps; e.g. "transformer"),
# DDP_RANKS ("2 7"). Results: $OUTDIR/nccl_leaves.jsonl and $OUTDIR/ddp_step.jsonl.
set -uo pipefail
# REPO, NCCL_SRC, WORK, OUTDIR, bench_helper, nccl_install, ...
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SLICINGS=${SLICINGS:-4x2 4x1}
bench_gpu
bench_helper
lib() { echo "$WORK/patched-2.28.9-slicing-$1/lib/libnccl.so.2"; }

# One build per slicing, one after the other (each uses every core): `nccl install
# --ring-slice-steps S` sets the slices; chunks stay at NCCL's 4 steps (8-step chunks, 8x2 and
# 8x1, hung in every measurement, the default SM path included: the first slicing measurements,
# with libraries built by this script at commit 95a2960, which edited the header itself).
t0=$(date +%s)
for v in $SLICINGS; do
  [ -f "$(lib "$v")" ] && continue
  case $v in
    4x1 | 4x2) ;;
    *) echo "nccl_slicing: $v is not 4x1 or 4x2 (CHUNKSTEPSxSLICESTEPS)" >&2; exit 1 ;;
  esac
  nccl_install "$NCCL_SRC/nccl-2.28.9" "$WORK/patched-2.28.9-slicing-$v" "$WORK/build-slicing-$v.log" --ring-slice-steps "${v#4x}" || {
    tail -20 "$WORK/build-slicing-$v.log"
    exit 2
  }
  "$HELPER" nccl status "$(lib "$v")"
done
echo "nccl_slicing: builds done in $(($(date +%s) - t0)) s"

# The bound of the same run: pinned host<->device copies (COPY=0 skips).
[ "${COPY:-1}" = 0 ] || PHASES=copy FLEXMIG_HELPER="$HELPER" bash "$REPO/bench/nccl_leaves.sh"
M3=NCCL_SHM_USE_CUDA_MEMCPY=1,NCCL_SHM_MEMCPY_MODE=3
SETTINGS=${TUNE:-"base $M3,NCCL_BUFFSIZE=33554432,NCCL_MAX_NCHANNELS=2 $M3,NCCL_BUFFSIZE=67108864,NCCL_MAX_NCHANNELS=1"}
# The settings for slicing $1, each naming the library (FLEXMIG_BENCH_SLICING, inert).
tagged() {
  local s out=""
  for s in $SETTINGS; do
    if [ "$s" = base ]; then out+=" FLEXMIG_BENCH_SLICING=$1"; else out+=" $s,FLEXMIG_BENCH_SLICING=$1"; fi
  done
  echo "$out"
}
for v in $SLICINGS; do
  [ "${COLLS:-1}" = 0 ] && break
  tune=$(tagged "$v")
  PATCHED_LIB=$(lib "$v") PHASES=tune MODES=mps TUNE_RANKS="${TUNE_RANKS:-2}" TUNE_COLLS="${TUNE_COLLS:-all_reduce,all_gather}" \
    TIMEOUT="${TIMEOUT:-60}" TUNE="$tune" FLEXMIG_HELPER="$HELPER" bash "$REPO/bench/nccl_leaves.sh"
done
# Training steps on each slicing (DDP_MODELS, "" to skip): the plugin's default (SM path, 2
# channels) and the settings above, over DDP_RANKS leaves.
if [ -n "${DDP_MODELS:-}" ]; then
  for v in $SLICINGS; do
    tune=$(tagged "$v")
    PATCHED_LIB=$(lib "$v") MODELS="$DDP_MODELS" RANKS="${DDP_RANKS:-2 7}" VARIANTS="" PLUGIN_MAX_CHANNELS=2 TIMEOUT="${TIMEOUT:-60}" \
      TUNE="$tune" FLEXMIG_HELPER="$HELPER" bash "$REPO/bench/ddp_step.sh"
  done
fi
