#!/usr/bin/env python3
"""Builds the host-reduction selection table (hostreduce/select.json, read by
FLEXMIG_HOSTREDUCE=auto) from measured results of bench/hostreduce.sh.

  hostreduce_table.py --host RUN.jsonl [...] --nccl RUN.jsonl [...] [--min-speedup 1.10] [--out FILE]

--host: runs whose "hostreduce"/"default" records were made with the library's current default
settings (the points' host rate is the WORST of them); --nccl: runs whose "nccl" records count
(the points' NCCL rate is the BEST of them). A point is only written where both were measured and
the host path's bytes were right in every record. The library then takes the host path only for
sizes inside runs of points where host >= min_speedup x NCCL (hostreduce/src/select.rs), so a
noisy win needs the margin to count. hostreduce/tests/table.rs (cargo test) rebuilds every point
of the committed table from the committed results it names and fails if one differs.
"""
import argparse
import json
import os
import sys


def records(paths):
    for p in paths:
        with open(p) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    d = json.loads(line)
                    if d.get("kind") == "allreduce" and "bytes" in d:
                        yield os.path.basename(p), d


def build(host_runs, nccl_runs, min_speedup, machine):
    host, nccl, wrong = {}, {}, set()
    for _, d in records(host_runs):
        if d["impl"] != "hostreduce" or d.get("variant", "default") != "default":
            continue
        key = (d["k"], d["dtype"], d["bytes"])
        if not d["correct"]:
            wrong.add(key)
        host[key] = min(host.get(key, float("inf")), d["busbw_equiv_GBps"])
    for _, d in records(nccl_runs):
        if d["impl"] != "nccl" or d.get("variant", "default") != "default" or not d["correct"]:
            continue
        key = (d["k"], d["dtype"], d["bytes"])
        nccl[key] = max(nccl.get(key, 0.0), d["busbw_equiv_GBps"])
    points = [
        {"k": k, "dtype": t, "bytes": b, "hostreduce_busbw_gbps": round(host[(k, t, b)], 3), "nccl_busbw_gbps": round(nccl[(k, t, b)], 3)}
        for (k, t, b) in sorted(host)
        if (k, t, b) in nccl and (k, t, b) not in wrong
    ]
    return {
        "version": 1,
        "source": "bench/hostreduce_table.py --host " + " ".join(os.path.basename(p) for p in host_runs) + " --nccl " + " ".join(os.path.basename(p) for p in nccl_runs)
        + f" --min-speedup {min_speedup}",
        "machine": machine,
        "min_speedup": min_speedup,
        "points": points,
    }


def machine_of(paths):
    for p in paths:
        with open(p) as fh:
            for line in fh:
                d = json.loads(line)
                if d.get("kind") == "allreduce" and d.get("machine"):
                    return f"{d['machine']}, MPS {d.get('mps')}"
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", nargs="+", required=True)
    ap.add_argument("--nccl", nargs="+", required=True)
    ap.add_argument("--min-speedup", type=float, default=1.10)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    t = build(a.host, a.nccl, a.min_speedup, machine_of(a.host))
    text = json.dumps(t, indent=1) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
