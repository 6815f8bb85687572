#!/usr/bin/env bash
# CI check of flexmig's NCCL patches, no GPU needed (Debian 12, as root; about 1-3 minutes).
#
#   nccl-patch/ci-check.sh
#
# 1. Downloads NCCL's source through apt: Debian's `nvidia-nccl` source package (2.29.7 in unstable),
#    with a temporary deb-src entry for unstable. The entry lives in a private apt source list, lists
#    and cache under $WORK, passed to apt-get with -o options, so the system's apt configuration and
#    package lists are never written; /etc/apt is checksummed before and after to prove it.
# 2. Applies the flexmig patch with the installer's own logic (`flexmig-gres-helper nccl install
#    --check-only`, then `--patch-only`), cross-checks every patch with `patch --dry-run` where a
#    matching tree is at hand, and checks that a second application is recognised.
# 3. Compiles the host sources the patch touches with g++ against CUDA 13.0 headers taken from
#    PyPI wheels (nvidia-cuda-runtime, nvidia-cuda-crt, nvidia-cuda-cccl; downloaded, not installed).
# 4. Does the same for a copy patched with `--ring-slice-steps 1` (the two host sources that use it).
# 3b. With NCCL_TREES=dir (subdirectories nccl-X.Y.Z, e.g. NVIDIA/nccl tags unpacked with git archive),
#    for every tree: the installer's choice of patch (or its refusal for NCCL >= 2.31), patch(1)'s
#    agreement, and the patched host sources compiled.
#
# Environment: FLEXMIG_HELPER (the helper binary; default: cargo build), WORK (default
# /tmp/flexmig-nccl-ci, recreated each run), CACHE (wheels; default /var/tmp/flexmig-nccl-ci-cache).
# Prints "ci-check: N passed, M failed" last; exits 1 when anything failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-/tmp/flexmig-nccl-ci}
CACHE=${CACHE:-/var/tmp/flexmig-nccl-ci-cache}
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ci-check: PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "ci-check: FAIL $*"; }
finish() {
  echo "ci-check: $PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ] && [ "$PASSED" -gt 0 ]
  exit $?
}

apt_fingerprint() { # every file under /etc/apt: path, mode, content hash
  find /etc/apt -xdev \( -type f -o -type l \) -printf '%p %m %l\n' 2>/dev/null | sort
  find /etc/apt -xdev -type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum
}

rm -rf "$WORK"
mkdir -p "$WORK" "$CACHE"
APT_BEFORE=$(apt_fingerprint)
APTDIR=$WORK/apt
cleanup() {
  rm -rf "$APTDIR"
}
trap cleanup EXIT

# --- tools: g++, make, patch, python3 + pip (installed only when missing, from the system's own sources)
need=()
for t in g++:g++ make:make patch:patch python3:python3 xz:xz-utils; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "ci-check: installing ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >"$WORK/tools.log" 2>&1 \
    || { tail -20 "$WORK/tools.log"; fail "installing ${need[*]}"; finish; }
  APT_BEFORE=$(apt_fingerprint) # installing packages may add files under /etc/apt; compare from here
fi

# --- the helper
HELPER=${FLEXMIG_HELPER:-}
if [ -z "$HELPER" ]; then
  if (cd "$REPO" && cargo build -q -p flexmig-gres-helper) >"$WORK/cargo.log" 2>&1; then
    HELPER="${CARGO_TARGET_DIR:-$REPO/target}/debug/flexmig-gres-helper"
  else
    tail -20 "$WORK/cargo.log"; fail "cargo build -p flexmig-gres-helper"; finish
  fi
fi
"$HELPER" nccl patches && pass "helper lists its embedded patches" || fail "helper nccl patches"

# --- 1. NCCL source through apt (private source list with a deb-src entry for unstable)
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/parts.d" "$WORK/dl"
echo "deb-src http://deb.debian.org/debian unstable main contrib non-free" >"$APTDIR/sources.list"
APT=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=$APTDIR/parts.d"
     -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache" -o "APT::Sandbox::User=root")
TARBALL=""
if apt-get "${APT[@]}" update >"$WORK/apt-update.log" 2>&1; then
  VERSIONS=$(apt-cache "${APT[@]}" showsrc nvidia-nccl | sed -n 's/^Version: //p' | sort -V)
  PICK=$(echo "$VERSIONS" | grep '^2\.29\.7' | tail -1)
  [ -n "$PICK" ] || PICK=$(echo "$VERSIONS" | tail -1)
  echo "ci-check: nvidia-nccl source versions in unstable: $(echo $VERSIONS); using $PICK"
  if (cd "$WORK/dl" && apt-get "${APT[@]}" source --download-only --tar-only "nvidia-nccl=$PICK") >"$WORK/apt-source.log" 2>&1; then
    TARBALL=$(ls "$WORK"/dl/nvidia-nccl_*.orig.tar.* 2>/dev/null | head -1)
  fi
fi
if [ -n "$TARBALL" ]; then
  pass "apt downloaded $(basename "$TARBALL") (checksum verified by apt)"
else
  tail -5 "$WORK/apt-update.log" "$WORK/apt-source.log" 2>/dev/null
  fail "downloading the nvidia-nccl source through apt"
fi
cleanup
if [ "$(apt_fingerprint)" = "$APT_BEFORE" ]; then pass "/etc/apt unchanged"; else fail "/etc/apt changed"; fi
[ -n "$TARBALL" ] || finish

# --- 2. apply with the installer's logic
if "$HELPER" nccl install --source "$TARBALL" --check-only | tee "$WORK/check.log"; then
  pass "installer: patch applies to the apt tarball"
else
  fail "installer --check-only on the apt tarball"; finish
fi
VERSION=$(sed -n 's/^nccl install: .* is NCCL \([0-9.]*\)$/\1/p' "$WORK/check.log" | head -1)
if ! "$HELPER" nccl install --source "$TARBALL" --prefix "$WORK/prefix" --patch-only; then
  fail "installer --patch-only"; finish
fi
TREE=$WORK/prefix/src/nccl-$VERSION
pass "installer patched a copy of NCCL $VERSION in $TREE"
"$HELPER" nccl install --source "$TREE" --check-only | grep -q "already applied" \
  && pass "installer recognises an already patched tree" || fail "installer on the patched tree"
# The installer must refuse a tree that does not match.
mkdir -p "$WORK/broken" && tar -xf "$TARBALL" -C "$WORK/broken" && BROKEN=$(ls -d "$WORK"/broken/*/ | head -1)
sed -i 's/Duplicate GPU detected/Duplicate GPU found/' "$BROKEN/src/init.cc"
if "$HELPER" nccl install --source "$BROKEN" --check-only >"$WORK/broken.log" 2>&1; then
  fail "installer accepted a tree the patch does not match"
else
  grep -q "does not apply" "$WORK/broken.log" && pass "installer refuses a mismatching tree: $(grep -m1 'does not match' "$WORK/broken.log")" \
    || { cat "$WORK/broken.log"; fail "installer's refusal message"; }
fi
# patch(1) agrees, for every patch whose release is at hand (the apt tree; more under $NCCL_TREES/nccl-X.Y.Z)
for p in "$REPO"/nccl-patch/nccl-*.patch; do
  v=$(basename "$p" .patch); v=${v#nccl-}
  src=""
  if [ "$v" = "$VERSION" ]; then mkdir -p "$WORK/pristine" && tar -xf "$TARBALL" -C "$WORK/pristine" && src=$(ls -d "$WORK"/pristine/*/ | head -1); fi
  [ -z "$src" ] && [ -n "${NCCL_TREES:-}" ] && [ -d "$NCCL_TREES/nccl-$v" ] && src=$NCCL_TREES/nccl-$v
  if [ -z "$src" ]; then echo "ci-check: note: no NCCL $v tree at hand for patch --dry-run"; continue; fi
  if patch -p1 --dry-run -F0 -s -d "$src" <"$p"; then pass "patch --dry-run --fuzz=0 of $(basename "$p")"; else fail "patch --dry-run of $(basename "$p")"; fi
done

# --- 3. compile the touched host sources with CUDA headers from PyPI wheels
CUDA=$WORK/cuda
mkdir -p "$CUDA"
WHEELS=("nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*")
if python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
     --python-version 3.11 -d "$CACHE/wheels" "${WHEELS[@]}" >"$WORK/pip.log" 2>&1; then
  for w in "$CACHE"/wheels/nvidia_cuda_{runtime,crt,cccl}-13.0.*.whl; do python3 -m zipfile -e "$w" "$CUDA/"; done
  pass "CUDA 13.0 headers from PyPI wheels"
else
  tail -5 "$WORK/pip.log"; fail "pip download of ${WHEELS[*]}"; finish
fi
CUDA_HOME_WHEEL=$CUDA/nvidia/cu13
mapfile -t CCS < <(grep '^+++ b/src/.*\.cc$' "$REPO/nccl-patch/nccl-$VERSION.patch" | sed 's|^+++ b/src/||')
OBJS=()
for f in "${CCS[@]}"; do OBJS+=("$WORK/build/obj/${f%.cc}.o"); done
echo "ci-check: compiling ${CCS[*]}"
if make -C "$TREE/src" -j"$(nproc)" CUDA_HOME="$CUDA_HOME_WHEEL" CUDA_VERSION=13.0 NVCC=/bin/false \
     BUILDDIR="$WORK/build" "${OBJS[@]}" >"$WORK/compile.log" 2>&1; then
  pass "g++ compiled the ${#CCS[@]} patched host sources of NCCL $VERSION"
else
  grep -E "error|Error" "$WORK/compile.log" | head -20; fail "compiling the patched host sources"
fi
for o in "${OBJS[@]}"; do [ -s "$o" ] || fail "missing object $o"; done
grep -q "flexmig-mig-patch/" "$WORK/build/obj/init.o" && pass "init.o carries the flexmig-mig-patch marker" \
  || fail "no flexmig-mig-patch marker in init.o"
if grep -q "flexmig-shm-ce/1" "$REPO/nccl-patch/nccl-$VERSION.patch"; then
  grep -q "flexmig-shm-ce/1" "$WORK/build/obj/transport/shm.o" && pass "shm.o carries the copy-engine (flexmig-shm-ce/1) marker" \
    || fail "no flexmig-shm-ce/1 marker in shm.o"
fi

# --- 3b. every tree under $NCCL_TREES (nccl-X.Y.Z/, e.g. `git archive v2.30.4-1` of NVIDIA/nccl): the
# installer picks its patch (or refuses a release >= 2.31), patch(1) agrees, the touched host sources compile
if [ -n "${NCCL_TREES:-}" ]; then
  for src in "$NCCL_TREES"/nccl-*/; do
    src=${src%/}; name=$(basename "$src")
    [ -f "$src/makefiles/version.mk" ] || continue
    log=$WORK/tree-$name.log
    if ! "$HELPER" nccl install --source "$src" --check-only >"$log" 2>&1; then
      if grep -qE "needs no flexmig patch|is a pre-release: flexmig offers no patch" "$log"; then
        pass "$name: the installer offers no patch (stock MIG support): $(grep -oE 'NCCL [0-9.a-z]+ (needs no flexmig patch|is a pre-release)' "$log" | head -1)"
      else
        cat "$log"; fail "$name: installer --check-only"
      fi
      continue
    fi
    pname=$(sed -n 's/^nccl install: \(nccl-[0-9.]*\.patch\) applies cleanly.*/\1/p' "$log" | head -1)
    [ -n "$pname" ] || { cat "$log"; fail "$name: the installer named no patch"; continue; }
    patch -p1 --dry-run -F0 -s -d "$src" <"$REPO/nccl-patch/$pname" && pass "$name: patch --dry-run --fuzz=0 of $pname" \
      || fail "$name: patch --dry-run of $pname"
    "$HELPER" nccl install --source "$src" --prefix "$WORK/trees/$name" --patch-only >>"$log" 2>&1 \
      || { tail -5 "$log"; fail "$name: installer --patch-only"; continue; }
    ttree=$(ls -d "$WORK/trees/$name"/src/nccl-*/ | head -1)
    mapfile -t TCCS < <(grep '^+++ b/src/.*\.cc$' "$REPO/nccl-patch/$pname" | sed 's|^+++ b/src/||')
    TOBJS=()
    for f in "${TCCS[@]}"; do TOBJS+=("$WORK/build-$name/obj/${f%.cc}.o"); done
    if make -C "$ttree/src" -j"$(nproc)" CUDA_HOME="$CUDA_HOME_WHEEL" CUDA_VERSION=13.0 NVCC=/bin/false \
         BUILDDIR="$WORK/build-$name" "${TOBJS[@]}" >>"$log" 2>&1 && grep -q "flexmig-mig-patch/" "$WORK/build-$name/obj/init.o"; then
      pass "$name: g++ compiled ${TCCS[*]} patched with $pname (init.o carries the marker)"
    else
      grep -E "error|Error" "$log" | head -20; fail "$name: compiling the host sources patched with $pname"
    fi
  done
fi

# --- 4. the 1-step ring slicing (`--ring-slice-steps 1`): the header rewritten, and the host sources
# that use it compile and carry the marker for `nccl status`
if "$HELPER" nccl install --source "$TARBALL" --prefix "$WORK/prefix-slices" --patch-only --ring-slice-steps 1 >"$WORK/slices.log" 2>&1; then
  STREE=$WORK/prefix-slices/src/nccl-$VERSION
  H=$STREE/src/include/collectives.h
  if grep -q "^#define ALLREDUCE_SLICESTEPS 1 " "$H" && grep -q "^#define ALLGATHER_SLICESTEPS 1 " "$H"; then
    pass "--ring-slice-steps 1 rewrote the slice constants in collectives.h"
  else
    fail "--ring-slice-steps 1 left collectives.h as it was"
  fi
  SOBJS=("$WORK/build-slices/obj/collectives.o" "$WORK/build-slices/obj/enqueue.o")
  if make -C "$STREE/src" -j"$(nproc)" CUDA_HOME="$CUDA_HOME_WHEEL" CUDA_VERSION=13.0 NVCC=/bin/false \
       BUILDDIR="$WORK/build-slices" "${SOBJS[@]}" >"$WORK/compile-slices.log" 2>&1 \
     && grep -q "flexmig-ring-slice-steps=1" "${SOBJS[1]}"; then
    pass "with --ring-slice-steps 1, g++ compiled collectives.cc and enqueue.cc, which carry its marker"
  else
    grep -E "error|Error" "$WORK/compile-slices.log" | head -20; fail "compiling with --ring-slice-steps 1"
  fi
else
  tail -5 "$WORK/slices.log"; fail "installer --patch-only --ring-slice-steps 1"
fi

finish
