#!/usr/bin/env bash
# One job of 6 leaves placed 6-0, 5-1, 4-2 and 3-3 over GPUs 0 and 1 (the Flex-MIG paper's
# Figure 9): DDP steps of ResNet-50 and the transformer, the exchange through patched NCCL's SHM
# path and through the host path side by side in each launch (bench/ddp_step.py --compare, with
# the none/noop/tiny references), under MPS (about 1/7 of a GPU's SMs per rank). Needs a machine
# with two GPUs; MIG untouched (leaves are ranks sharing a GPU, each with its own NCCL_MIG_ID).
#
#   bash bench/placement.sh
#
# Environment: as bench/lib.sh (WORK, OUTDIR, NCCL_SRC, PYTHON, PATCHED_LIB, FLEXMIG_HELPER), plus
# HOSTREDUCE_LIB (default: target/release/libflexmig_hostreduce.so, else cargo-built), PLACEMENTS
# ("6,0 5,1 4,2 3,3"), MODELS ("resnet transformer"), TIMEOUT (300 s per launch).
# Output: $OUTDIR/placement.jsonl, one JSON object per exchange and launch (kind "ddp", with
# "placement"), and $OUTDIR/placement.log.
set -uo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_gpu
[ "$(gpu_count)" -ge 2 ] || { echo "placement: needs two GPUs, nvidia-smi lists $(gpu_count)"; exit 2; }
J="$OUTDIR/placement.jsonl"
LOG="$OUTDIR/placement.log"
HRLIB=${HOSTREDUCE_LIB:-$RELEASE/libflexmig_hostreduce.so}
[ -e "$HRLIB" ] || release_build -p flexmig-hostreduce || { echo "no $HRLIB and no cargo to build it"; exit 2; }
MACHINE="$(gpu_names)"
echo "== placement on $(hostname), $(utc_now): $MACHINE" | tee "$LOG"
if [ ! -f "$PATCHED" ]; then
  bench_helper
  src="$NCCL_SRC/nccl-2.28.9"
  [ -d "$src" ] || src="$NCCL_SRC/nccl-2.28.9.tar.gz"
  nccl_install "$src" "$WORK/patched-2.28.9" "$WORK/build-patched.log" || { tail -20 "$WORK/build-patched.log"; exit 2; }
fi
trap 'mps_stop >/dev/null 2>&1' EXIT
mps_start || { echo "MPS did not start"; exit 2; }
COMPARE="nccl=FLEXMIG_HOSTREDUCE=off;hostreduce=FLEXMIG_HOSTREDUCE=on"
for model in ${MODELS:-resnet transformer}; do
  for p in ${PLACEMENTS:-6,0 5,1 4,2 3,3}; do
    n=$(( ${p//,/+} ))
    $PY "$REPO/bench/ddp_step.py" run --model "$model" --variant patched --ranks "$n" --placement "$p" --plugin-max-channels 2 \
      --lib "$HRLIB $PATCHED" --env FLEXMIG_HOSTREDUCE=off --compare "$COMPARE" --tag compare --mps --log "$WORK/placement-logs" \
      --timeout "${TIMEOUT:-300}" | tee -a "$LOG" | $PY "$REPO/bench/hostreduce.py" ddp-lines "$MACHINE" compare | tee -a "$J" | cut -c1-200
  done
done
mps_stop
echo "== done $(utc_now)" | tee -a "$LOG"
