#!/usr/bin/env bash
# The Debian packages, end to end: builds them (scripts/package.sh) for the host's Slurm and the
# matrix releases, checks them with lintian, installs them with `apt-get install ./...deb` on the
# host and in each release chroot, and runs every real-Slurm suite against the INSTALLED files
# (/usr/lib/<multiarch>/slurm-wlm/flexmig.so, /usr/bin/flexmig-gres-helper, /usr/share/flexmig)
# plus tests/tests/installed.rs. Purges the packages again afterwards, also on failure, so that
# nothing installed is left to change other tests (the cached chroots stay clean too).
#
#   bash scripts/package-test.sh [SUITE ...]   (default: trixie sid; the host always)
#
# Needs root; the chroots and header copies come from scripts/release-matrix.sh's helpers.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
suites=("$@")
[ "${#suites[@]}" -gt 0 ] || suites=(trixie sid)
root=${FLEXMIG_CHROOT_ROOT:-/var/cache/flexmig-ci/chroots}
debs=$repo/target/debs
matrix=$repo/target/matrix
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
so=/usr/lib/$multiarch/slurm-wlm/flexmig.so
tests=(plugin hardening helper_slurm release installed:--ignored)
t0=$SECONDS

# Headers of every release: the host's, and a copy of each chroot's.
includes=(/usr/include)
mkdir -p "$matrix"
for s in "${suites[@]}"; do
  bash scripts/release-chroot.sh "$s" "$root/$s"
  rm -rf "$matrix/include-$s" && mkdir -p "$matrix/include-$s" && cp -a "$root/$s/usr/include/slurm" "$matrix/include-$s/"
  includes+=("$matrix/include-$s")
done
rm -rf "$debs"
bash scripts/package.sh "$debs" "${includes[@]}"

# lintian: no errors or warnings (what remains at info level is overridden with the reason, in
# packaging/lintian-overrides).
if command -v lintian >/dev/null 2>&1; then
  lintian --fail-on error,warning --pedantic "$debs"/*.deb
else
  echo "package-test: lintian is not installed (apt-get install lintian)" >&2
  exit 2
fi

release_of() { # the Slurm release of a header directory
  local n
  n=$(sed -n 's/^#define SLURM_VERSION_NUMBER \(0x[0-9a-fA-F]*\).*/\1/p' "$1/slurm/slurm_version.h")
  printf '%d.%02d' $((n >> 16)) $(((n >> 8) & 0xff))
}
host_release=$(release_of /usr/include)
helper_deb=$(ls "$debs"/flexmig-gres-helper_*.deb)

host_installed= chroot_installed=
purge_all() {
  if [ -n "$host_installed" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq flexmig-gres-helper "flexmig-slurm-plugin-$host_release" >/dev/null || true
  fi
  if [ -n "$chroot_installed" ]; then
    chroot "${chroot_installed%% *}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 purge -y -qq flexmig-gres-helper \
      "flexmig-slurm-plugin-${chroot_installed#* }" >/dev/null || true
  fi
}
trap purge_all EXIT

# The host.
echo "package-test: host (Slurm $host_release): installing the packages"
host_installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$helper_deb" "$(ls "$debs"/flexmig-slurm-plugin-"$host_release"_*.deb)" >/dev/null
cargo test -q -p flexmig-integration --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$matrix/test-binaries"
failed=()
for entry in "${tests[@]}"; do
  t=${entry%%:*} targs=
  [ "$t" = "$entry" ] || targs=${entry#*:}
  bin=$(awk -v t="$t" '$1 == t {print $2}' "$matrix/test-binaries")
  echo "package-test: host (Slurm $host_release), installed files: $t"
  # shellcheck disable=SC2086
  FLEXMIG_SPANK_SO=$so FLEXMIG_GRES_HELPER=/usr/bin/flexmig-gres-helper FLEXMIG_LUA_DIR=/usr/share/flexmig \
    FLEXMIG_EXPECT_SLURM=$host_release "$bin" -q $targs || failed+=("host/$t")
done
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq flexmig-gres-helper "flexmig-slurm-plugin-$host_release" >/dev/null
host_installed=
for f in "$so" /usr/bin/flexmig-gres-helper /etc/slurm/plugstack.conf.d/flexmig.conf /usr/share/flexmig; do
  [ ! -e "$f" ] || { echo "package-test: $f is left after purge" >&2; failed+=("host/purge"); }
done

# Each chroot: install there, run the matrix against the installed files, purge.
for s in "${suites[@]}"; do
  dir=$root/$s
  # This run alone in the chroot (release-matrix.sh below is told it holds the lock).
  exec {lock}> "$(realpath -m "$dir").lock"
  flock -w 3600 "$lock" || { echo "package-test: $dir is in use by another run" >&2; exit 1; }
  release=$(release_of "$matrix/include-$s")
  plugin_deb=$(ls "$debs"/flexmig-slurm-plugin-"$release"_*.deb)
  echo "package-test: $s (Slurm $release): installing the packages"
  mkdir -p "$dir/tmp/flexmig-debs"
  cp "$helper_deb" "$plugin_deb" "$dir/tmp/flexmig-debs/"
  # The pin: the host release's plugin package must not install next to this Slurm.
  host_plugin_deb=$(ls "$debs"/flexmig-slurm-plugin-"$host_release"_*.deb)
  cp "$host_plugin_deb" "$dir/tmp/flexmig-debs/"
  if chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y -qq /tmp/flexmig-debs/"$(basename "$host_plugin_deb")" \
    > "$dir/tmp/flexmig-debs/wrong-release.log" 2>&1 || [ -e "$dir$so" ]; then
    echo "package-test: $s: flexmig-slurm-plugin-$host_release installed next to Slurm $release" >&2
    failed+=("$s/pin")
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 purge -y -qq "flexmig-slurm-plugin-$host_release" >/dev/null || true
  else
    # apt 2 (trixie): "pkg : Depends: slurm-wlm-basic-plugins (< ...)"; apt 3 (sid): "pkg:amd64 Depends slurm-wlm-basic-plugins (< ...)"
    grep -Eq "flexmig-slurm-plugin-$host_release[: a-z0-9]*Depends:? slurm-wlm-basic-plugins \(< " "$dir/tmp/flexmig-debs/wrong-release.log" \
      || { cat "$dir/tmp/flexmig-debs/wrong-release.log" >&2; failed+=("$s/pin-message"); }
    echo "package-test: $s: flexmig-slurm-plugin-$host_release refused next to Slurm $release (its Depends pin)"
  fi
  # No network needed: every dependency is installed already (the package's pin must hold).
  chroot_installed="$dir $release"
  if ! chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y -qq /tmp/flexmig-debs/"$(basename "$helper_deb")" \
    /tmp/flexmig-debs/"$(basename "$plugin_deb")" >/dev/null; then
    failed+=("$s/install")
    continue
  fi
  var=FLEXMIG_SPANK_SO_$(echo "$s" | tr '[:lower:]-' '[:upper:]_')
  env "$var=$so" FLEXMIG_CHROOT_LOCKED=1 FLEXMIG_GRES_HELPER=/usr/bin/flexmig-gres-helper FLEXMIG_LUA_DIR=/usr/share/flexmig \
    FLEXMIG_MATRIX_TESTS="${tests[*]}" bash scripts/release-matrix.sh "$s" || failed+=("$s/tests")
  # An upgrade keeps the admin's enabled plugstack line (a conffile) and replaces the plugin.
  conf=$dir/etc/slurm/plugstack.conf.d/flexmig.conf
  sed -i 's|^#required |required |' "$conf"
  rm -rf "$dir/tmp/flexmig-debs/up" && dpkg-deb -R "$plugin_deb" "$dir/tmp/flexmig-debs/up"
  sed -i 's/^Version: .*/&+upgrade1/' "$dir/tmp/flexmig-debs/up/DEBIAN/control"
  dpkg-deb --root-owner-group -b "$dir/tmp/flexmig-debs/up" "$dir/tmp/flexmig-debs/upgrade.deb" >/dev/null
  if chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y -qq /tmp/flexmig-debs/upgrade.deb >/dev/null \
    && chroot "$dir" dpkg-query -W -f='${Version}' "flexmig-slurm-plugin-$release" | grep -q '+upgrade1$' \
    && grep -q "^required $so " "$conf" && cmp -s "$dir$so" "$dir/tmp/flexmig-debs/up$so"; then
    echo "package-test: $s: an upgrade kept the enabled plugstack line"
  else
    echo "package-test: $s: the upgrade lost the admin's plugstack line or did not replace the plugin" >&2
    failed+=("$s/upgrade")
  fi
  chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 purge -y -qq flexmig-gres-helper "flexmig-slurm-plugin-$release" >/dev/null \
    || failed+=("$s/purge")
  [ ! -e "$conf" ] || { echo "package-test: $s: purge left $conf" >&2; failed+=("$s/purge-conffile"); }
  chroot_installed=
  rm -rf "$dir/tmp/flexmig-debs"
  exec {lock}>&-
done
echo "package-test: done in $((SECONDS - t0)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "package-test: FAILED: ${failed[*]}" >&2
  exit 1
fi
