#!/usr/bin/env bash
# Prepares, on a build machine, what tests/gpu/nccl-mig.sh needs on a GPU machine that reaches no
# registry and may have no Rust: the helper (release build) and the NCCL sources it patches there,
# all under .nccl/ (git-ignored; about 10 MiB, well under what a device call carries).
#
#   NCCL_GIT=<clone or mirror of NVIDIA/nccl> bash tests/gpu/prepare-nccl-mig.sh [RELEASE ...]
#
# RELEASE: NCCL releases whose sources to pack as .nccl/src/nccl-<release>.tar.gz with `git archive`
# of tag v<release>-1 (default: 2.28.9 2.30.7 2.30.4); a tarball already there is kept.
# The helper lands in .nccl/bin/flexmig-gres-helper. Then, on the GPU machine (carrying .nccl):
#
#   FLEXMIG_HELPER=$PWD/.nccl/bin/flexmig-gres-helper NCCL_SRC=$PWD/.nccl/src PARTS="patched guard" tests/gpu/nccl-mig.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SRC=$REPO/.nccl/src
mkdir -p "$SRC" "$REPO/.nccl/bin"
RELEASES=("$@")
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(2.28.9 2.30.7 2.30.4)
for v in "${RELEASES[@]}"; do
  out=$SRC/nccl-$v.tar.gz
  [ -s "$out" ] && { echo "prepare-nccl-mig: keeping $out"; continue; }
  [ -n "${NCCL_GIT:-}" ] || { echo "prepare-nccl-mig: $out is missing; set NCCL_GIT=<clone of NVIDIA/nccl>" >&2; exit 2; }
  git -C "$NCCL_GIT" archive --format=tar.gz --prefix="nccl-$v/" -o "$out" "v$v-1"
  echo "prepare-nccl-mig: $out from tag v$v-1"
done
(cd "$REPO" && cargo build -q --release -p flexmig-gres-helper)
install -m 0755 "${CARGO_TARGET_DIR:-$REPO/target}/release/flexmig-gres-helper" "$REPO/.nccl/bin/"
strip "$REPO/.nccl/bin/flexmig-gres-helper"
"$REPO/.nccl/bin/flexmig-gres-helper" nccl patches >/dev/null
du -sh "$REPO/.nccl"
