#!/usr/bin/env bash
# Installs what flexmig's build, demo and tests need on Debian 12 (as root), only where missing:
# Slurm (daemons, clients, headers), munge, libclang for bindgen, Lua 5.1 for the filters' tests,
# debootstrap, dpkg-dev and lintian for the release matrix and the packages.
set -euo pipefail
# debootstrap makes the release matrix's chroots (scripts/release-matrix.sh); dpkg-dev and
# lintian build and check the Debian packages (scripts/package.sh, scripts/package-test.sh).
pkgs=(slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev libclang-dev clang lua5.1 python3 debootstrap dpkg-dev lintian)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root (or: apt-get install ${missing[*]})" >&2
    exit 2
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing the daemons must not start them (the tests start their own on loopback).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found: install a Rust toolchain >= 1.80 (rustup) first" >&2
  exit 2
fi
