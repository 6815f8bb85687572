# Shared set-up of the bench scripts, sourced first by each of them:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Safe under `set -euo pipefail`; sets no shell options and, until bench_gpu is called, exports
# nothing and writes nothing. Variables (each from the environment variable of the same name
# where there is one, with these defaults):
#   REPO      the repository (the directory above bench/)
#   RELEASE   cargo's release directory: $CARGO_TARGET_DIR/release, default <repo>/target/release
#   NCCL_SRC  the NCCL sources, holding nccl-2.28.9/ and nccl-2.3x/ (<repo>/.nccl/src)
#   WORK      scratch space: builds, rank logs, the MPS pipes (/tmp/flexmig-bench)
#   OUTDIR    results ($WORK/out)
#   PY        the Python that runs the drivers: $PYTHON (python3)
#   PATCHED   the patched NCCL measured as "patched": $PATCHED_LIB ($WORK/patched-2.28.9/lib/libnccl.so.2)
# and mps_start/mps_stop from bench/mps.sh.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RELEASE="${CARGO_TARGET_DIR:-$REPO/target}/release"
NCCL_SRC=${NCCL_SRC:-$REPO/.nccl/src}
WORK=${WORK:-/tmp/flexmig-bench}
OUTDIR=${OUTDIR:-$WORK/out}
PY=${PYTHON:-python3}
PATCHED=${PATCHED_LIB:-$WORK/patched-2.28.9/lib/libnccl.so.2}
# shellcheck source=bench/mps.sh
source "$REPO/bench/mps.sh"

# The environment of every GPU benchmark: $WORK and $OUTDIR exist, and NVLink multicast stays
# off on shared machines.
bench_gpu() {
  mkdir -p "$WORK" "$OUTDIR"
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
}

# cargo build -q --release ARGS..., in the repository.
release_build() { (cd "$REPO" && cargo build -q --release "$@"); }

# HELPER: $FLEXMIG_HELPER, else flexmig-gres-helper built here (exits 2 if that fails).
bench_helper() {
  HELPER=${FLEXMIG_HELPER:-}
  if [ -z "$HELPER" ]; then
    release_build -p flexmig-gres-helper || exit 2
    HELPER="$RELEASE/flexmig-gres-helper"
  fi
}

# Only the kernels these benchmarks and PyTorch's barrier/DDP use: builds in a fraction of the
# time of a full library (make reads ONLY_FUNCS from the environment; see src/device/generate.py).
# (ReduceScatter for every type: tests/gpu/nccl-mig.sh checks an int32 one and may reuse these
# builds.) ONLY_FUNCS set in the environment replaces it; set empty, every kernel is built.
BENCH_ONLY_FUNCS="SendRecv|AllGather * *|Broadcast * *|AllReduce (Sum|MinMax) * * *|ReduceScatter Sum * * *"

# nccl_install SOURCE PREFIX LOG [ARGS...]: `flexmig-gres-helper nccl install` of SOURCE into
# PREFIX (ARGS: --no-patch, --ring-slice-steps S, ...), its output in LOG; needs bench_helper.
nccl_install() {
  local src=$1 prefix=$2 log=$3
  shift 3
  ONLY_FUNCS=${ONLY_FUNCS-$BENCH_ONLY_FUNCS} "$HELPER" nccl install --source "$src" --prefix "$prefix" "$@" >"$log" 2>&1
}

# Whether PHASES names phase $1.
has() { [[ " $PHASES " == *" $1 "* ]]; }

# The JSON of a driver's `RESULT {json}` lines (stdin), one a line.
result_lines() { grep '^RESULT ' | sed 's/^RESULT //'; }

# envs: the --env K=V arguments of a setting "K=V[,K=V...]".
setting_envs() {
  local kv e
  envs=()
  IFS=, read -ra kv <<<"$1"
  for e in "${kv[@]}"; do envs+=(--env "$e"); done
}

# The number of GPUs nvidia-smi lists.
gpu_count() { nvidia-smi --query-gpu=index --format=csv,noheader | wc -l; }

# Name, driver and MIG mode of every GPU, ";"-separated: the "machine" of a results file's first line.
gpu_names() { nvidia-smi --query-gpu=name,driver_version,mig.mode.current --format=csv,noheader | paste -sd ";"; }

# Now, UTC, as the results record it.
utc_now() { date -u +%FT%TZ; }
