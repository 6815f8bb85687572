#!/usr/bin/env bash
# The SPANK plugin's cost per step: `srun -n 7 true` with and without --flexmig on a throwaway
# local Slurm with emulated leaves, A/B interleaved. Debian 12, as root.
# Usage: bash bench/plugin_overhead.sh [ROUNDS]   (default 40)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
bash scripts/install-deps.sh
release_build -p flexmig-spank
release_build -p flexmig-integration --bins
echo "# bash bench/plugin_overhead.sh ${1:-40}: $(date -u +%F), $(nproc) cores, Slurm $(dpkg-query -W -f='${Version}' slurm-client), release build"
FLEXMIG_SPANK_SO="$RELEASE/libflexmig_spank.so" "$RELEASE/flexmig-bench-plugin" "${1:-40}"
