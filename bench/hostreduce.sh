#!/usr/bin/env bash
# Host-side all-reduce (hostreduce/) against patched NCCL's SHM path between emulated MIG leaves
# of one GPU, under CUDA MPS (each rank ~1/7 of the SMs). GPU machine, one command, MIG untouched
# (leaves are ranks sharing GPU 0, each with its own NCCL_MIG_ID, as in bench/nccl_leaves.sh):
#
#   bash bench/hostreduce.sh
#
# Steps: builds patched NCCL 2.28.9 with `flexmig-gres-helper nccl install` (PyTorch 2.11's
# stock NCCL refuses two ranks on one GPU: "Duplicate GPU detected"), measures the pinned copy
# bound (256 MiB H2D, D2H, both at once) and the CPU reduce alone, then for each k in RANKS one
# launch of k ranks in which every size is all-reduced through NCCL and through the host path,
# side by side and byte-checked (bench/hostreduce.py). Optionally (CE_RANKS) NCCL's copy-engine
# opt-in for comparison.
#
# Output: $OUTDIR/hostreduce.jsonl, one JSON object per measurement (kind "allreduce", impl
# "hostreduce"|"nccl"|"nccl-ce", k, bytes, busbw_equiv_GBps = algbw x 2(k-1)/k, machine, mps,
# copy bound), plus "machine", "copy" and "cpu_reduce" lines; $OUTDIR/hostreduce.log;
# $OUTDIR/reducer-stats.txt (per communicator of the main launches: the reducers' waiting and work).
#
# Environment: NCCL_SRC (holds nccl-2.28.9/ or nccl-2.28.9.tar.gz; default <repo>/.nccl/src),
# FLEXMIG_HELPER (default: target/release/flexmig-gres-helper, else cargo-built), HOSTREDUCE_LIB
# (default: target/release/libflexmig_hostreduce.so, else cargo-built), PATCHED_LIB (use this
# libnccl.so.2 instead of building), WORK (/tmp/flexmig-bench), OUTDIR ($WORK/out), RANKS
# ("2 3 4 5 7"), SIZES (1..256 MiB), DTYPES (f32), VARIANTS (host-path settings compared at
# VARIANT_SIZES, ';'-separated, e.g. "FLEXMIG_HOSTREDUCE_CHUNK=524288"), CE_RANKS ("": none),
# MPS_PERCENT (14), TIMEOUT (240 s per launch), PHASES ("build copy cpu main ce ddp"; also "faults":
# bench/hostreduce_faults.py, kind "fault"), STOP_ON_FAIL (1: stop after the first k whose launch
# failed), DDP_RANKS ("": no DDP steps) and DDP_MODELS (resnet): DDP steps through bench/ddp_step.py
# for DDP_IMPLS ("single auto compare"; also "nccl", "hostreduce", and "compare-bv": compare with
# DDP's gradient_as_bucket_view=True; kind "ddp"), DDP_COMPARE (the
# exchanges "compare" times side by side), DDP_BUFFERS_OFF (1: "compare" also with DDP's
# broadcast_buffers=False, ddp_step.py --buffers-off), DDP_DEVICE_ID (1: "compare"'s groups split
# from a default group made with device_id, ddp_step.py --device-id); OVERLAP_SIZES ("": none; e.g. 4194304,33554432: the
# all-reduces of these sizes also beside compute, kind "overlap"); AUTO (1: the all-reduces also through a
# FLEXMIG_HOSTREDUCE=auto group, impl "auto"). Phase "table" (before "ddp") builds
# $OUTDIR/select.json with bench/hostreduce_table.py from this run's records (the host path
# against NCCL of the same launches, alone and beside compute), and the DDP steps' "auto" then
# decides by it (FLEXMIG_HOSTREDUCE_TABLE), so they measure the table this run makes.
# TRACE=1: the main and DDP launches keep rank 0's pipeline timelines (FLEXMIG_HOSTREDUCE_TRACE,
# in $WORK/trace-main and $WORK/trace-ddp; the poller takes a CPU, so rates are a little lower),
# summarized by bench/hostreduce_trace.py into $OUTDIR/timelines.jsonl.
set -uo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_gpu
RANKS=${RANKS:-2 3 4 5 7}
PHASES=${PHASES:-build copy cpu main ce ddp}
B="$REPO/bench/hostreduce.py"
J="$OUTDIR/hostreduce.jsonl"
LOG="$OUTDIR/hostreduce.log"
T=$RELEASE

# The helper and the library: given, else built here where cargo is (a GPU machine may have none).
HELPER=${FLEXMIG_HELPER:-$T/flexmig-gres-helper}
HRLIB=${HOSTREDUCE_LIB:-$T/libflexmig_hostreduce.so}
for bin in "$HELPER:flexmig-gres-helper" "$HRLIB:flexmig-hostreduce"; do
  [ -e "${bin%%:*}" ] || release_build -p "${bin##*:}" || { echo "no ${bin%%:*} and no cargo to build it"; exit 2; }
done

# Appended, as $J is: a later command with the same OUTDIR (phases "table ddp") keeps the first's log.
echo "== hostreduce on $(hostname), $(utc_now); phases: $PHASES; ranks: $RANKS" | tee -a "$LOG"
MACHINE="$(nvidia-smi --query-gpu=name,driver_version,mig.mode.current --format=csv,noheader | head -1)"
echo "$MACHINE" | tee -a "$LOG"
df -h /dev/shm | tail -1 | tee -a "$LOG"
echo "{\"kind\": \"machine\", \"machine\": \"$MACHINE\", \"cpus\": $(nproc), \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"torch\": \"$($PY -c 'import torch; print(torch.__version__)')\", \"date\": \"$(utc_now)\"}" >>"$J"

if has build && [ ! -f "$PATCHED" ]; then
  src="$NCCL_SRC/nccl-2.28.9"
  [ -d "$src" ] || src="$NCCL_SRC/nccl-2.28.9.tar.gz"
  t0=$(date +%s)
  nccl_install "$src" "$WORK/patched-2.28.9" "$WORK/build-patched.log" || { tail -20 "$WORK/build-patched.log"; exit 2; }
  echo "patched NCCL built in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
fi
[ -f "$PATCHED" ] || { echo "no patched NCCL at $PATCHED"; exit 2; }
"$HELPER" nccl status "$PATCHED" 2>&1 | tee -a "$LOG"

COPY='{}'
if has copy; then
  COPY=$($PY "$REPO/bench/nccl_leaves.py" copy 1 | grep '^RESULT ' | sed 's/^RESULT //')
  echo "{\"kind\": \"copy\", \"copy\": $COPY}" | tee -a "$J"
fi
if has cpu; then
  # The CPU reduce alone, on 1 to 16 threads (how far more reducers help before memory binds):
  # the example built here, else the one beside HOSTREDUCE_LIB (tests/gpu/prepare-slurm-job.sh).
  ex="$T/examples/reduce_speed"
  [ -x "$ex" ] || ex="$(dirname "$HRLIB")/reduce_speed"
  if [ -x "$ex" ]; then "$ex" 2048 1 2 4 8 16 | tee -a "$J"; else echo "cpu: no reduce_speed example (cargo build --release -p flexmig-hostreduce --example reduce_speed)" | tee -a "$LOG"; fi
fi

if has faults; then
  # Where things go wrong (a rank killed mid all-reduce, a CUDA graph, CUDA_LAUNCH_BLOCKING=1), on
  # stock NCCL; one CASE line each, kept as kind "fault" records.
  $PY "$REPO/bench/hostreduce_faults.py" --hostreduce "$HRLIB" 2>>"$LOG" | tee -a "$LOG" \
    | sed -n 's/^CASE //p' | $PY -c 'import json,sys
for l in sys.stdin: print(json.dumps({"kind": "fault", **json.loads(l)}))' | tee -a "$J"
fi

trap 'mps_stop >/dev/null 2>&1' EXIT
mps_start || { echo "MPS did not start"; exit 2; }
# 25 MiB: DDP's default bucket.
SIZES=${SIZES:-1048576,2097152,4194304,8388608,16777216,26214400,33554432,67108864,134217728,268435456}
# with_trace PHASE: the timelines of that phase's launches go to $WORK/trace-PHASE (TRACE=1).
with_trace() {
  if [ "${TRACE:-0}" = 1 ]; then
    mkdir -p "$WORK/trace-$1"
    export FLEXMIG_HOSTREDUCE_TRACE="$WORK/trace-$1"
  else
    unset FLEXMIG_HOSTREDUCE_TRACE
  fi
}
if has main; then
  with_trace main
  for k in $RANKS; do
    $PY "$B" run --ranks "$k" --nccl "$PATCHED" --hostreduce "$HRLIB" --mps --mps-percent "${MPS_PERCENT:-14}" --sizes "$SIZES" \
      --dtypes "${DTYPES:-f32}" $([ "${AUTO:-1}" = 1 ] && echo --auto) --variants "${VARIANTS:-}" --variant-sizes "${VARIANT_SIZES:-}" \
      --overlap-sizes "${OVERLAP_SIZES:-}" --log "$WORK/logs" --timeout "${TIMEOUT:-240}" \
      | tee -a "$LOG" | $PY "$B" lines "$MACHINE" "$COPY" | tee -a "$J" | $PY "$B" summarize
    # What each communicator's reducer threads did (chunks, time waiting for copies down, time
    # reducing), from the ranks' teardown lines: where a size loses, copies or CPU.
    grep -h "reducer threads:" "$WORK/logs/hostreduce-mps-$k".rank*.log 2>/dev/null | sed "s/^/k=$k sizes=$SIZES: /" >>"$OUTDIR/reducer-stats.txt"
    if [ "${STOP_ON_FAIL:-0}" = 1 ] && tail -1 "$J" | grep -q '"error"'; then echo "k=$k failed: stopping (STOP_ON_FAIL=1)"; exit 3; fi
  done
fi
unset FLEXMIG_HOSTREDUCE_TRACE
if has ce && [ -n "${CE_RANKS:-}" ]; then
  # NCCL's copy-engine opt-in at its best measured setting (BENCHMARKS.md, "The ceiling"); only
  # its NCCL records are kept (impl "nccl-ce").
  for k in $CE_RANKS; do
    $PY "$B" run --ranks "$k" --nccl "$PATCHED" --hostreduce "$HRLIB" --mps --mps-percent "${MPS_PERCENT:-14}" --sizes 4194304,67108864,268435456 \
      --env NCCL_SHM_USE_CUDA_MEMCPY=1 --env NCCL_SHM_MEMCPY_MODE=3 --env NCCL_BUFFSIZE=33554432 --env NCCL_MAX_NCHANNELS=2 \
      --tag ce --log "$WORK/logs" --timeout "${TIMEOUT:-240}" | tee -a "$LOG" | $PY "$B" lines "$MACHINE" "$COPY" --nccl-as nccl-ce | tee -a "$J" | $PY "$B" summarize
  done
fi
if has table; then
  (cd "$OUTDIR" && $PY "$REPO/bench/hostreduce_table.py" --host "$J" --beside "$J" --out "$OUTDIR/select.json") || { echo "table: failed"; exit 2; }
  points=$(grep -c '"k":' "$OUTDIR/select.json")
  # No points: no host-path records in $J (phase main not run with this OUTDIR); "auto" would
  # silently be NCCL everywhere.
  [ "$points" -gt 0 ] || { echo "table: no points from $J (run phase main first, with the same OUTDIR)" | tee -a "$LOG"; exit 2; }
  export FLEXMIG_HOSTREDUCE_TABLE=$OUTDIR/select.json
  echo "table: $FLEXMIG_HOSTREDUCE_TABLE, $points points" | tee -a "$LOG"
fi
if has ddp && [ -n "${DDP_RANKS:-}" ]; then
  with_trace ddp
  # DDP steps (bench/ddp_step.py) with the plugin's default 2 channels. Per model and k: "single"
  # (one process with k times the SM share and the batch), DDP's own exchange through NCCL or the
  # host path ("nccl", "hostreduce", "auto": FLEXMIG_HOSTREDUCE off, on, auto), and "compare": one
  # launch timing, taking turns, the exchanges of DDP_COMPARE through a comm hook that does what
  # DDP's default one does, with the references none (no exchange), noop and tiny (and with
  # DDP_BUFFERS_OFF=1 nobuf, tiny-nobuf, sync-nobuf and every exchange again without DDP's buffer
  # broadcast).
  DDP_COMPARE=${DDP_COMPARE:-"nccl=FLEXMIG_HOSTREDUCE=off;hostreduce=FLEXMIG_HOSTREDUCE=on;auto=FLEXMIG_HOSTREDUCE=auto"}
  for model in ${DDP_MODELS:-resnet}; do
    for k in $DDP_RANKS; do
      for impl in ${DDP_IMPLS:-single auto compare}; do
        extra=()
        case $impl in
          single) variant=single lib="" mode=off ;;
          nccl) variant=patched lib="$PATCHED" mode=off ;;
          hostreduce) variant=patched lib="$HRLIB $PATCHED" mode=on ;;
          auto) variant=patched lib="$HRLIB $PATCHED" mode=auto ;;
          compare) variant=patched lib="$HRLIB $PATCHED" mode=off extra=(--compare "$DDP_COMPARE") ;;
          compare-bv) variant=patched lib="$HRLIB $PATCHED" mode=off extra=(--compare "$DDP_COMPARE" --bucket-view) ;;
          *) echo "DDP_IMPLS: unknown $impl"; exit 2 ;;
        esac
        case $impl in compare*)
          [ "${DDP_BUFFERS_OFF:-0}" = 1 ] && extra+=(--buffers-off)
          [ "${DDP_DEVICE_ID:-0}" = 1 ] && extra+=(--device-id) ;;
        esac
        $PY "$REPO/bench/ddp_step.py" run --model "$model" --variant $variant --ranks "$k" --plugin-max-channels 2 --lib "$lib" \
          --env FLEXMIG_HOSTREDUCE=$mode --env FLEXMIG_HOSTREDUCE_DEBUG=1 "${extra[@]}" --tag "$impl" --mps --log "$WORK/ddp-logs" --timeout "${TIMEOUT:-240}" \
          | tee -a "$LOG" | $PY "$B" ddp-lines "$MACHINE" "$impl" | tee -a "$J" | cut -c1-220
      done
    done
  done
fi
mps_stop
if [ "${TRACE:-0}" = 1 ]; then
  for phase in main ddp; do
    set -- "$WORK/trace-$phase"/hostreduce-trace-*.txt
    [ -e "$1" ] && $PY "$REPO/bench/hostreduce_trace.py" --source "$phase" "$@" >>"$OUTDIR/timelines.jsonl"
  done
fi
echo "== done $(utc_now)" | tee -a "$LOG"
