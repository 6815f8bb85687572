#!/usr/bin/env bash
# Builds an emulated flexmig node with flexmig-gres-helper, as an admin would on a real one:
#   demo/helper-node.sh OUTDIR [MODEL] [GPUS] [DEV_ROOT]
# MODEL: a recorded model (flexmig-gres-helper models), default A100-40GB; GPUS default 2.
# DEV_ROOT: where gres.conf says the device files are (default OUTDIR/dev, made with mknod:
# run as root); pass the literal @DEV@ for the integration harness, which substitutes its own.
# Writes into OUTDIR: node.toml (the fake node), mig-minors, dev/, gres.conf, flexmig.toml
# (node inventory), node.conf (slurm.conf NodeName line), flexmig_policy.lua (Lua policy).
set -euo pipefail
out=${1:?usage: demo/helper-node.sh OUTDIR [MODEL] [GPUS] [DEV_ROOT]}
model=${2:-A100-40GB}
gpus=${3:-2}
mkdir -p "$out"
out=$(cd "$out" && pwd)
dev=${4:-$out/dev}
H=${HELPER:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/flexmig-gres-helper}
[ -x "$H" ] || { echo "helper-node: $H not built: cargo build -p flexmig-gres-helper" >&2; exit 2; }
set -x
"$H" plan --model "$model"
"$H" fake-node create --model "$model" --gpus "$gpus" --mig-disabled "$out/node.toml"
"$H" --fake-node "$out/node.toml" apply
"$H" --fake-node "$out/node.toml" assert
"$H" --fake-node "$out/node.toml" --dev-root "$out/dev" --mig-minors "$out/mig-minors" fake-node devices
"$H" --fake-node "$out/node.toml" --dev-root "$dev" --mig-minors "$out/mig-minors" gres-conf \
  --gres-conf "$out/gres.conf" --inventory "$out/flexmig.toml" --node-conf "$out/node.conf" \
  --policy "$out/flexmig_policy.lua" --node-name localhost
set +x
echo "== $out/node.conf"; grep -v '^#' "$out/node.conf"
echo "== $out/gres.conf (GRES index order)"; grep '^Name=' "$out/gres.conf"
