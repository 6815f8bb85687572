#!/usr/bin/env python3
"""Markdown tables of the host-reduction results (bench/hostreduce.sh), for BENCHMARKS.md.

  cd bench/results/hostreduce && python3 ../../hostreduce_report.py [RUN.jsonl ...]   (default: RUNS)
  cd bench/results/hostreduce && python3 ../../hostreduce_report.py --plot RUN.jsonl    (needs matplotlib)

Per run: the copy bound measured in it; all_reduce busbw-equivalent (algbw x 2(k-1)/k) of NCCL SHM,
the host path and auto by k and size (default settings only), the host path at 256 MiB against its
bound 2(k-1)/k^2 x L (L = each direction of the copy engines while both are busy, measured in the
same run, and the one-way rate as the issue states it), variants, and DDP steps.
"""
import json
import os
import sys
from collections import defaultdict

MIB = 1 << 20


def load(path):
    with open(path) as fh:
        return [json.loads(l) for l in fh if l.strip()]


def fmt(v):
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def report(path):
    rows = load(path)
    run = os.path.basename(path).split("-")[0]
    out = [f"### {run} ({os.path.basename(path)})", ""]
    copy = next((r["copy"]["pinned_copy_GBs"] for r in rows if r.get("kind") == "copy"), None)
    machine = next((r["machine"] for r in rows if r.get("kind") == "machine"), "?")
    cpus = next((r.get("cpus") for r in rows if r.get("kind") == "machine"), "?")
    if copy:
        both = copy["bidirectional_total"] / 2
        out.append(f"Machine: {machine}, {cpus} CPUs; MPS 14% per rank. Copy engines, 256 MiB pinned: H2D {copy['h2d']:.1f} GB/s, "
                   f"D2H {copy['d2h']:.1f} GB/s, both at once {copy['bidirectional_total']:.1f} GB/s in total ({both:.1f} each way).")
        out.append("")
    ar = [r for r in rows if r.get("kind") == "allreduce" and "bytes" in r]
    if ar:
        out.append(allreduce_tables(ar, copy))
    ov = [r for r in rows if r.get("kind") == "overlap"]
    if ov:
        out.append(overlap_table(ov))
    var = [r for r in ar if r["variant"] != "default"]
    if var:
        out.append(variants_table(ar, var))
    ddp = [r for r in rows if r.get("kind") == "ddp"]
    plain = [r for r in ddp if not r.get("exchange", "").startswith("comm-hook")]
    if plain:
        out.append("DDP steps (bench/ddp_step.py, 2 NCCL channels as the plugin exports; DDP's own exchange, "
                   "FLEXMIG_HOSTREDUCE per path; single: one process with k times the SM share and the batch; comm = 1 - no_sync step / step):")
        out.append("")
        out.append("| model | k | path | samples/s | / single | step ms | comm | gradients equal |")
        out.append("|---|---|---|---|---|---|---|---|")
        single = {(r["model"], r["k"]): r["samples_per_s"] for r in plain if r["impl"] == "single" and r.get("samples_per_s")}
        for r in sorted(plain, key=lambda r: (r["model"], r["k"], r["impl"])):
            if r.get("samples_per_s") is None:
                out.append(f"| {r['model']} | {r['k']} | {r['impl']} | failed: {r.get('error', '')[:80]} | | | | |")
                continue
            checked = "-" if r["impl"] == "single" else ("yes" if r.get("grads_ok") else "NO")
            s1 = single.get((r["model"], r["k"]))
            ratio = f"{r['samples_per_s'] / s1:.2f}x" if s1 and r["impl"] != "single" else ""
            out.append(f"| {r['model']} | {r['k']} | {r['impl']} | {r['samples_per_s']:.0f} | {ratio} | {r['step_s'] * 1e3:.1f} | {r['comm_share'] * 100:.0f}% | {checked} |")
        out.append("")
    hooked = [r for r in ddp if r.get("exchange", "").startswith("comm-hook")]
    if hooked:
        out.append(ddp_compare(hooked, plain))
        if any(r.get("groups") == "split" for r in hooked) or run in SPLIT_GROUPS:
            out.append("Made with `DDP_DEVICE_ID=1`: the compared groups were split (`ncclCommSplit`) from a default group "
                       "made with `device_id`; rank 0's path lines for them are in the run's console file.")
            out.append("")
    tl = [r for r in rows if r.get("kind") == "timeline"]
    if tl:
        out.append(timelines(tl))
    ab = [r for r in rows if r.get("kind") == "library-ab"]
    if ab:
        out.append(library_ab(ab))
    fl = [r for r in rows if r.get("kind") == "fault"]
    if fl:
        out.append(faults(fl))
    return "\n".join(out)


def allreduce_tables(ar, copy):
    """all_reduce by k, type and size against NCCL, and at 256 MiB against the bounds."""
    out = []
    bad = [r for r in ar if not r["correct"]]
    out.append(f"{len(ar)} all_reduce measurements, {len(ar) - len(bad)} byte-checked equal to NCCL's result" + (f", {len(bad)} WRONG" if bad else "") + ".")
    out.append("")
    t = defaultdict(dict)
    for r in ar:
        if r["variant"] == "default":
            t[(r["k"], r["dtype"])].setdefault(r["bytes"], {})[r["impl"]] = r["busbw_equiv_GBps"]
    impls = [i for i in ("nccl", "nccl-ce", "hostreduce", "auto") if any(i in v for d in t.values() for v in d.values())]
    sizes = sorted({b for d in t.values() for b in d})
    out.append("busbw-equivalent GB/s by size (host/NCCL in brackets):")
    out.append("")
    out.append("| k | path | " + " | ".join(f"{s // MIB}M" for s in sizes) + " |")
    out.append("|---|---|" + "---|" * len(sizes))
    for (k, dtype) in sorted(t):
        d = t[(k, dtype)]
        for impl in impls:
            cells = []
            for s in sizes:
                v = d.get(s, {}).get(impl)
                n = d.get(s, {}).get("nccl")
                if v is None:
                    cells.append("")
                elif impl in ("hostreduce", "auto") and n:
                    cells.append(f"{fmt(v)} ({v / n:.2f}x)")
                else:
                    cells.append(fmt(v))
            if any(cells):
                out.append(f"| {k} | {impl} {dtype} | " + " | ".join(cells) + " |")
    out.append("")
    autos = sorted((d[s]["auto"] / d[s]["nccl"], k, dtype, s) for (k, dtype), d in t.items() for s in d if "auto" in d[s] and "nccl" in d[s])
    if autos:
        lo, k, dtype, s = autos[0]
        below = sum(1 for a in autos if a[0] < 0.95)
        out.append(f"auto against NCCL at all {len(autos)} points: lowest {lo:.2f}x (k={k}, {dtype}, {s // MIB}M), "
                   f"median {autos[len(autos) // 2][0]:.2f}x, {below} below 0.95x.")
        out.append("")
    big = 256 * MIB
    if copy and any("hostreduce" in d.get(big, {}) and "nccl" in d.get(big, {}) for d in t.values()):
        out.append("At 256 MiB, against the bounds (ring: L/k; host path: 2(k-1)/k^2 x L):")
        out.append("")
        out.append("| k | type | NCCL SHM | host path | host / NCCL | host bound, L both-ways | % | host bound, L one-way | % |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for (k, dtype) in sorted(t):
            d = t[(k, dtype)].get(big, {})
            if "hostreduce" not in d or "nccl" not in d:
                continue
            h, n = d["hostreduce"], d["nccl"]
            lb, l1 = copy["bidirectional_total"] / 2, min(copy["h2d"], copy["d2h"])
            bb, b1 = 2 * (k - 1) / k / k * lb, 2 * (k - 1) / k / k * l1
            out.append(f"| {k} | {dtype} | {fmt(n)} | {fmt(h)} | {h / n:.2f}x | {fmt(bb)} | {h / bb * 100:.0f}% | {fmt(b1)} | {h / b1 * 100:.0f}% |")
        out.append("")
    return "\n".join(out)


def variants_table(ar, var):
    """Host-path settings side by side with the run's defaults and NCCL, in the same launches."""
    vs = sorted({r["variant"] for r in var})
    points = {(r["k"], r["dtype"], r["bytes"]) for r in var}
    by = defaultdict(dict)
    for r in ar:
        if (r["k"], r["dtype"], r["bytes"]) in points and r["impl"] in ("hostreduce", "nccl"):
            by[(r["k"], r["dtype"], r["bytes"])]["nccl" if r["impl"] == "nccl" else r["variant"]] = r["busbw_equiv_GBps"]
    out = ["Host-path settings side by side with the library's defaults of the run and NCCL, in the same launches "
           "(busbw-equivalent GB/s; in brackets the ratio to NCCL):", ""]
    out.append("| k | type | size | nccl | default | " + " | ".join(f"`{v}`" for v in vs) + " |")
    out.append("|---|---|---|---|---|" + "---|" * len(vs))
    for (k, t, b) in sorted(by):
        d = by[(k, t, b)]
        n = d.get("nccl")

        def cell(v):
            return "" if v not in d else fmt(d[v]) + (f" ({d[v] / n:.2f}x)" if n else "")
        out.append(f"| {k} | {t} | {b // MIB}M | {fmt(n) if n else ''} | {cell('default')} | " + " | ".join(cell(v) for v in vs) + " |")
    out.append("")
    return "\n".join(out)


def across_sessions(paths):
    """The host path and auto against NCCL at 256 MiB, fp32, per machine session (runs of one
    library and defaults, each its own machine start): how far a rate carries between sessions."""
    out = ["The same library and defaults in separate machine sessions: fp32, 256 MiB, the host path's "
           "busbw-equivalent GB/s and in brackets its ratio to NCCL in the same launch; auto's ratio (run8, run9: decided by the table committed before them; run10 and run13: by the one made from run8 and run9; run14: by the one from run8 to run11 and run13):", ""]
    out.append("| k | " + " | ".join(f"{p.split('-')[0]} host | {p.split('-')[0]} auto" for p in paths) + " |")
    out.append("|---|" + "---|---|" * len(paths))
    by = defaultdict(dict)
    for p in paths:
        for r in load(p):
            if r.get("kind") == "allreduce" and r.get("bytes") == 256 * MIB and r["dtype"] == "f32" and r["variant"] == "default":
                by[r["k"]][(p, r["impl"])] = r["busbw_equiv_GBps"]
    for k in sorted(by):
        d = by[k]
        cells = []
        for p in paths:
            n, h, a = d.get((p, "nccl")), d.get((p, "hostreduce")), d.get((p, "auto"))
            cells.append(f"{fmt(h)} ({h / n:.2f}x)" if n and h else "")
            cells.append(f"{a / n:.2f}x" if n and a else "")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def overlap_table(ov):
    """All-reduces beside compute: time until both are done, per path, against compute alone."""
    by = defaultdict(dict)
    for r in ov:
        by[(r["k"], r["dtype"], r["bytes"])][r["impl"]] = r
    out = ["All-reduces beside compute (each rank: matrix products on a stream of its own, as long as NCCL's "
           "all-reduces alone; time until both are done, ms; in brackets NCCL's time over this path's):", ""]
    out.append("| k | type | size x calls | compute alone | nccl alone | nccl both | hostreduce alone | hostreduce both | auto both |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for (k, dtype, size) in sorted(by):
        d = by[(k, dtype, size)]
        n = d.get("nccl")
        if not n:
            continue

        def both(i):
            return f"{d[i]['both_s'] * 1e3:.1f} ({n['both_s'] / d[i]['both_s']:.2f}x)" if i in d else ""
        h = d.get("hostreduce")
        h_alone = f"{h['allreduce_alone_s'] * 1e3:.1f}" if h else ""
        out.append(f"| {k} | {dtype} | {size // MIB}M x {n['calls']} | {n['compute_s'] * 1e3:.1f} | {n['allreduce_alone_s'] * 1e3:.1f} | "
                   f"{n['both_s'] * 1e3:.1f} | {h_alone} | {both('hostreduce')} | {both('auto')} |")
    out.append("")
    return "\n".join(out)


def timelines(tl):
    """Rank 0's pipeline timelines (FLEXMIG_HOSTREDUCE_TRACE, bench/hostreduce_trace.py)."""
    out = ["Where a call's time goes, from rank 0's timeline of the pipeline counters (FLEXMIG_HOSTREDUCE_TRACE, "
           "bench/hostreduce_trace.py; medians over the calls of a size, microseconds): the call from the first copy down to "
           "land to the last copy up; fill: to the first chunk reduced; drain: from the last chunk reduced; per chunk the spread "
           "of the ranks' copies down, the reduce after the last one, the copies up after the reduce. The timeline's poller "
           "takes a CPU: rates a little below untraced runs'.", ""]
    out.append("| from | k | size | chunks | call | GB/s | fill | drain | copies down spread | reduce | copies up |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(tl, key=lambda r: (r["source"], r["k"], r["bytes"])):
        if r["bytes"] < MIB:
            continue
        out.append(f"| {r['source']} | {r['k']} | {r['bytes'] / MIB:.1f}M | {r['chunks']} | {r['call_us']:.0f} | {r['algbw_GBps']:.2f} | "
                   f"{r['fill_us']:.0f} | {r['drain_us']:.0f} | {r['down_spread_us']:.0f} | {r['reduce_us']:.0f} | {r['up_us']:.0f} |")
    out.append("")
    return "\n".join(out)


REFS = ("none", "noop", "nobuf", "tiny", "tiny-nobuf", "sync-nobuf")


def ddp_compare(hooked, plain):
    """The side-by-side DDP launches: samples/s of each exchange, and in brackets how far below the
    ceiling (none: no exchange) it is; single from the same run's one-process launch."""
    by = defaultdict(dict)
    for r in hooked:
        by[(r["model"], r["exchange"], r["k"])][r["impl"]] = r
    single = {(r["model"], r["k"]): r["samples_per_s"] for r in plain if r["impl"] == "single" and r.get("samples_per_s")}
    def order(i):
        base = i.removesuffix("-nobuf")
        return (i != base, base != "nccl", base != "hostreduce", base != "auto", base)
    names = sorted({i for d in by.values() for i in d if i not in REFS}, key=order)
    refs = [i for i in REFS if any(i in d for d in by.values())]
    out = ["DDP exchanges side by side (one launch per row, taking turns through a comm hook doing what DDP's default one does; "
           "none = no_sync, the ceiling; noop = the hook returns the bucket (DDP's bucketing, no exchange); tiny = one element "
           "all-reduced per bucket (ranks wait for each other, move nothing)"
           + ("; nobuf = noop with DDP's broadcast_buffers=False, and NAME-nobuf each exchange so" if "nobuf" in refs else "")
           + ("; sync-nobuf = nobuf with one element broadcast from rank 0 before each forward (the buffer broadcast's wait without its bytes)"
              if "sync-nobuf" in refs else "")
           + ("; noop, timed right after none with no untimed step between, broadcast in 9 of its 10 steps"
              if "nobuf" in refs and any("settle_steps" not in r for r in hooked) else "")
           + "); samples/s, in brackets the share below the ceiling:", ""]
    out.append("| model | k | bucket view | single | " + " | ".join(refs) + " | " + " | ".join(names) + " | gradients equal |")
    out.append("|---|---|---|---|" + "---|" * len(refs) + "---|" * len(names) + "---|")
    for (model, exchange, k) in sorted(by):
        d = by[(model, exchange, k)]
        ceiling = d["none"]["samples_per_s"]

        def cell(i):
            if i not in d:
                return ""
            v = d[i]["samples_per_s"]
            return f"{v:.0f}" if i == "none" else f"{v:.0f} ({(1 - v / ceiling) * 100:.1f}%)"
        ok = all(d[i].get("grads_ok") for i in names if i in d)
        s1 = single.get((model, k))
        out.append(f"| {model} | {k} | {'yes' if exchange.endswith('bucket-view') else 'no'} | {f'{s1:.0f}' if s1 else ''} | "
                   + " | ".join(cell(i) for i in refs) + " | " + " | ".join(cell(i) for i in names) + f" | {'yes' if ok else 'NO'} |")
    out.append("")
    out.append("The same launches: what moving the gradients costs beyond `tiny` (NAME-nobuf: beyond `tiny-nobuf`, or where "
               "that was not run beyond `nobuf`, the ranks' waiting included; share of the ceiling), and each exchange's "
               "samples/s against one process with k times the SM share and the batch (single):")
    out.append("")

    def ref(i):
        """What an exchange's cost is counted beyond: the ranks' waiting in the same buffer setting
        (runs without tiny-nobuf: nobuf, which leaves the waiting in)."""
        if not i.endswith("-nobuf"):
            return "tiny"
        return "tiny-nobuf" if all("tiny-nobuf" in d for d in by.values() if i in d) else "nobuf"
    out.append("| model | k | bucket view | tiny beyond noop | " + " | ".join(f"{i} beyond {ref(i)}" for i in names) + " | " + " | ".join(f"{i} / single" for i in names) + " |")
    out.append("|---|---|---|---|" + "---|" * (2 * len(names)))
    for (model, exchange, k) in sorted(by):
        d = by[(model, exchange, k)]
        ceiling = d["none"]["samples_per_s"]
        s1 = single.get((model, k))
        beyond = [f"{(d[ref(i)]['samples_per_s'] - d[i]['samples_per_s']) / ceiling * 100:.1f}%" if i in d else "" for i in names]
        ratio = [f"{d[i]['samples_per_s'] / s1:.2f}x" if i in d and s1 else "" for i in names]
        wait = (1 - d["tiny"]["samples_per_s"] / ceiling) - (1 - d["noop"]["samples_per_s"] / ceiling)
        out.append(f"| {model} | {k} | {'yes' if exchange.endswith('bucket-view') else 'no'} | {wait * 100:.1f}% | " + " | ".join(beyond) + " | " + " | ".join(ratio) + " |")
    out.append("")
    return "\n".join(out)


def library_ab(ab):
    """Two builds of the library taking turns in one machine session (kind "library-ab")."""
    by = defaultdict(dict)
    for r in ab:
        by[(r["k"], r["dtype"], r["bytes"])][(r["library"], r["round"], r["impl"])] = r["busbw_equiv_GBps"]
    libs = sorted({(r["library"], r["round"]) for r in ab}, key=lambda x: (x[1], x[0] != "run4"))
    out = ["The library that made run4 (built from its commit) and the current one, taking turns in one machine session "
           "(busbw-equivalent GB/s, host path; in brackets the ratio to NCCL in the same launch):", ""]
    out.append("| k | type | size | " + " | ".join(f"{lib} library, round {n}" for lib, n in libs) + " |")
    out.append("|---|---|---|" + "---|" * len(libs))
    for (k, dtype, size) in sorted(by):
        d = by[(k, dtype, size)]
        cells = [f"{fmt(d[(lib, n, 'hostreduce')])} ({d[(lib, n, 'hostreduce')] / d[(lib, n, 'nccl')]:.2f}x)" if (lib, n, "hostreduce") in d else "" for lib, n in libs]
        out.append(f"| {k} | {dtype} | {size // MIB}M | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def faults(rows):
    """bench/hostreduce_faults.py's cases (kind "fault")."""
    out = ["Where things go wrong (bench/hostreduce_faults.py, PyTorch's stock NCCL behind the library):", ""]
    out.append("| case | as expected | exit codes | errors raised after the death (s) | all ended after it (s) | host / NCCL calls per rank | shared memory left |")
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        died = ", ".join(f"{e:.2f}" for e in r.get("error_raised_s_after_death", []))
        ended = r.get("all_ended_s_after_death")
        counts = ", ".join(f"{h}/{n}" for h, n in r.get("counts", []))
        out.append(f"| {r['case']} | {'yes' if r['ok'] else 'NO'} | {', '.join(str(c) for c in r['exit'])} | {died} | "
                   f"{'' if ended is None else f'{ended:.2f}'} | {counts} | {len(r.get('leftovers', []))} files |")
    out.append("")
    return "\n".join(out)


# The committed runs, in order (bench/results/hostreduce/); report.md is made of these, and
# bench/check.sh fails on a raw result there that is not one of them.
RUNS = ["run1-allreduce.jsonl", "run2-allreduce-ddp.jsonl", "run3-allreduce-auto-ddp.jsonl", "run4-allreduce-bf16-ddp.jsonl",
        "run5-allreduce-overlap-ddp.jsonl", "run6-faults-library-ab.jsonl", "run7-threads.jsonl", "run8-allreduce-ddp-buffers.jsonl",
        "run9-allreduce-faults.jsonl", "run10-auto-table.jsonl", "run11-lead.jsonl", "run12-ddp-split.jsonl", "run12-timelines.jsonl",
        "run13-session.jsonl", "run14-session.jsonl", "run15-lead-sync.jsonl"]
# Runs of the current library and defaults, each in its own machine session.
SESSIONS = ["run8-allreduce-ddp-buffers.jsonl", "run9-allreduce-faults.jsonl", "run10-auto-table.jsonl", "run13-session.jsonl",
            "run14-session.jsonl"]
# Runs whose DDP compare split its groups from a device-bound default group (their command set
# DDP_DEVICE_ID=1), made before the records said so ("groups": "split").
SPLIT_GROUPS = ("run12", "run13")


def plot(path, png):
    """fp32 busbw-equivalent against size per k: NCCL SHM, the host path and its bound
    2(k-1)/k^2 x L (L both-ways, measured in the run); and beside compute, NCCL's time over the
    host path's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = load(path)
    run = os.path.basename(path).split("-")[0]
    copy = next(r["copy"]["pinned_copy_GBs"] for r in rows if r.get("kind") == "copy")
    lb = copy["bidirectional_total"] / 2
    ar = [r for r in rows if r.get("kind") == "allreduce" and "bytes" in r and r["variant"] == "default" and r["dtype"] == "f32"]
    ks = sorted({r["k"] for r in ar})
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6))
    colors = dict(zip(ks, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for k in ks:
        for impl, style in (("nccl", "--"), ("hostreduce", "-")):
            pts = sorted((r["bytes"], r["busbw_equiv_GBps"]) for r in ar if r["k"] == k and r["impl"] == impl)
            ax.plot([b / MIB for b, _ in pts], [v for _, v in pts], style, marker="o", ms=3, color=colors[k],
                    label=f"{k} leaves, {'NCCL SHM' if impl == 'nccl' else 'host path'}")
        ax.axhline(2 * (k - 1) / k / k * lb, color=colors[k], ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("all_reduce size (MiB), fp32")
    ax.set_ylabel("busbw-equivalent GB/s (algbw x 2(k-1)/k)")
    ax.set_title(f"Alone ({run}); dotted: the host path's bound 2(k-1)/k² x {lb:.1f} GB/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ov = [r for r in rows if r.get("kind") == "overlap"]
    by = defaultdict(dict)
    for r in ov:
        by[(r["k"], r["bytes"])][r["impl"]] = r["both_s"]
    for k in sorted({k for k, _ in by}):
        pts = sorted((b, d["nccl"] / d["hostreduce"]) for (kk, b), d in by.items() if kk == k and "nccl" in d and "hostreduce" in d)
        bx.plot([b / MIB for b, _ in pts], [v for _, v in pts], marker="o", ms=3, color=colors.get(k), label=f"{k} leaves")
    bx.axhline(1, color="gray", lw=1)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("all_reduce size (MiB), fp32")
    bx.set_ylabel("NCCL's time / host path's (above 1: host path faster)")
    bx.set_title("Beside compute (matrix products on another stream)")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print("wrote", png)


def main():
    """With no files: the committed runs (RUNS), read from the current directory; --plot RUN: the
    plot of that run (hostreduce.png beside it)."""
    if sys.argv[1:2] == ["--plot"]:
        plot(sys.argv[2], os.path.join(os.path.dirname(sys.argv[2]) or ".", "hostreduce.png"))
        return
    if sys.argv[1:]:
        print("\n".join(report(p) for p in sys.argv[1:]))
        return
    print("\n".join([report(p) for p in RUNS] + ["### Between machine sessions", "", across_sessions(SESSIONS)]))


if __name__ == "__main__":
    main()
