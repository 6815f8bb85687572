#!/usr/bin/env bash
# The Slurm release matrix: flexmig's real-Slurm integration tests (tests/tests/*.rs: the
# plugin's suites, the hardening suite, the helper's, the release checks) on other Slurm releases
# than the host's, each inside a Debian chroot that runs that release's own munged, slurmctld,
# slurmd, srun and slurmstepd.
#
#   bash scripts/release-matrix.sh [SUITE ...]     (default: trixie sid = Slurm 24.11 and 26.05)
#
# For each suite: makes or reuses the chroot (scripts/release-chroot.sh), builds the plugin on
# the host against that release's slurm/*.h (the .so is stamped with its SLURM_VERSION_NUMBER and
# compiles the release's code paths: flexmig_init_failure_mode from 25.05),
# and runs the host-built test binaries inside the
# chroot with FLEXMIG_SPANK_SO naming that plugin. A binary built on Debian 12 (glibc 2.36) runs
# on the newer glibc of trixie and sid. The repository is bind-mounted read-only at its own path
# in the chroot, so the test binaries find slurm-conf/ and the helper where they were built.
#
# Environment:
#   FLEXMIG_CHROOT_ROOT  where chroots live (default /var/cache/flexmig-ci/chroots, kept between
#                        runs; scripts/test.sh with CI set makes fresh ones in a temporary one)
#   FLEXMIG_SPANK_SO_<SUITE>, FLEXMIG_GRES_HELPER, FLEXMIG_LUA_DIR   test installed files
#                        instead of the build (scripts/package-test.sh)
#   FLEXMIG_MATRIX_TESTS test binaries to run, NAME or NAME:ARGS (default: plugin hardening
#                        helper_slurm release status)
#   FLEXMIG_TEST_ARGS    arguments for each test binary (a test name filter, --nocapture)
#   FLEXMIG_MATRIX_KEEP_GOING=1  run a release's other suites after one failed
# Needs root. Always unmounts what it mounted, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
suites=("$@")
[ "${#suites[@]}" -gt 0 ] || suites=(trixie sid)
root=${FLEXMIG_CHROOT_ROOT:-/var/cache/flexmig-ci/chroots}
matrix=$repo/target/matrix
tests=(${FLEXMIG_MATRIX_TESTS:-plugin hardening helper_slurm release status})
mkdir -p "$matrix"

# The test binaries and the helper: built once on the host, the same for every release.
[ -n "${FLEXMIG_GRES_HELPER:-}" ] || cargo build -q -p flexmig-gres-helper
cargo test -q -p flexmig-integration --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$matrix/test-binaries"
helper=${FLEXMIG_GRES_HELPER:-$(cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/flexmig-gres-helper}

# major.minor of the Slurm whose headers are in $1 (SLURM_VERSION_NUMBER, 0xMMmmuu).
slurm_release() {
  local n
  n=$(sed -n 's/^#define SLURM_VERSION_NUMBER \(0x[0-9a-fA-F]*\).*/\1/p' "$1/slurm/slurm_version.h")
  printf '%d.%02d' $((n >> 16)) $(((n >> 8) & 0xff))
}

mounted=()
unmount_all() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m=${mounted[i]}
    umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || echo "release-matrix: could not unmount $m" >&2
  done
  mounted=()
}
# Processes left inside a chroot (a test that died before stopping its daemons) would keep its
# mounts busy: end them, by pid, before unmounting.
end_chroot_processes() {
  local dir=$1 p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    if [ "$r" = "$dir" ]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
}
cleanup() {
  for s in "${suites[@]}"; do end_chroot_processes "$(realpath -m "$root/$s")"; done
  unmount_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_chroot() {
  local dir=$1
  # srun tells slurmctld its host name, which must resolve in the chroot as on the host.
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$(hostname)" > "$dir/etc/hosts"
  mount -t proc proc "$dir/proc" && mounted+=("$dir/proc")
  # slurmd reads /sys, /sys/fs/cgroup included (from 24.11 it will not start without a cgroup
  # file system, even with proctrack/linuxproc and task/none).
  mount --rbind /sys "$dir/sys" && mount --make-rslave "$dir/sys" && mounted+=("$dir/sys")
  mount --rbind /dev "$dir/dev" && mount --make-rslave "$dir/dev" && mounted+=("$dir/dev")
  mkdir -p "$dir$repo"
  mount --bind "$repo" "$dir$repo" && mounted+=("$dir$repo")
  mount -o remount,bind,ro "$dir$repo"
}

failed=()
t_all=$SECONDS
for suite in "${suites[@]}"; do
  t0=$SECONDS
  dir=$(realpath -m "$root/$suite")
  # One run at a time per chroot (two would mount over each other and end each other's daemons);
  # scripts/package-test.sh holds the lock itself and says so.
  if [ -z "${FLEXMIG_CHROOT_LOCKED:-}" ]; then
    mkdir -p "$root"
    exec {lock}> "$dir.lock"
    flock -w 3600 "$lock" || { echo "release-matrix: $dir is in use by another run" >&2; exit 1; }
  fi
  bash scripts/release-chroot.sh "$suite" "$dir"
  # The release's own headers, alone in a directory (the host's C library headers stay in use).
  inc=$matrix/include-$suite
  rm -rf "$inc" && mkdir -p "$inc" && cp -a "$dir/usr/include/slurm" "$inc/"
  release=$(slurm_release "$inc")
  var=FLEXMIG_SPANK_SO_$(echo "$suite" | tr '[:lower:]-' '[:upper:]_')
  so=${!var:-}
  if [ -z "$so" ]; then
    # One target directory for all releases, apart from the workspace's own (whose plugin the
    # host's tests load): only flexmig-spank is rebuilt between releases.
    echo "release-matrix: $suite: building the plugin against Slurm $release's headers"
    SLURM_INCLUDE_DIR=$inc CARGO_TARGET_DIR=$matrix/target cargo build -q -p flexmig-spank
    so=$matrix/flexmig-slurm-$release.so
    cp "$matrix/target/debug/libflexmig_spank.so" "$so"
  fi
  mount_chroot "$dir"
  for entry in "${tests[@]}"; do
    # NAME or NAME:ARGS (installed:--ignored)
    t=${entry%%:*} targs=
    [ "$t" = "$entry" ] || targs=${entry#*:}
    bin=$(awk -v t="$t" '$1 == t {print $2}' "$matrix/test-binaries")
    [ -n "$bin" ] || { echo "release-matrix: no test binary named $t" >&2; exit 1; }
    echo "release-matrix: $suite (Slurm $release): $t"
    # A step that hangs (a slurmstepd that died under srun) must not eat the CI run's 90 minutes:
    # each suite takes about 30 s, 10 minutes end it.
    timeout -k 10 600 chroot "$dir" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      LANG=C.UTF-8 RUST_BACKTRACE=1 FLEXMIG_SPANK_SO="$so" FLEXMIG_GRES_HELPER="$helper" \
      FLEXMIG_EXPECT_SLURM="$release" ${FLEXMIG_LUA_DIR:+FLEXMIG_LUA_DIR="$FLEXMIG_LUA_DIR"} \
      "$bin" -q $targs ${FLEXMIG_TEST_ARGS:-} &
    # In the background, so that a signal to this script runs its cleanup at once.
    if ! wait $!; then
      failed+=("$suite/$t")
      # A release whose suite failed fails; its other suites are not run (a broken plugin makes
      # every step wait for its dead slurmstepd, minutes per suite), unless asked to.
      if [ -z "${FLEXMIG_MATRIX_KEEP_GOING:-}" ]; then
        echo "release-matrix: $suite (Slurm $release): $t failed: the release's other suites NOT RUN (FLEXMIG_MATRIX_KEEP_GOING=1 runs them)" >&2
        break
      fi
    fi
  done
  end_chroot_processes "$dir"
  unmount_all
  [ -n "${FLEXMIG_CHROOT_LOCKED:-}" ] || exec {lock}>&-
  echo "release-matrix: $suite (Slurm $release) done in $((SECONDS - t0)) s"
done
echo "release-matrix: ${suites[*]} in $((SECONDS - t_all)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "release-matrix: FAILED: ${failed[*]}" >&2
  exit 1
fi
