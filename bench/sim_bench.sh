#!/usr/bin/env bash
# The simulator's speed (no GPU): flexmig-sim on synthetic traces, the raw output kept in
# bench/results/simulator/, the tables of BENCHMARKS.md's "Simulator" made from it by
# bench/sim_report.py (bench/check.sh checks that they agree).
#
#   bash bench/sim_bench.sh            # a few minutes on 2 cores; writes bench/results/simulator/
#
# bench-fifo.md, bench-backfill.md: `flexmig-sim bench` over 1,000 to 1,000,000 jobs on 8, 64 and
# 512 GPUs (balanced sizes, mixed training and inference, load 0.9); bench-inference.md: the
# inference mix, which Static-MIG also runs; cli.txt: 100,000 jobs on 64 GPUs end to end through
# the CLI (trace read from CSV, every mode), wall time and peak memory per scheduler. Timings on a
# shared machine move by tens of percent between runs; keep the machine quiet.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
# GNU time's -f, for cli.txt's wall time and peak memory (checked before any output is replaced).
[ -x /usr/bin/time ] && /usr/bin/time -f %e true 2>/dev/null || { echo "sim_bench: needs GNU time at /usr/bin/time (apt-get install time)"; exit 2; }
release_build -p flexmig-sim
B=$RELEASE/flexmig-sim
OUT=${OUT:-$REPO/bench/results/simulator}
mkdir -p "$OUT"
stamp="$(date -u +%F), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(rustc --version | cut -d' ' -f1-2), release build"
for s in fifo backfill; do
  { echo "# bash bench/sim_bench.sh: $stamp"; "$B" bench --jobs 1000,10000,100000,1000000 --gpus 8,64,512 --scheduler "$s"; } >"$OUT/bench-$s.md"
done
{ echo "# bash bench/sim_bench.sh: $stamp"; "$B" bench --jobs 100000 --gpus 64 --scheduler backfill --mix inference; } >"$OUT/bench-inference.md"
t=$(mktemp); trap 'rm -f "$t"' EXIT
"$B" generate --gpus 64 --jobs 100000 --load 0.9 >"$t"
{
  echo "# bash bench/sim_bench.sh: $stamp"
  echo "# flexmig-sim compare --gpus 64 --trace <100,000 jobs, load 0.9> --scheduler S --json, /usr/bin/time"
  echo "scheduler wall_s max_rss_kb"
  for s in fifo backfill; do
    /usr/bin/time -f "$s %e %M" "$B" compare --gpus 64 --trace "$t" --scheduler "$s" --json 2>&1 >/dev/null | tail -1
  done
} >"$OUT/cli.txt"
python3 "$REPO/bench/sim_report.py" --out "$OUT"
