#!/usr/bin/env bash
# One-GPU proof of flexmig's patched NCCL: several ranks on one GPU, each an emulated MIG leaf
# with its own NCCL_MIG_ID (MIG mode is never touched: ranks simply share the GPU).
#
#   tests/gpu/nccl-mig.sh
#
# Parts (PARTS, default "patched new extra", plus "spread" where nvidia-smi lists two GPUs or more):
#   patched  builds patched NCCL 2.28.9 (PyTorch 2.11's release) with `flexmig-gres-helper nccl
#            install` (arch from nvidia-smi), preloads it into PyTorch and runs 2, 4 and 7 ranks
#            through all_reduce, all_gather, reduce_scatter, broadcast and send/recv, checking
#            results exactly and requiring SHM (no P2P) in the NCCL_DEBUG=INFO log; then the
#            refusals: CUDA graphs and CUDA_LAUNCH_BLOCKING=1 with copy-engine SHM (also on a split
#            communicator that shares its parent's connections), the same MIG id twice, no MIG id
#            (stock behaviour), PyTorch's stock 2.28.9.
#   new      builds the newest stock NCCL >= 2.30 (`--no-patch`) and runs the same cases with
#            NCCL_MULTI_RANK_GPU_ENABLE=1 (which the plugin exports), recording the transport.
#   extra    builds patched 2.29.7 and the P2P-guard patch of 2.30.x and runs 2 and 4 ranks each.
#   spread   leaves spread round-robin over GPUs 0 and 1 (the plugin's order): patched 2.28.9 and
#            guarded 2.30.x must use SHM only (a GPU in MIG mode has no GPU-to-GPU P2P); stock
#            2.30.x is recorded (it takes P2P between the GPUs).
#   guard    the guard patch of each release in GUARD_RELEASES (default "2.30.7", PyTorch 2.15's
#            NCCL; e.g. "2.30.7 2.30.4"), from $NCCL_SRC/nccl-<release>*: 2, 4 and 7 ranks with
#            NCCL_MULTI_RANK_GPU_ENABLE=1 (exact results, SHM only), and the refusal without it.
#            With `patched` beside it, the proof for both releases PyTorch ships (2.11, 2.15).
#
# Inputs (environment):
#   NCCL_SRC        folder holding nccl-2.28.9/, nccl-2.29.7/, nccl-2.30.x/: NCCL source trees or
#                   release tarballs (default: <repo>/.nccl/src; e.g.
#                   `git clone -b v2.28.9-1 https://github.com/NVIDIA/nccl $NCCL_SRC/nccl-2.28.9`)
#                   tests/gpu/prepare-nccl-mig.sh packs them as tarballs under .nccl/src, with the
#                   helper in .nccl/bin, for a GPU machine without registries or Rust
#   FLEXMIG_HELPER  the helper binary (default: built here with cargo)
#   WORK            build and install area (default /tmp/flexmig-nccl-gpu)
#   LOGS            where logs and summary.txt go (default $WORK/logs)
#   CASE_TIMEOUT    seconds one case may take (default 120)
#   REUSE=1         keep libraries already installed under $WORK (e.g. by bench/nccl_leaves.sh with
#                   the same WORK) instead of building them again
#   BUILD_ONLY=1    stop after the builds and `nccl status` (a later REUSE=1 run with the same WORK
#                   runs the cases)
# Exit status: 0 when every case behaved as expected.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NCCL_SRC=${NCCL_SRC:-$REPO/.nccl/src}
WORK=${WORK:-/tmp/flexmig-nccl-gpu}
LOGS=${LOGS:-$WORK/logs}
PY=${PYTHON:-python3}
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
if [ "$GPUS" -ge 2 ]; then PARTS=${PARTS:-patched new extra spread}; else PARTS=${PARTS:-patched new extra}; fi
export CASE_TIMEOUT=${CASE_TIMEOUT:-120}
RANKS_PY="$REPO/tests/gpu/nccl_mig_ranks.py"
mkdir -p "$WORK" "$LOGS"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
part() { [[ " $PARTS " == *" $1 "* ]]; }
FAILED=0

# Multicast (NVLS) stays off on shared machines; the patch turns it off between MIG leaves anyway.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# Only the kernels the cases use (the benchmarks' set, from bench/lib.sh: PyTorch's all_reduce,
# all_gather, reduce_scatter, broadcast, send/recv, barrier): two releases built at once take
# about 4 minutes instead of 8, so a whole run fits one 10-minute command. ONLY_FUNCS="" builds
# every kernel. (lib.sh keeps the WORK, NCCL_SRC and PYTHON set above.)
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
export ONLY_FUNCS=${ONLY_FUNCS-$BENCH_ONLY_FUNCS}

say "== flexmig NCCL MIG proof on $(hostname), $(date -u +%FT%TZ), parts: $PARTS"
nvidia-smi --query-gpu=name,driver_version,mig.mode.current,compute_cap --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"
$PY -c 'import torch; print("torch", torch.__version__, "built with nccl", ".".join(map(str, torch.cuda.nccl.version())))' | tee -a "$SUMMARY"

HELPER=${FLEXMIG_HELPER:-}
if [ -z "$HELPER" ]; then
  (cd "$REPO" && cargo build -q -p flexmig-gres-helper) || { say "FATAL: cargo build failed"; exit 2; }
  HELPER="${CARGO_TARGET_DIR:-$REPO/target}/debug/flexmig-gres-helper"
fi

src_of() { # newest entry of $NCCL_SRC matching a glob, or fail
  local s
  s=$(ls -d "$NCCL_SRC"/$1 2>/dev/null | sort -V | tail -1)
  [ -n "$s" ] || { echo "FATAL: no $1 under $NCCL_SRC (see the header of this script)" >&2; exit 2; }
  echo "$s"
}

# 1. builds, all in parallel: name -> prefix
declare -A PID PREFIX
build() { # name source [install flags]
  local name=$1 src=$2; shift 2
  PREFIX[$name]=$WORK/$name
  if [ "${REUSE:-0}" = 1 ] && [ -f "$WORK/$name/lib/libnccl.so.2" ]; then
    echo "nccl install: reusing $WORK/$name" >"$LOGS/build-$name.log"; true &
    PID[$name]=$!; return
  fi
  "$HELPER" nccl install --source "$src" --prefix "${PREFIX[$name]}" "$@" >"$LOGS/build-$name.log" 2>&1 &
  PID[$name]=$!
}
part patched || part spread && build patched-2.28.9 "$(src_of 'nccl-2.28.9*')"
part new || part spread && build stock-new "$(src_of 'nccl-2.3[0-9]*')" --no-patch
part extra && build patched-2.29.7 "$(src_of 'nccl-2.29.7*')"
part extra || part spread && build guarded-new "$(src_of 'nccl-2.3[0-9]*')"
GUARD_RELEASES=${GUARD_RELEASES:-2.30.7}
if part guard; then for v in $GUARD_RELEASES; do build "guarded-$v" "$(src_of "nccl-$v*")"; done; fi
t0=$(date +%s)
for name in "${!PID[@]}"; do
  wait "${PID[$name]}"; rc=$?
  say "build $name with the helper: rc=$rc after $(( $(date +%s) - t0 )) s"
  grep -E "^nccl install:|^nccl=" "$LOGS/build-$name.log" | tee -a "$SUMMARY"
  if [ $rc != 0 ]; then tail -30 "$LOGS/build-$name.log"; FAILED=1; unset "PREFIX[$name]"; fi
done
lib() { echo "${PREFIX[$1]:-/nonexistent}/lib/libnccl.so.2"; }

# 2. status of every library, PyTorch's own included
TORCH_NCCL=$($PY - <<'EOF'
import glob, os, site, torch
roots = site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]
hits = [p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so.2"), recursive=True)]
print(hits[0] if hits else "")
EOF
)
for name in "${!PREFIX[@]}"; do "$HELPER" nccl status "$(lib "$name")" | tee -a "$SUMMARY"; done
[ -n "$TORCH_NCCL" ] && { "$HELPER" nccl status "$TORCH_NCCL" | tee -a "$SUMMARY"; echo "  (exit ${PIPESTATUS[0]})" | tee -a "$SUMMARY"; }
if [ "${BUILD_ONLY:-0}" = 1 ]; then
  if [ $FAILED = 0 ]; then say "nccl-mig: built (BUILD_ONLY=1); run again with REUSE=1 and the same WORK for the cases"; fi
  exit $FAILED
fi

case_() { # label ranks expect [driver args...]
  local label=$1 n=$2 expect=$3; shift 3
  $PY "$RANKS_PY" run --label "$label" --ranks "$n" --log "$LOGS" --expect "$expect" --timeout "$CASE_TIMEOUT" "$@" | tee -a "$SUMMARY"
  [ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
}

if part patched && [ -n "${PREFIX[patched-2.28.9]:-}" ]; then
  L=$(lib patched-2.28.9)
  for n in 2 4 7; do
    case_ "patched-2.28.9-$n" "$n" ok --preload "$L" --mig-ids distinct --require-shm
  done
  # Copy-engine SHM driven from the rank's thread (hunk 9): CUDA graphs and CUDA_LAUNCH_BLOCKING=1
  # would push its work from a host callback, so NCCL refuses them by name, also on a communicator
  # split from one whose connections it shares (without that, the split's capture succeeded and its
  # replay failed with "operation not permitted" in the host callback and hung).
  CE=(--env NCCL_SHM_USE_CUDA_MEMCPY=1 --env NCCL_SHM_MEMCPY_MODE=3)
  REFUSED="fail:which CUDA graphs and CUDA_LAUNCH_BLOCKING=1 do not allow"
  case_ patched-graph-ce 2 "$REFUSED" --preload "$L" --mig-ids distinct "${CE[@]}" --env FLEXMIG_SCENARIO=graph
  case_ patched-split-graph-ce 2 "$REFUSED" --preload "$L" --mig-ids distinct "${CE[@]}" --env FLEXMIG_SCENARIO=split-graph \
    --env NCCL_COMM_SPLIT_SHARE_RESOURCES=1
  case_ patched-launch-blocking-ce 2 "$REFUSED" --preload "$L" --mig-ids distinct "${CE[@]}" --env CUDA_LAUNCH_BLOCKING=1
  case_ patched-same-mig-id 2 "fail:Duplicate GPU detected" --preload "$L" --mig-ids same
  case_ patched-no-mig-id 2 "fail:Duplicate GPU detected" --preload "$L" --mig-ids none
  case_ stock-2.28.9-torch 2 "fail:Duplicate GPU detected" --mig-ids distinct
fi
if part new && [ -n "${PREFIX[stock-new]:-}" ]; then
  L=$(lib stock-new)
  case_ stock-new-no-multirank 2 "fail:Multiple Ranks" --preload "$L" --mig-ids distinct --unset NCCL_MULTI_RANK_GPU_ENABLE
  for n in 2 4 7; do
    case_ "stock-new-multirank-$n" "$n" ok --preload "$L" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1
  done
  case_ stock-new-multirank-p2pdisable-2 2 ok --preload "$L" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1 --env NCCL_P2P_DISABLE=1
fi
if [ -n "${PREFIX[patched-2.29.7]:-}" ]; then
  for n in 2 4; do
    case_ "patched-2.29.7-$n" "$n" ok --preload "$(lib patched-2.29.7)" --mig-ids distinct --require-shm
  done
fi
if part extra && [ -n "${PREFIX[guarded-new]:-}" ]; then
  for n in 2 4; do
    case_ "guarded-new-multirank-$n" "$n" ok --preload "$(lib guarded-new)" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1 --require-shm
  done
fi

if part guard; then
  # The guard patch is what 2.30.x (PyTorch 2.15 pins 2.30.7) needs on MIG: without it, 2.30.x connects
  # the leaves of one GPU with P2P/CUMEM. Every collective exact, SHM only, at 2, 4 and 7 leaves.
  for v in $GUARD_RELEASES; do
    [ -n "${PREFIX[guarded-$v]:-}" ] || continue
    L=$(lib "guarded-$v")
    for n in 2 4 7; do
      case_ "guarded-$v-$n" "$n" ok --preload "$L" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1 --require-shm
    done
    # 2.30.3/2.30.4 say "Multiple ranks detected using the same GPU on this node. Set ...", 2.30.7
    # "Multiple Ranks are using the same GPU/Partition. Set ..."
    case_ "guarded-$v-no-multirank" 2 "fail:Set NCCL_MULTI_RANK_GPU_ENABLE=1 to enable this" --preload "$L" --mig-ids distinct \
      --unset NCCL_MULTI_RANK_GPU_ENABLE
  done
fi

if part spread; then
  # Leaves on two GPUs: real MIG has no P2P between them (nor NVLink), so SHM only.
  [ -n "${PREFIX[patched-2.28.9]:-}" ] && for n in 4 7; do
    case_ "patched-2.28.9-spread-$n" "$n" ok --gpus 2 --preload "$(lib patched-2.28.9)" --mig-ids distinct --require-shm
  done
  [ -n "${PREFIX[guarded-new]:-}" ] && case_ guarded-new-spread-4 4 ok --gpus 2 --preload "$(lib guarded-new)" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1 --require-shm
  [ -n "${PREFIX[stock-new]:-}" ] && case_ stock-new-spread-4 4 ok --gpus 2 --preload "$(lib stock-new)" --mig-ids distinct --env NCCL_MULTI_RANK_GPU_ENABLE=1
fi

say "== transports and refusals seen (first lines of rank 0):"
GUARD_LABELS=""
for v in $GUARD_RELEASES; do GUARD_LABELS+=" guarded-$v-2 guarded-$v-no-multirank"; done
for label in patched-2.28.9-2 stock-new-multirank-2 patched-2.29.7-2 guarded-new-multirank-2 patched-same-mig-id stock-2.28.9-torch stock-new-no-multirank \
    patched-2.28.9-spread-4 guarded-new-spread-4 stock-new-spread-4 $GUARD_LABELS; do
  f="$LOGS/$label.rank0.log"
  [ -f "$f" ] || continue
  { echo "-- $label"; grep -m1 -E "NCCL version" "$f"; grep -m2 -E "Channel [0-9]+(/[0-9]+)? : .* via " "$f";
    grep -m1 -E "Duplicate GPU|Multiple [Rr]anks|flexmig-mig-patch" "$f"; } | sed 's/^[^ ]* \[[0-9]*\] NCCL //' | tee -a "$SUMMARY"
done
if [ $FAILED = 0 ]; then say "nccl-mig: all cases as expected"; else say "nccl-mig: SOME CASES UNEXPECTED"; fi
exit $FAILED
