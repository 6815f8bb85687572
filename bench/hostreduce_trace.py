#!/usr/bin/env python3
"""Where a host-path call's time goes, from rank 0's pipeline timeline (FLEXMIG_HOSTREDUCE_TRACE,
hostreduce/src/trace.rs):

  hostreduce_trace.py [--source NAME] TIMELINE [...]   one JSON line (kind "timeline") per call
                                                       size and timeline

Per call, on one clock: the first copy down to land (any rank) to the last copy up to land;
before it, the gap from the previous call's last copy up (any rank) to this call's first copy
down (any rank): the caller's stream handing over (join and fork events, the first copy), or
negative where one rank starts a call before another has finished the last; inside it, the fill (first chunk: first copy down to
its reduce done), the drain (last chunk: reduce done to its last copy up), and per chunk the
spread of the ranks' copies down, the CPU reduce after the last copy down, and the copies up after
the reduce. Medians over the calls of each size (the first call of each size left out: it waits
for the caller's set-up of that size).
"""
import argparse
import json
import os
import statistics
import sys


def load(path):
    calls, ev = [], {}
    for line in open(path):
        f = line.split()
        if f[0] == "geometry":
            geometry = tuple(int(x) for x in f[1:])
        elif f[0] == "call":
            # call <ns> <first round> [<rounds>] <bytes> (timelines before the round count: no rounds)
            calls.append((int(f[2]), int(f[3]) if len(f) == 5 else None, int(f[-1])))
        elif f[0] == "dropped":
            print(f"{path}: {f[1]} changes past the timeline's cap were not kept", file=sys.stderr)
        else:
            t, what, slot, rank, value = int(f[0]), f[1], int(f[2]), int(f[3]), int(f[4])
            # value = round + 1
            ev.setdefault((what, value - 1), {})[rank] = t
    return geometry, calls, ev


def summarize(path, source):
    (nranks, depth, slot), calls, ev = load(path)
    rows = {}
    prev_end = None
    for i, (first, rounds, size) in enumerate(calls):
        last = first + rounds - 1 if rounds is not None else calls[i + 1][0] - 1 if i + 1 < len(calls) else None
        if last is None or last < first:
            break
        rounds = range(first, last + 1)
        try:
            arrived = [ev[("A", r)] for r in rounds]
            reduced = [ev[("R", r)][0] for r in rounds]
            consumed = [ev[("C", r)] for r in rounds]
        except KeyError:
            prev_end = None
            continue
        if any(len(a) < nranks for a in arrived) or any(len(c) < nranks for c in consumed):
            prev_end = None
            continue
        start, end = min(arrived[0].values()), max(consumed[-1].values())
        row = {
            "call_us": (end - start) / 1e3,
            "gap_us": (start - prev_end) / 1e3 if prev_end is not None else None,
            "fill_us": (reduced[0] - start) / 1e3,
            "drain_us": (end - reduced[-1]) / 1e3,
            "down_spread_us": statistics.median((max(a.values()) - min(a.values())) / 1e3 for a in arrived),
            "reduce_us": statistics.median((r - max(a.values())) / 1e3 for a, r in zip(arrived, reduced)),
            "up_us": statistics.median((max(c.values()) - r) / 1e3 for c, r in zip(consumed, reduced)),
            "chunk_interval_us": (max(arrived[-1].values()) - max(arrived[0].values())) / 1e3 / max(1, len(arrived) - 1),
        }
        prev_end = end
        rows.setdefault(size, []).append((len(rounds), row))
    for size, rs in sorted(rows.items()):
        rs = rs[1:] or rs
        out = {"kind": "timeline", "source": source, "timeline": os.path.basename(path), "k": nranks, "bytes": size, "chunks": rs[0][0], "calls": len(rs)}
        for key in rs[0][1]:
            vals = [r[key] for _, r in rs if r[key] is not None]
            out[key] = round(statistics.median(vals), 1) if vals else None
        out["algbw_GBps"] = round(size / (out["call_us"] * 1e3), 2)
        print(json.dumps(out))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="", help="what the timelines are of (e.g. allreduce, ddp)")
    ap.add_argument("timelines", nargs="+")
    a = ap.parse_args()
    for p in a.timelines:
        summarize(p, a.source)
