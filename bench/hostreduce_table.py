#!/usr/bin/env python3
"""Builds the host-reduction selection table (hostreduce/select.json, read by
FLEXMIG_HOSTREDUCE=auto) from measured results of bench/hostreduce.sh.

  hostreduce_table.py --host RUN.jsonl [...] [--beside RUN.jsonl [...]]
                      [--min-speedup 1.10] [--floor 0.95] [--out FILE]

--host: runs (launches; best each from a machine session of its own) whose "hostreduce"/"default"
records were made with the library's current default settings. In each run a point's host rate is set against
NCCL's rate of the same run (side by side in one launch: the same machine, link and load), the
worst host and best NCCL record of the run where it has several; the point keeps the run where
the host path fared worst against NCCL. --beside: runs whose kind "overlap" records (the same
all-reduces beside compute) count, likewise the run where the host path fared worst (its slowest
host and fastest NCCL record). A point is only written where a run measured host and NCCL alone
and the host path's bytes were right in every record. The library takes the host path only for
sizes inside runs of winning points (hostreduce/src/select.rs): host >= min_speedup x NCCL
alone, or beside compute host that much faster and alone at least floor x NCCL, so a noisy win
needs the margin to count and an all-reduce with nothing beside it keeps floor of NCCL's rate.
hostreduce/tests/table.rs (cargo test) rebuilds every point of the committed table from the
committed results it names and fails if one differs.
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
    return (d.get("variant") or "default") == "default"


def build(host_runs, beside_runs, min_speedup, floor, machine):
    wrong = set()
    # key -> (host / NCCL, host, NCCL) of the run where the host path fared worst
    alone = {}
    for path in host_runs:
        host, nccl = {}, {}
        for d in records([path], "allreduce"):
            if not default(d):
                continue
            if d["impl"] == "hostreduce":
                if not d["correct"]:
                    wrong.add(key(d))
                host[key(d)] = min(host.get(key(d), float("inf")), d["busbw_equiv_GBps"])
            elif d["impl"] == "nccl" and d["correct"]:
                nccl[key(d)] = max(nccl.get(key(d), 0.0), d["busbw_equiv_GBps"])
        for kk in host:
            if kk in nccl and nccl[kk] > 0:
                r = host[kk] / nccl[kk]
                if kk not in alone or r < alone[kk][0]:
                    alone[kk] = (r, host[kk], nccl[kk])
    # key -> (NCCL's time / the host path's, host s, NCCL s) of the run where the host path fared worst
    beside = {}
    for path in beside_runs:
        b = {}
        for d in records([path], "overlap"):
            if d["impl"] not in ("hostreduce", "nccl") or not default(d):
                continue
            e = b.setdefault(key(d), {})
            worst = max if d["impl"] == "hostreduce" else min
            e[d["impl"]] = worst(e.get(d["impl"], d["both_s"]), d["both_s"])
        for kk, e in b.items():
            if len(e) == 2 and e["hostreduce"] > 0:
                r = e["nccl"] / e["hostreduce"]
                if kk not in beside or r < beside[kk][0]:
                    beside[kk] = (r, e["hostreduce"], e["nccl"])
    points = []
    for kk in sorted(alone):
        if kk in wrong:
            continue
        k, t, b = kk
        _, h, n = alone[kk]
        p = {"k": k, "dtype": t, "bytes": b, "hostreduce_busbw_gbps": round(h, 3), "nccl_busbw_gbps": round(n, 3)}
        if kk in beside:
            p["beside_compute"] = {"hostreduce_s": round(beside[kk][1], 6), "nccl_s": round(beside[kk][2], 6)}
        points.append(p)
    source = "bench/hostreduce_table.py --host " + " ".join(os.path.basename(p) for p in host_runs)
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
    ap.add_argument("--beside", nargs="+", default=[])
    ap.add_argument("--min-speedup", type=float, default=1.10)
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    t = build(a.host, a.beside, a.min_speedup, a.floor, machine_of(a.host))
    text = json.dumps(t, indent=1) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
