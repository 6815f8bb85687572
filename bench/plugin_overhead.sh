#!/usr/bin/env bash
# The SPANK plugin's cost per step: `srun -n 7 true` with and without --flexmig on a throwaway
# local Slurm with emulated leaves, A/B interleaved. Debian 12, as root.
# Usage: bash bench/plugin_overhead.sh [ROUNDS]   (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build -q --release -p flexmig-spank
cargo build -q --release -p flexmig-integration --bins
echo "# bash bench/plugin_overhead.sh ${1:-40}: $(date -u +%F), $(nproc) cores, Slurm $(dpkg-query -W -f='${Version}' slurm-client), release build"
FLEXMIG_SPANK_SO="$PWD/target/release/libflexmig_spank.so" target/release/flexmig-bench-plugin "${1:-40}"
