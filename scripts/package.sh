#!/usr/bin/env bash
# Builds flexmig's Debian packages into OUTDIR:
#
#   bash scripts/package.sh OUTDIR [SLURM_INCLUDE_DIR ...]
#
#   flexmig-gres-helper_<v>_<arch>.deb        the admin CLI, the Lua filters and policy, the NCCL
#                                             patches, examples, --help text and a man page
#   flexmig-slurm-plugin-<M.m>_<v>_<arch>.deb the SPANK plugin built against the Slurm M.m whose
#                                             headers (slurm/spank.h) are in SLURM_INCLUDE_DIR
#                                             (default /usr/include), one package per directory
#
# Made with dpkg-deb from a staged tree (packaging/ holds the control files and the snippet):
# no debhelper or cargo-deb, so it runs wherever dpkg and cargo do, and builds plugin packages
# for other Slurm releases from their headers alone (scripts/release-matrix.sh's copies).
# dpkg-shlibdeps (dpkg-dev) works out the C library dependencies when installed.
# Environment: FLEXMIG_DEB_VERSION (default: the workspace version), CARGO_TARGET_DIR (default
# target/package: one directory for the release builds of every package).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:?usage: package.sh OUTDIR [SLURM_INCLUDE_DIR ...]}
shift
includes=("$@")
[ "${#includes[@]}" -gt 0 ] || includes=(/usr/include)
mkdir -p "$out"
out=$(realpath "$out")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/package}
version=${FLEXMIG_DEB_VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)}
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# C library dependencies of the ELF files in a staged tree, as dpkg-shlibdeps writes them.
shlibs() {
  local stage=$1 bins
  bins=$(find "$stage" -type f \( -name '*.so' -o -perm -0100 \) -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print)
  if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    mkdir -p "$work/shlibs/debian"
    printf 'Source: flexmig\n\nPackage: flexmig\nArchitecture: any\n' > "$work/shlibs/debian/control"
    # shellcheck disable=SC2086
    (cd "$work/shlibs" && dpkg-shlibdeps -O $bins 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
  else
    echo "libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
  fi
}

# Changelog, copyright, control (from packaging/<template>), md5sums; then dpkg-deb.
build_deb() {
  local stage=$1 package=$2 template=$3 depends=$4
  local doc=$stage/usr/share/doc/$package
  mkdir -p "$doc" "$stage/DEBIAN"
  sed "s/@PACKAGE@/$package/g; s/@VERSION@/$version/g; s/@DATE@/$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")/g" \
    packaging/changelog | gzip -9n > "$doc/changelog.gz"
  cp packaging/copyright "$doc/copyright"
  # Rust calls no glibc function that _FORTIFY_SOURCE would replace (lintian's info tag).
  mkdir -p "$stage/usr/share/lintian/overrides"
  sed "s/@PACKAGE@/$package/g" packaging/lintian-overrides > "$stage/usr/share/lintian/overrides/$package"
  find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} + -o -type f -exec chmod go-w {} +
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  sed "s/@PACKAGE@/$package/g; s/@VERSION@/$version/g; s/@ARCH@/$arch/g; s/@SIZE@/$size/g; s/@DEPENDS@/$depends/g; $5" \
    "packaging/$template" > "$stage/DEBIAN/control"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' md5sum) > "$stage/DEBIAN/md5sums"
  [ -f "$stage/etc/slurm/plugstack.conf.d/flexmig.conf" ] && echo /etc/slurm/plugstack.conf.d/flexmig.conf > "$stage/DEBIAN/conffiles"
  chmod 0644 "$stage/DEBIAN/"*
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/${package}_${version}_${arch}.deb" >/dev/null
  echo "package.sh: $out/${package}_${version}_${arch}.deb"
}

# The helper.
cargo build -q --release -p flexmig-gres-helper
stage=$work/helper
install -D -m 0755 "$CARGO_TARGET_DIR/release/flexmig-gres-helper" "$stage/usr/bin/flexmig-gres-helper"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/flexmig-gres-helper"
share=$stage/usr/share/flexmig
install -D -m 0644 -t "$share" slurm-conf/job_submit.lua slurm-conf/cli_filter.lua slurm-conf/flexmig_filter.lua slurm-conf/flexmig_policy.lua
# The helper carries the patches it applies (`nccl install`); these are for reading and review.
install -D -m 0644 -t "$share/nccl-patch" nccl-patch/*.patch
doc=$stage/usr/share/doc/flexmig-gres-helper
install -D -m 0644 gres-helper/README.md "$doc/README.md"
install -D -m 0644 nccl-patch/README.md "$doc/nccl-patch.md"
install -D -m 0644 slurm-conf/README.md "$doc/slurm-conf.md"
install -D -m 0644 -t "$doc/examples" slurm-conf/slurm.conf.flexmig slurm-conf/gres.conf.example slurm-conf/plugstack.conf.d/flexmig.conf
# --help of the helper and of every command, as text and as a man page.
bin=$stage/usr/bin/flexmig-gres-helper
commands=$("$bin" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p' | grep -v '^help$')
{
  "$bin" --help
  for c in $commands; do
    printf '\n\n==== flexmig-gres-helper %s ====\n\n' "$c"
    "$bin" "$c" --help
    for sub in $("$bin" "$c" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p' | grep -v '^help$'); do
      printf '\n\n==== flexmig-gres-helper %s %s ====\n\n' "$c" "$sub"
      "$bin" "$c" "$sub" --help
    done
  done
} > "$doc/help.txt"
gzip -9n "$doc/help.txt"
mkdir -p "$stage/usr/share/man/man1"
{
  printf '.TH FLEXMIG-GRES-HELPER 1 "" "flexmig %s" "User Commands"\n' "$version"
  printf '.SH NAME\nflexmig-gres-helper \\- %s\n' "$("$bin" --help | head -1 | sed 's/\\/\\\\/g')"
  printf '.SH SYNOPSIS\n.B flexmig-gres-helper\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR\n'
  printf '.SH DESCRIPTION\nThe node administrator'"'"'s tool of flexmig (MIG GPUs in Slurm, one job over many leaves).\n'
  printf 'The full help of every command is in /usr/share/doc/flexmig-gres-helper/help.txt.gz.\n'
  printf '.SH OPTIONS AND COMMANDS\n.nf\n'
  zcat "$doc/help.txt.gz" | sed 's/\\/\\e/g; s/^\([.'"'"']\)/\\\&\1/'
  printf '.fi\n.SH SEE ALSO\n/usr/share/doc/flexmig-gres-helper/README.md, /usr/share/flexmig/\n'
} | gzip -9n > "$stage/usr/share/man/man1/flexmig-gres-helper.1.gz"
build_deb "$stage" flexmig-gres-helper control.helper "$(shlibs "$stage")" ""

# One plugin package per Slurm release.
for inc in "${includes[@]}"; do
  n=$(sed -n 's/^#define SLURM_VERSION_NUMBER \(0x[0-9a-fA-F]*\).*/\1/p' "$inc/slurm/slurm_version.h")
  [ -n "$n" ] || { echo "package.sh: no SLURM_VERSION_NUMBER in $inc/slurm/slurm_version.h" >&2; exit 1; }
  major=$((n >> 16)) minor=$(((n >> 8) & 0xff))
  release=$(printf '%d.%02d' "$major" "$minor")
  next=$(printf '%d.%02d' "$major" $((minor + 1)))
  echo "package.sh: the plugin for Slurm $release ($inc)"
  SLURM_INCLUDE_DIR=$inc cargo build -q --release -p flexmig-spank
  stage=$work/plugin-$release
  so=$stage/usr/lib/$multiarch/slurm-wlm/flexmig.so
  install -D -m 0644 "$CARGO_TARGET_DIR/release/libflexmig_spank.so" "$so"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$so"
  # The snippet: packaging/plugstack-header.conf, then the repository's example with its
  # plugstack line commented out (enabled by the admin, see the header).
  mkdir -p "$stage/etc/slurm/plugstack.conf.d"
  { sed "s/@RELEASE@/$release/g" packaging/plugstack-header.conf
    sed "s|^\(required\) /usr/lib/[^ ]*/slurm-wlm/flexmig.so|#\1 /usr/lib/$multiarch/slurm-wlm/flexmig.so|" slurm-conf/plugstack.conf.d/flexmig.conf
  } > "$stage/etc/slurm/plugstack.conf.d/flexmig.conf"
  grep -q "^#required /usr/lib/$multiarch/slurm-wlm/flexmig.so " "$stage/etc/slurm/plugstack.conf.d/flexmig.conf" \
    || { echo "package.sh: slurm-conf/plugstack.conf.d/flexmig.conf has no plugstack line to ship" >&2; exit 1; }
  pin="slurm-wlm-basic-plugins (>= $release~), slurm-wlm-basic-plugins (<< $next~)"
  build_deb "$stage" "flexmig-slurm-plugin-$release" control.plugin "$pin, $(shlibs "$stage")" "s/@RELEASE@/$release/g"
done
