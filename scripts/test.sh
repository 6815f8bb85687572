#!/usr/bin/env bash
# Runs all of flexmig's tests on Debian 12 as root: unit tests, the integration tests against a
# real Slurm (munge, slurmctld, slurmd started by the tests on loopback), the NCCL patch check,
# the benchmark scripts' check (tables reproduced from raw results), the Slurm release matrix
# (24.11, 26.05 in chroots) and the Debian packages installed and tested. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The code is rustfmt-clean (rustfmt.toml); rustup installs rustfmt where it is missing.
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt || { echo "test.sh: rustfmt is missing and rustup could not add it" >&2; exit 2; }
fi
cargo fmt --all --check
# The integration tests load the built plugin .so, so build it before testing.
cargo build -p flexmig-spank
cargo test --workspace --no-fail-fast
bash nccl-patch/ci-check.sh
# The GPU scripts and the published benchmark tables (python3 is there after ci-check).
bash bench/check.sh
# The Slurm release matrix: every real-Slurm suite on Debian 13's Slurm 24.11 and unstable's
# 26.05, each in a debootstrap chroot (made once, then reused from /var/cache/flexmig-ci; CI
# makes them fresh), with the plugin built against that release's headers.
if [ -n "${CI:-}" ] && [ -z "${FLEXMIG_CHROOT_ROOT:-}" ]; then
  # CI starts clean: fresh chroots in a directory of this run, removed at the end (never while
  # anything is mounted in it; the scripts unmount what they mount, also on failure).
  FLEXMIG_CHROOT_ROOT=$(mktemp -d /var/tmp/flexmig-ci-chroots.XXXXXX)
  export FLEXMIG_CHROOT_ROOT
  trap 'exit 130' INT TERM
  trap 'if findmnt -rn -o TARGET | grep -q "^$FLEXMIG_CHROOT_ROOT/"; then echo "test.sh: $FLEXMIG_CHROOT_ROOT has mounts, left in place" >&2; else rm -rf --one-file-system "$FLEXMIG_CHROOT_ROOT"; fi' EXIT
fi
matrix=0
bash scripts/release-matrix.sh || matrix=$?
# The Debian packages: built for 22.05, 24.11 and 26.05, lintian-clean, installed with apt on
# this host and in both chroots, every suite run against the installed files, purged again.
# Run even when the matrix failed (both results are worth seeing); either failing fails test.sh.
bash scripts/package-test.sh
if [ "$matrix" != 0 ]; then
  echo "test.sh: the Slurm release matrix failed (scripts/release-matrix.sh, above)" >&2
  exit "$matrix"
fi
