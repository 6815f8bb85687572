#!/usr/bin/env bash
# Makes (or reuses) a Debian chroot holding another Slurm release for flexmig's release matrix:
#   bash scripts/release-chroot.sh SUITE DIR       (SUITE: trixie = Slurm 24.11, sid = 26.05)
# debootstrap --variant=minbase from Debian's archive, then Slurm, munge and what the integration
# tests call (useradd, runuser, flock, nm). A finished chroot carries DIR/.flexmig-chroot (the
# package list it was made with) and is reused as it is; an unfinished one is made again.
# Needs root and debootstrap (scripts/install-deps.sh installs it). Mounts nothing: see
# scripts/release-matrix.sh for running in it.
set -euo pipefail
suite=${1:?usage: release-chroot.sh SUITE DIR}
dir=${2:?usage: release-chroot.sh SUITE DIR}
mirror=${FLEXMIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The tests need: the daemons and clients, munge, the headers (the plugin is built against them),
# useradd (passwd), runuser/flock/mknod (util-linux, coreutils), nm (binutils), ps (procps).
pkgs=(slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev passwd login util-linux procps binutils ca-certificates)
stamp="$suite ${pkgs[*]}"

if [ -f "$dir/.flexmig-chroot" ] && [ "$(cat "$dir/.flexmig-chroot")" = "$stamp" ]; then
  echo "release-chroot: $suite: reusing $dir"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "release-chroot: making a chroot needs root" >&2
  exit 2
fi
command -v debootstrap >/dev/null || { echo "release-chroot: debootstrap missing (apt-get install debootstrap)" >&2; exit 2; }
# A half-made chroot (interrupted run) is made again from scratch; never remove a mounted one.
if [ -e "$dir" ]; then
  if findmnt -rn -o TARGET | grep -q "^$(realpath "$dir")/"; then
    echo "release-chroot: $dir has mounts; unmount them first (umount -R $dir/proc $dir/sys $dir/dev)" >&2
    exit 2
  fi
  rm -rf --one-file-system "$dir"
fi
mkdir -p "$(dirname "$dir")"
t0=$SECONDS
echo "release-chroot: $suite: debootstrap --variant=minbase into $dir"
debootstrap --variant=minbase "$suite" "$dir" "$mirror" > "$dir.debootstrap.log" 2>&1 || {
  tail -30 "$dir.debootstrap.log" >&2
  exit 1
}
# minbase has no /etc/hosts: without localhost, slurmd retries forever and ignores SIGTERM.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$dir/etc/hosts"
# Installing the daemons must not start them (the tests start their own).
printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"
chmod +x "$dir/usr/sbin/policy-rc.d"
# unstable's Release file may be older than its Valid-Until when the mirror is a snapshot.
apt_opts=(-o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false -o Dpkg::Use-Pty=0)
mount -t proc proc "$dir/proc"
trap 'umount "$dir/proc" 2>/dev/null || true' EXIT
chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq
chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq "${pkgs[@]}" > "$dir.apt.log" 2>&1 || {
  tail -30 "$dir.apt.log" >&2
  exit 1
}
chroot "$dir" apt-get clean
umount "$dir/proc"
trap - EXIT
printf '%s' "$stamp" > "$dir/.flexmig-chroot"
echo "release-chroot: $suite: $(chroot "$dir" dpkg-query -W -f='slurm ${Version}' slurm-client) ready in $((SECONDS - t0)) s"
