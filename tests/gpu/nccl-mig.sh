#!/usr/bin/env bash
# One-GPU proof of flexmig's patched NCCL: several ranks on one GPU, each an emulated MIG leaf
# with its own NCCL_MIG_ID (MIG mode is never touched: ranks simply share the GPU).
#
#   tests/gpu/nccl-mig.sh
#
# What it does:
#   1. builds patched NCCL 2.28.9 with `flexmig-gres-helper nccl install` (arch from nvidia-smi),
#      and, unless SKIP_NEW=1, stock NCCL >= 2.30 the same way (the helper applies no patch there);
#   2. `nccl status` on both and on PyTorch's own libnccl;
#   3. runs 2, 4 and 7 ranks through all_reduce, all_gather, reduce_scatter, broadcast and
#      send/recv with the patched library preloaded into PyTorch, checking results exactly and
#      requiring SHM (no P2P) connections in the NCCL_DEBUG=INFO log;
#   4. shows the refusals: the same MIG id twice, no MIG id (stock behaviour), stock 2.28.9;
#   5. runs stock >= 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1 through the same cases and records
#      which transport it picks.
#
# Inputs (environment):
#   NCCL_SRC        folder holding nccl-2.28.9/ (and nccl-2.30.x/): NCCL source trees or release
#                   tarballs (default: <repo>/.nccl/src; fetch with
#                   `git clone -b v2.28.9-1 https://github.com/NVIDIA/nccl $NCCL_SRC/nccl-2.28.9`)
#   FLEXMIG_HELPER  the helper binary (default: built here with cargo)
#   WORK            build and install area (default /tmp/flexmig-nccl-gpu)
#   LOGS            where logs and summary.txt go (default $WORK/logs)
#   PARTS           which parts run: "patched new" (default); "patched" = 2.28.9 only, "new" = >= 2.30 only
#   CASE_TIMEOUT    seconds one case may take (default 120)
# Exit status: 0 when every case behaved as expected.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NCCL_SRC=${NCCL_SRC:-$REPO/.nccl/src}
WORK=${WORK:-/tmp/flexmig-nccl-gpu}
LOGS=${LOGS:-$WORK/logs}
PY=${PYTHON:-python3}
RANKS_PY="$REPO/tests/gpu/nccl_mig_ranks.py"
mkdir -p "$WORK" "$LOGS"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
FAILED=0

# Multicast (NVLS) stays off on shared machines; the patch turns it off between MIG leaves anyway.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

say "== flexmig NCCL MIG proof on $(hostname), $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,mig.mode.current,compute_cap --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"
$PY -c 'import torch; print("torch", torch.__version__, "bundled nccl", ".".join(map(str, torch.cuda.nccl.version())))' | tee -a "$SUMMARY"

HELPER=${FLEXMIG_HELPER:-}
if [ -z "$HELPER" ]; then
  (cd "$REPO" && cargo build -q -p flexmig-gres-helper) || { say "FATAL: cargo build failed"; exit 2; }
  HELPER="${CARGO_TARGET_DIR:-$REPO/target}/debug/flexmig-gres-helper"
fi

pick_src() { # newest entry of $NCCL_SRC matching a glob
  ls -d "$NCCL_SRC"/$1 2>/dev/null | sort -V | tail -1
}
PARTS=${PARTS:-patched new}
OLD_SRC=""; NEW_SRC=""
if [[ " $PARTS " == *" patched "* ]]; then
  OLD_SRC=$(pick_src 'nccl-2.28.9*')
  [ -n "$OLD_SRC" ] || { say "FATAL: no nccl-2.28.9 source under $NCCL_SRC (see the header of this script)"; exit 2; }
fi
if [[ " $PARTS " == *" new "* ]]; then
  NEW_SRC=$(pick_src 'nccl-2.3[0-9]*')
  [ -n "$NEW_SRC" ] || { say "FATAL: no nccl-2.3x source under $NCCL_SRC"; exit 2; }
fi
export CASE_TIMEOUT=${CASE_TIMEOUT:-120}

# 1. builds, in parallel
PATCHED=$WORK/nccl-2.28.9-flexmig
STOCKNEW=$WORK/nccl-new-stock
t0=$(date +%s)
if [ -n "$OLD_SRC" ]; then
  "$HELPER" nccl install --source "$OLD_SRC" --prefix "$PATCHED" >"$LOGS/build-2.28.9.log" 2>&1 &
  P1=$!
fi
if [ -n "$NEW_SRC" ]; then
  "$HELPER" nccl install --source "$NEW_SRC" --prefix "$STOCKNEW" >"$LOGS/build-new.log" 2>&1 &
  P2=$!
fi
if [ -n "$OLD_SRC" ]; then
  wait $P1; R1=$?
  say "build patched 2.28.9 with the helper: rc=$R1 after $(( $(date +%s) - t0 )) s"
  grep -E "^nccl install:|^nccl=" "$LOGS/build-2.28.9.log" | tee -a "$SUMMARY"
  [ $R1 = 0 ] || { tail -40 "$LOGS/build-2.28.9.log"; say "FATAL: patched build failed"; exit 1; }
fi
if [ -n "$NEW_SRC" ]; then
  wait $P2; R2=$?
  say "build stock $(basename "$NEW_SRC") with the helper: rc=$R2 after $(( $(date +%s) - t0 )) s"
  grep -E "^nccl install:|^nccl=" "$LOGS/build-new.log" | tee -a "$SUMMARY"
  [ $R2 = 0 ] || { tail -30 "$LOGS/build-new.log"; NEW_SRC=""; FAILED=1; }
fi
LIB=$PATCHED/lib/libnccl.so.2
NEWLIB=$STOCKNEW/lib/libnccl.so.2

# 2. status
TORCH_NCCL=$($PY - <<'EOF'
import glob, os, site, torch
roots = site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]
hits = [p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so.2"), recursive=True)]
print(hits[0] if hits else "")
EOF
)
for l in ${OLD_SRC:+"$LIB"} ${NEW_SRC:+"$NEWLIB"} ${TORCH_NCCL:+"$TORCH_NCCL"}; do
  "$HELPER" nccl status "$l" | tee -a "$SUMMARY"; echo "  (exit ${PIPESTATUS[0]})" | tee -a "$SUMMARY"
done

case_() { # label ranks expect [driver args...]
  local label=$1 n=$2 expect=$3; shift 3
  $PY "$RANKS_PY" run --label "$label" --ranks "$n" --log "$LOGS" --expect "$expect" --timeout "$CASE_TIMEOUT" "$@" | tee -a "$SUMMARY"
  [ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
}

if [ -n "$OLD_SRC" ]; then
  # 3. patched: 2, 4, 7 leaves of one GPU, SHM only
  for n in 2 4 7; do
    case_ "patched-2.28.9-$n" "$n" ok --preload "$LIB" --mig-ids distinct --require-shm
  done
  # 4. refusals
  case_ patched-same-mig-id 2 "fail:Duplicate GPU detected" --preload "$LIB" --mig-ids same
  case_ patched-no-mig-id 2 "fail:Duplicate GPU detected" --preload "$LIB" --mig-ids none
  case_ stock-2.28.9-torch 2 "fail:Duplicate GPU detected" --mig-ids distinct
fi

# 5. stock >= 2.30 with the variable the plugin exports
if [ -n "$NEW_SRC" ]; then
  case_ stock-new-no-multirank 2 "fail:" --preload "$NEWLIB" --mig-ids distinct
  for n in 2 4 7; do
    case_ "stock-new-multirank-$n" "$n" ok --preload "$NEWLIB" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1
  done
  case_ stock-new-multirank-p2pdisable-2 2 ok --preload "$NEWLIB" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1 --env NCCL_P2P_DISABLE=1
fi

say "== transports seen (first lines):"
for f in "$LOGS"/patched-2.28.9-2.rank0.log "$LOGS"/stock-new-multirank-2.rank0.log; do
  [ -f "$f" ] && { echo "-- $(basename "$f")"; grep -m3 -E "Channel [0-9]+(/[0-9]+)? : .* via " "$f"; grep -m2 -E "Duplicate|Multiple Ranks|flexmig-mig-patch" "$f"; } | tee -a "$SUMMARY"
done
for f in "$LOGS"/patched-same-mig-id.rank0.log "$LOGS"/stock-2.28.9-torch.rank0.log "$LOGS"/stock-new-no-multirank.rank0.log; do
  [ -f "$f" ] && { echo "-- $(basename "$f")"; grep -m1 -E "Duplicate GPU|Multiple Ranks|WARN" "$f"; } | tee -a "$SUMMARY"
done
if [ $FAILED = 0 ]; then say "nccl-mig: all cases as expected"; else say "nccl-mig: SOME CASES UNEXPECTED"; fi
exit $FAILED
