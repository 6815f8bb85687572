#!/usr/bin/env python3
"""The simulator's speed tables (BENCHMARKS.md, "Simulator") from the raw output of
bench/sim_bench.sh in bench/results/simulator/: seconds per simulation by jobs and GPUs, per
scheduler and mode, and how they grow.

  python3 bench/sim_report.py [--out bench/results/simulator]      # writes report.md there
"""
import argparse
import os
import re

MODES = {"FM": "Flex-MIG", "DM": "Dynamic-MIG", "SM": "Static-MIG"}


def bench_rows(path):
    """(jobs, gpus, mode) -> seconds, from `flexmig-sim bench` markdown."""
    out = {}
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 4 and c[0].isdigit():
            out[(int(c[0]), int(c[1]), c[2])] = float(c[3])
    return out


def stamp(path):
    first = open(path).readline()
    return first[2:].strip() if first.startswith("# ") else ""


def growth(t, a, b):
    return f"{t[b] / t[a]:.1f}x" if t.get(a) and t.get(b) else "-"


def report(d):
    out = ["# Simulator speed", "", f"Raw output of `{stamp(os.path.join(d, 'bench-fifo.md'))}`; seconds per simulation "
           "(one mode, trace generation excluded), one run each; backfilling examines 14 waiting jobs per pass.", ""]
    out += ["100,000 jobs on 64 GPUs through the CLI (trace from CSV, every mode):", "", "| scheduler | wall time | max RSS |", "|---|---|---|"]
    for line in open(os.path.join(d, "cli.txt")):
        m = re.match(r"(fifo|backfill) ([\d.]+) (\d+)$", line.strip())
        if m:
            out.append(f"| {m.group(1)} | {float(m.group(2)):.2f} s | {int(m.group(3)) // 1000} MB |")
    out.append("")
    for sched, title in (("fifo", "FIFO"), ("backfill", "Backfilling")):
        t = bench_rows(os.path.join(d, f"bench-{sched}.md"))
        jobs = sorted({k[0] for k in t})
        gpus = sorted({k[1] for k in t})
        for mode in ("FM", "DM"):
            out += [f"{title}, {MODES[mode]}:", "", "| jobs \\ GPUs | " + " | ".join(str(g) for g in gpus) + " |", "|---|" + "---|" * len(gpus)]
            for j in jobs:
                out.append(f"| {j:,} | " + " | ".join(f"{t[(j, g, mode)]:.3f}" if (j, g, mode) in t else "" for g in gpus) + " |")
            out.append("")
            big, small = max(jobs), min(gpus)
            sec = {g: t.get((big, g, mode)) for g in gpus}
            per = {j: t.get((j, 64, mode)) for j in jobs}
            out.append(f"{title}, {MODES[mode]}: {small} -> {max(gpus)} GPUs at {big:,} jobs "
                       f"{growth(sec, small, max(gpus))}; 10x the jobs at 64 GPUs: "
                       + ", ".join(f"{a:,} -> {b:,} {growth(per, a, b)}" for a, b in zip(jobs, jobs[1:]) if a >= 10000) + ".")
            out.append("")
    inf = bench_rows(os.path.join(d, "bench-inference.md"))
    if inf:
        out.append("Inference mix (the only one Static-MIG admits), backfilling: " + ", ".join(
            f"{MODES[m]} {s:.3f} s" for (j, g, m), s in sorted(inf.items(), key=lambda kv: "SM FM DM".index(kv[0][2]))) + f" ({next(iter(inf))[0]:,} jobs on {next(iter(inf))[1]} GPUs).")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "simulator"))
    a = ap.parse_args()
    with open(os.path.join(a.out, "report.md"), "w") as fh:
        fh.write(report(a.out))


if __name__ == "__main__":
    main()
