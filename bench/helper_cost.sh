#!/usr/bin/env bash
# The admin helper's cost on an 8-GPU node (fake node, H100-80GB): `plan` and `gres-conf`
# (gres.conf + node line + inventory + policy, written atomically), wall time per call.
# Usage: bash bench/helper_cost.sh [RUNS]   (default 50)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
runs=${1:-50}
release_build -p flexmig-gres-helper
H=$RELEASE/flexmig-gres-helper
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
"$H" fake-node create --model H100-80GB --gpus 8 --mig-disabled "$d/node.toml" >/dev/null 2>&1
"$H" --fake-node "$d/node.toml" apply >/dev/null 2>&1
"$H" --fake-node "$d/node.toml" --dev-root "$d/dev" --mig-minors "$d/mig-minors" fake-node devices >/dev/null 2>&1
echo "# bash bench/helper_cost.sh $runs: $(date -u +%F), $(nproc) cores, release build, fake 8 x H100-80GB node (56 leaves)"
python3 - "$H" "$d" "$runs" <<'PY'
import subprocess, sys, time, statistics
H, d, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = [H, "--fake-node", f"{d}/node.toml", "--dev-root", f"{d}/dev", "--mig-minors", f"{d}/mig-minors"]
cmds = {
    "plan": base + ["plan"],
    "gres-conf": base + ["gres-conf", "--gres-conf", f"{d}/gres.conf", "--inventory", f"{d}/flexmig.toml",
                         "--node-conf", f"{d}/node.conf", "--policy", f"{d}/policy.lua", "--node-name", "gpu01"],
}
times = {k: [] for k in cmds}
for i in range(runs):
    for k, c in cmds.items():
        t0 = time.perf_counter(); subprocess.run(c, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); times[k].append(time.perf_counter() - t0)
print(f"{'command':<10} {'median ms':>10} {'mean ms':>9} {'max ms':>8}")
for k, v in times.items():
    print(f"{k:<10} {statistics.median(v)*1e3:>10.2f} {statistics.mean(v)*1e3:>9.2f} {max(v)*1e3:>8.2f}")
leaves = sum(1 for l in open(f"{d}/gres.conf") if l.startswith("Name="))
print(f"gres.conf lines written: {leaves}")
PY
