#!/usr/bin/env bash
# Runs all of flexmig's tests on Debian 12 as root: unit tests, the integration tests against a
# real Slurm (munge, slurmctld, slurmd started by the tests on loopback), and the NCCL patch
# check. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The integration tests load the built plugin .so, so build it before testing.
cargo build -p flexmig-spank
cargo test --workspace --no-fail-fast
if [ -f nccl-patch/ci-check.sh ]; then
  bash nccl-patch/ci-check.sh
fi
