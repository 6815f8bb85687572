#!/usr/bin/env python3
"""Builds the host-reduction selection table (hostreduce/select.json, read by
FLEXMIG_HOSTREDUCE=auto) from measured results of bench/hostreduce.sh.

  hostreduce_table.py --host RUN.jsonl [...] --nccl RUN.jsonl [...] [--beside RUN.jsonl [...]]
                      [--min-speedup 1.10] [--floor 0.95] [--out FILE]

--host: runs whose "hostreduce"/"default" records were made with the library's current default
settings (the points' host rate is the WORST of them); --nccl: runs whose "nccl" records count
(the points' NCCL rate is the BEST of them); --beside: runs whose kind "overlap" records (the
same all-reduces beside compute) count, host the slowest and NCCL the fastest of them. A point is
only written where host and NCCL were both measured alone and the host path's bytes were right in
every record. The library takes the host path only for sizes inside runs of winning points
(hostreduce/src/select.rs): host >= min_speedup x NCCL alone, or beside compute host that much
faster and alone at least floor x NCCL, so a noisy win needs the margin to count and an
all-reduce with nothing beside it keeps floor of NCCL's rate. hostreduce/tests/table.rs (cargo
test) rebuilds every point of the committed table from the committed results it names and fails
if one differs.
"""
import argparse
import json
import os
import sys

VERSION = 2


def records(paths, kind):
    for p in paths:
        with open(p) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    d = json.loads(line)
                    if d.get("kind") == kind and "bytes" in d:
                        yield d


def key(d):
    return (d["k"], d["dtype"], d["bytes"])


def default(d):
    return d.get("variant", "default") == "default"


def build(host_runs, nccl_runs, beside_runs, min_speedup, floor, machine):
    host, nccl, wrong = {}, {}, set()
    for d in records(host_runs, "allreduce"):
        if d["impl"] != "hostreduce" or not default(d):
            continue
        if not d["correct"]:
            wrong.add(key(d))
        host[key(d)] = min(host.get(key(d), float("inf")), d["busbw_equiv_GBps"])
    for d in records(nccl_runs, "allreduce"):
        if d["impl"] != "nccl" or not default(d) or not d["correct"]:
            continue
        nccl[key(d)] = max(nccl.get(key(d), 0.0), d["busbw_equiv_GBps"])
    beside = {}
    for d in records(beside_runs, "overlap"):
        if d["impl"] not in ("hostreduce", "nccl") or not default(d):
            continue
        b = beside.setdefault(key(d), {})
        worst = max if d["impl"] == "hostreduce" else min
        name = d["impl"] + "_s"
        b[name] = round(worst(b.get(name, d["both_s"]), d["both_s"]), 6)
    points = []
    for kk in sorted(host):
        if kk not in nccl or kk in wrong:
            continue
        k, t, b = kk
        p = {"k": k, "dtype": t, "bytes": b, "hostreduce_busbw_gbps": round(host[kk], 3), "nccl_busbw_gbps": round(nccl[kk], 3)}
        if len(beside.get(kk, {})) == 2:
            p["beside_compute"] = {"hostreduce_s": beside[kk]["hostreduce_s"], "nccl_s": beside[kk]["nccl_s"]}
        points.append(p)
    source = "bench/hostreduce_table.py --host " + " ".join(os.path.basename(p) for p in host_runs) + " --nccl " + " ".join(os.path.basename(p) for p in nccl_runs)
    if beside_runs:
        source += " --beside " + " ".join(os.path.basename(p) for p in beside_runs)
    source += f" --min-speedup {min_speedup} --floor {floor}"
    return {"version": VERSION, "source": source, "machine": machine, "min_speedup": min_speedup, "floor": floor, "points": points}


def machine_of(paths):
    for d in records(paths, "allreduce"):
        if d.get("machine"):
            return f"{d['machine']}, MPS {d.get('mps')}"
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", nargs="+", required=True)
    ap.add_argument("--nccl", nargs="+", required=True)
    ap.add_argument("--beside", nargs="+", default=[])
    ap.add_argument("--min-speedup", type=float, default=1.10)
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    t = build(a.host, a.nccl, a.beside, a.min_speedup, a.floor, machine_of(a.host))
    text = json.dumps(t, indent=1) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
