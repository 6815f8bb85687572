#!/usr/bin/env bash
# flexmig demo on Debian 12 as root: builds the plugin, starts a throwaway single-node Slurm on
# loopback with emulated MIG GPUs (fake leaf devices; no GPU needed, none is reconfigured), runs
# `srun --flexmig` steps and prints which rank got which GPU and MIG leaf. Stops Slurm at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build -q -p flexmig-spank
cargo build -q -p flexmig-gres-helper -p flexmig-integration --bins
exec target/debug/flexmig-demo "$@"
