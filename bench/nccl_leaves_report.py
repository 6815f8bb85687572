#!/usr/bin/env python3
"""Tables and plots from the GPU benchmarks' raw results (JSON lines): report.md and its plots.

  python3 bench/nccl_leaves_report.py --out bench/results/nccl

reads the committed raw results that MANIFEST below names, section by section, from
bench/results/nccl/ (--results DIR reads them from DIR). bench/check.sh runs exactly this, compares
the result with the committed report.md, and fails on a raw result there that no section reads.
For the results of a new run, name each section's files instead (then MANIFEST is not used):

  python3 bench/nccl_leaves_report.py $OUTDIR/nccl_leaves.jsonl $OUTDIR/ddp_step.jsonl \
      --pcie $OUTDIR/pcie_paths.jsonl --out $OUTDIR

The sections, in report order (the option that names a section's files):
  FILES          leaves of one GPU: bench/nccl_leaves.sh collectives and SHM settings,
                 bench/ddp_step.sh training steps under MPS
  --two-gpus     leaves packed on one GPU against spread over two (bench/nccl_two_gpus.sh, and
                 training steps with GPUS=1 and GPUS=2)
  --channels     the NCCL channel count side by side (collectives and DDP steps, one and two GPUs)
  --plain-steps  training steps time-sliced (bench/ddp_step.sh with MPS=0)
  --pcie         the link's capacity by path (bench/pcie_paths.sh)
  --ce           the copy-engine SHM settings side by side (collectives and DDP steps) set against
                 those paths; shown only with --pcie
  --pcie-loop    copy engines driven by several processes at once (bench/pcie_paths.sh PHASES=loop)
  --slicing      ring slicing (bench/nccl_slicing.sh): collectives and DDP steps

Writes report.md (the tables BENCHMARKS.md and bench/NOTES.md quote) and PNG plots (needs matplotlib:
`pip install matplotlib`). Every number comes from the JSON lines; nothing is typed in.
"""
import argparse
import json
import os
from collections import defaultdict

# The manifest: the raw result files (in bench/results/nccl/) each section of report.md reads,
# in report order; each key is a section below (@section) and, with - for _, the option that
# replaces its files (one_gpu: the positional FILES). Within a section the order counts: a later
# run of the same label replaces an earlier one, and the first machine line names the machine.
MANIFEST = {
    "one_gpu": ["run1-plain.jsonl", "run2-mps.jsonl", "run3-mps-tune.jsonl", "run4-ddp-mps.jsonl", "run5-ddp-tune.jsonl", "run10-mps-tune.jsonl"],
    "two_gpus": ["run6-two-gpus-copy.jsonl", "run6-two-gpus-mps.jsonl", "run7-two-gpus-plain.jsonl", "run11-two-gpus-ddp.jsonl"],
    "channels": ["run8-channels.jsonl", "run8-ddp-channels.jsonl", "run9-two-gpus-channels.jsonl", "run9-two-gpus-ddp-channels.jsonl"],
    "plain_steps": ["run12-ddp-plain.jsonl"],
    "pcie": ["run12-pcie-paths.jsonl"],
    "ce": [
        "run13-ce-tune.jsonl", "run13-ddp-ce.jsonl", "run14-ddp-ce-channels.jsonl", "run15-ce-both.jsonl", "run16-ce-both-check.jsonl",
        "run16-ddp-ce-both.jsonl", "run17-ce-both-ctx.jsonl", "run17-ddp-ce-both.jsonl", "run18-ce-ctx-buffers.jsonl", "run19-ce-ctx-buffers.jsonl",
        "run20-ce-ctx-repeat.jsonl", "run21-ce-proxy-control.jsonl", "run22-ce-direct.jsonl", "run23-ce-direct-channels.jsonl",
        "run24-ddp-ce-direct.jsonl", "run26-ce-direct-few-channels.jsonl", "run27-ce-direct-repeat.jsonl", "run28-ce-direct-2leaves.jsonl",
    ],
    "pcie_loop": ["run29-pcie-loop.jsonl"],
    "slicing": ["run31-slicing.jsonl", "run32-slicing-4x1.jsonl", "run33-slicing-buffers.jsonl", "run34-slicing-confirm.jsonl", "run35-ddp-slicing.jsonl"],
}
# Raw results in bench/results/nccl/ that no section reads, on purpose: runs BENCHMARKS.md or bench/NOTES.md cites
# in its prose but keeps out of the tables. bench/check.sh wants each of them cited there.
KEPT_OUT = {
    "run21-probe-driver-api.jsonl": "a library that only moved the proxy's copies to the CUDA driver API; it still hung (not kept)",
    "run25-ce-direct-streams.jsonl": "two copy streams per SHM connection: hung at 2 and 4 leaves; the patch keeps one",
    "run30-ce-2leaves-diag.jsonl": "2 leaves on copy engines: all_gather as slow as all_reduce, SM share and threads per CTA no help",
}
# Console transcripts in bench/results/nccl/: what a command printed, kept as a record, parsed by
# no section. Every *.console.txt (the console output of a bench/ run beside its .jsonl), and these
# captures of other commands. Everything else there except report.md and the plots is raw results.
TRANSCRIPTS = {
    "run6-topology.txt": "the two-GPU machine's topology: nvidia-smi topo -m, PCIe links, lscpu, NUMA nodes",
    "run8-nccl-mig-summary.txt": "tests/gpu/nccl-mig.sh: library builds and cases",
    "run36-graph-refusals.txt": "tests/gpu/nccl-mig.sh cases for the copy-engine refusals under CUDA graphs, with rank logs",
}

MIB = 1 << 20
SIZES_LABEL = {8192: "8K", 65536: "64K", 524288: "512K", 4 * MIB: "4M", 32 * MIB: "32M", 256 * MIB: "256M"}
SECTIONS = {}  # name: function(files, ctx, lines), registered by @section(name)
PLOTS = ("allreduce", "two_gpus", "ddp", "pcie", "slicing")  # ctx["plots"] keys, in drawing order


def section(name):
    """Registers a report section under its MANIFEST key."""
    def register(f):
        SECTIONS[name] = f
        return f
    return register


def load(paths):
    """The records of JSON lines files: collective runs, the last pinned-copy record, the machine
    lines and the DDP step records."""
    runs, copy, meta, ddp = [], None, [], []
    for p in paths:
        for line in open(p):
            d = json.loads(line)
            if "model" in d:
                d["_file"] = p
                ddp.append(d)
            elif "pinned_copy_GBs" in d:
                copy = d
            elif "machine" in d:
                meta.append(d)
            elif "label" in d:
                d.setdefault("gpus", 1)
                d["_file"] = os.path.basename(p).split(".")[0]
                runs.append(d)
    # Later runs of the same label win (a repeated run replaces an earlier one); settings runs
    # (tags) stay per file, each compared with the default of its own run.
    by_label = {}
    for r in runs:
        by_label[(r["label"], r["_file"]) if r.get("tag") else r["label"]] = r
    return list(by_label.values()), copy, meta, ddp


def tuned(runs, key):
    """The settings runs (tag `tune:SETTING`) grouped by key(run): {key: {SETTING: run}}."""
    out = defaultdict(dict)
    for r in runs:
        if r.get("tag", "").startswith("tune:"):
            out[key(r)][r["tag"][5:]] = r
    return out


def busbw(run, coll, size):
    for x in run["results"]:
        if x["coll"] == coll and x["bytes"] == size:
            return x["busbw_GBs"]
    return None


def span(vals, f="{:.2f}"):
    """The range of values as prose quotes it: "lo-hi", or the one value."""
    lo, hi = f.format(min(vals)), f.format(max(vals))
    return lo if lo == hi else f"{lo}-{hi}"


def pct_span(ratios):
    """Ratios as changes in percent: "+0.1% to +4.7%", "-3.8% to -3.5%"."""
    lo, hi = (f"{100 * (r - 1):+.1f}%" for r in (min(ratios), max(ratios)))
    return lo if lo == hi else f"{lo} to {hi}"


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else (f"{v:.2f}" if v >= 0.1 else f"{v:.3f}")


def main():
    ap = argparse.ArgumentParser(description="report.md and plots from the GPU benchmarks' JSON lines; with no result files, the committed ones of MANIFEST")
    ap.add_argument("one_gpu", nargs="*", metavar="FILES", help="leaves of one GPU: bench/nccl_leaves.sh and bench/ddp_step.sh results")
    ap.add_argument("--two-gpus", nargs="*", default=[])
    ap.add_argument("--channels", nargs="*", default=[])
    ap.add_argument("--plain-steps", nargs="*", default=[], help="bench/ddp_step.sh results with MPS=0 (time-sliced)")
    ap.add_argument("--pcie", nargs="*", default=[], help="bench/pcie_paths.sh results")
    ap.add_argument("--ce", nargs="*", default=[], help="copy-engine SHM settings: collectives and DDP steps (tags tune:)")
    ap.add_argument("--pcie-loop", nargs="*", default=[], help="bench/pcie_paths.sh PHASES=loop results (several processes at once)")
    ap.add_argument("--slicing", nargs="*", default=[], help="bench/nccl_slicing.sh results: collectives and DDP steps")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "nccl"),
                    help="where MANIFEST's files are, when no files are named (default: bench/results/nccl)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    a = ap.parse_args()
    assert set(SECTIONS) == set(MANIFEST), "every section has its MANIFEST entry"
    if any(getattr(a, name) for name in MANIFEST):
        if not a.one_gpu:
            ap.error("with result files named, the one-GPU FILES are needed too")
        inputs = {name: getattr(a, name) for name in MANIFEST}
    else:
        inputs = {name: [os.path.join(a.results, f) for f in files] for name, files in MANIFEST.items()}
    os.makedirs(a.out, exist_ok=True)
    ctx, lines = {"plots": {}}, []
    for name, files in inputs.items():
        if files or name == "one_gpu":
            SECTIONS[name](files, ctx, lines)
    open(os.path.join(a.out, "report.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    if a.no_plots:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: pip install matplotlib for the plots)")
        return
    for name in PLOTS:
        if name in ctx["plots"]:
            ctx["plots"][name](plt, a.out)


@section("one_gpu")
def one_gpu_section(files, ctx, lines):
    """Leaves of one GPU: the machine, the bandwidth against the PCIe bound, all sizes, the SHM
    settings and, with DDP results among the files, the training steps."""
    runs, copy_rec, meta, ddp = load(files)
    copy = copy_rec["pinned_copy_GBs"] if copy_rec else None
    limit = min(copy["h2d"], copy["d2h"]) if copy else None
    # The ring sends and receives at once: the copy rate each way with both directions busy.
    limit2 = copy["bidirectional_total"] / 2 if copy else None
    main_runs = {(r["variant"], r["mps"], r["ranks"]): r for r in runs if not r.get("tag") and r["gpus"] == 1}
    ctx["limit"] = limit
    bandwidth_table(meta, copy, main_runs, limit, limit2, lines)
    all_sizes_table(runs, main_runs, lines)
    ratios_lines(runs, main_runs, lines)
    settings_table(runs, lines)
    if ddp:
        ddp_table(ddp, lines)
        # For the channels section: the same steps in its own run (the noise between runs).
        ctx["steps"] = {(d["model"], d["ranks"]): d["samples_per_s"] for d in ddp
                        if not d.get("tag") and d["variant"] == "patched" and "samples_per_s" in d and (d["model"], d["ranks"]) not in ctx.get("steps", {})}
        ddp_settings_table(ddp, lines)
    ctx["plots"]["allreduce"] = lambda plt, out: plot_allreduce(plt, main_runs, limit, out)
    if ddp:
        ctx["plots"]["ddp"] = lambda plt, out: plot_ddp(plt, ddp, os.path.join(out, "ddp-step.png"))


def bandwidth_table(meta, copy, main_runs, limit, limit2, lines):
    m = meta[0] if meta else {}
    lines.append(f"Machine: {m.get('machine', '?')}, {m.get('cpus', '?')} CPUs, PyTorch {m.get('torch', '?')}; runs of {', '.join(sorted({x['date'][:10] for x in meta}))}.")
    if copy:
        lines.append(
            f"Pinned host<->device copy (256 MiB, same run): H2D {copy['h2d']:.1f} GB/s, D2H {copy['d2h']:.1f} GB/s, "
            f"both directions at once {copy['bidirectional_total']:.1f} GB/s in total."
        )
    lines.append("")
    lines.append("Bus bandwidth in GB/s at 256 MiB (nccl-tests definitions), and the share of the PCIe bound copy/k, with")
    lines.append("copy = one direction alone (the copy bound) and copy = each direction while both are busy (what a ring,")
    lines.append("which sends and receives at once, can get):")
    lines.append("")
    lines.append("| emulation | leaves k | bound copy/k | patched SHM all_reduce | % of bound | % of both-ways bound | NET workaround | patched / NET | stock 2.30.7 multi-rank (in-GPU P2P, not a MIG path) | patched all_gather | NET all_gather |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for mps in (False, True):
        for k in (2, 4, 7):
            p, n, s = (main_runs.get((v, mps, k)) for v in ("patched", "net", "multirank"))
            if not p:
                continue
            bound = limit / k if limit else None
            pa, na = busbw(p, "all_reduce", 256 * MIB), busbw(n, "all_reduce", 256 * MIB) if n else None
            sa = busbw(s, "all_reduce", 256 * MIB) if s else None
            if sa is not None:
                sa_txt = fmt(sa)
            elif s:
                sa_txt = "failed: " + ",".join(sorted({str(c) for c in s["exit"]})) + " (ranks aborted or hung)"
            else:
                sa_txt = "not run"
            lines.append(
                f"| {'MPS, ~1/7 SMs per rank' if mps else 'plain (time-sliced)'} | {k} | {fmt(bound)} | {fmt(pa)} | "
                f"{(100 * pa / bound):.0f}% | {(100 * pa / (limit2 / k)):.0f}% | {fmt(na)} | {(pa / na):.1f}x | {sa_txt} | "
                f"{fmt(busbw(p, 'all_gather', 256 * MIB))} | {fmt(busbw(n, 'all_gather', 256 * MIB) if n else None)} |"
            )


def all_sizes_table(runs, main_runs, lines):
    lines.append("")
    lines.append("All sizes, all_reduce bus bandwidth (GB/s):")
    lines.append("")
    sizes = sorted({x["bytes"] for r in runs for x in r["results"]})
    lines.append("| run | " + " | ".join(SIZES_LABEL.get(s, str(s)) for s in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for key in sorted(main_runs, key=lambda t: (t[1], t[2], t[0])):
        r = main_runs[key]
        lines.append(f"| {r['label']} | " + " | ".join(fmt(busbw(r, "all_reduce", s)) for s in sizes) + " |")


def ratios_lines(runs, main_runs, lines):
    """The ratios the prose quotes from the tables above, computed here rather than by hand."""
    ks = [k for k in (2, 4, 7) if ("patched", True, k) in main_runs and ("net", True, k) in main_runs]
    if not ks:
        return
    sizes = sorted({x["bytes"] for r in runs for x in r["results"]})
    cells = []
    for b in sizes:
        got = [(busbw(main_runs[("patched", True, k)], "all_reduce", b), busbw(main_runs[("net", True, k)], "all_reduce", b)) for k in ks]
        cells.append(f"{SIZES_LABEL.get(b, str(b))} " + " / ".join(f"{p / n:.1f}x" if p and n else "-" for p, n in got))
    lines.append("")
    lines.append(f"patched SHM / NET workaround, all_reduce under MPS, {' / '.join(map(str, ks))} leaves: " + "; ".join(cells) + ".")
    plain = [(busbw(main_runs[("patched", True, k)], "all_reduce", 256 * MIB), busbw(main_runs.get(("patched", False, k)) or {"results": []}, "all_reduce", 256 * MIB)) for k in ks]
    if all(q for _, q in plain):
        lines.append(f"patched SHM under MPS / time-sliced, all_reduce at 256 MiB, {' / '.join(map(str, ks))} leaves: " + " / ".join(f"{p / q:.1f}x" for p, q in plain) + ".")
    # NCCL_MIN_NCHANNELS=16 at 2 leaves under MPS, in every run that has it beside its default.
    tune = tuned(runs, lambda r: (r["_file"], r["mps"], r["ranks"]))
    sixteen = [busbw(d["NCCL_MIN_NCHANNELS=16"], "all_reduce", 256 * MIB) / busbw(d["base"], "all_reduce", 256 * MIB)
               for (f, mps, k), d in tune.items() if mps and k == 2 and "base" in d and "NCCL_MIN_NCHANNELS=16" in d]
    if sixteen:
        lines.append(f"NCCL_MIN_NCHANNELS=16 against the default, 2 leaves under MPS: {span(sixteen)}x in {len(sixteen)} runs.")


def settings_table(runs, lines):
    lines.append("")
    lines.append("SHM settings side by side (patched 2.28.9, all_reduce at 256 MiB, GB/s; ratio to the default):")
    lines.append("")
    tune = tuned(runs, lambda r: (r["_file"], r["mps"], r["ranks"]))
    lines.append("| run | emulation | leaves k | setting | GB/s | vs default |")
    lines.append("|---|---|---|---|---|---|")
    for (f, mps, k) in sorted(tune, key=lambda t: (run_number(t[0]), t[1], t[2])):
        d = tune[(f, mps, k)]
        base = busbw(d["base"], "all_reduce", 256 * MIB) if "base" in d else None
        for setting, r in d.items():
            v = busbw(r, "all_reduce", 256 * MIB)
            name = "default" if setting == "base" else "`" + setting.replace(",", " ") + "`"
            rel = f"{v / base:.2f}" if v and base else "-"
            err = (r.get("error") or "").strip()
            txt = fmt(v) if v else ("failed: " + (err[:80] if len(err) > 3 else "no result"))
            lines.append(f"| {f} | {'MPS' if mps else 'plain'} | {k} | {name} | {txt} | {rel} |")


def ddp_table(ddp, lines):
    lines.append("")
    lines.append("Training step under MPS (bench/ddp_step.sh): samples/s of the whole job, step time, share of the step spent in")
    lines.append("gradient communication (1 - no_sync step / synced step), and throughput against one process with k/7 of the GPU")
    lines.append("and k times the batch (one bigger instance, no communication):")
    lines.append("")
    lines.append("| model | leaves k | one instance samples/s | patched SHM samples/s | step ms | comm | vs one instance | NET samples/s | step ms | comm | patched / NET |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    # Side by side in one run: the first run that has a case provides it.
    res = {}
    for d in ddp:
        if not d.get("tag"):
            res.setdefault((d["model"], d["variant"], d["ranks"]), d)
    for model in ("resnet", "transformer"):
        for k in (2, 4, 7):
            si, pa, ne = (res.get((model, v, k)) for v in ("single", "patched", "net"))
            if not (si and pa and ne) or "samples_per_s" not in pa:
                continue
            name = "ResNet-50, batch 32/leaf" if model == "resnet" else "transformer 6x768, batch 16x256/leaf"
            lines.append(
                f"| {name} | {k} | {si['samples_per_s']:.0f} | {pa['samples_per_s']:.0f} | {pa['step_s'] * 1e3:.0f} | {pa['comm_share'] * 100:.0f}% | "
                f"{pa['samples_per_s'] / si['samples_per_s']:.2f} | {ne['samples_per_s']:.0f} | {ne['step_s'] * 1e3:.0f} | {ne['comm_share'] * 100:.0f}% | "
                f"{pa['samples_per_s'] / ne['samples_per_s']:.2f} |"
            )


def ddp_settings_table(ddp, lines):
    tagged = [d for d in ddp if d.get("tag")]
    if not tagged:
        return
    lines.append("")
    lines.append("SHM settings inside the training step (patched, MPS), against the default of the same run:")
    lines.append("")
    lines.append("| model | leaves k | setting | samples/s | vs default | comm | outcome |")
    lines.append("|---|---|---|---|---|---|---|")
    for d in tagged:
        base = next((b for b in ddp if not b.get("tag") and b["model"] == d["model"] and b["ranks"] == d["ranks"] and b["variant"] == "patched" and b["_file"] == d["_file"]), None)
        if "samples_per_s" in d:
            rel = f"{d['samples_per_s'] / base['samples_per_s']:.2f}" if base and "samples_per_s" in base else "-"
            lines.append(f"| {d['model']} | {d['ranks']} | `{d['tag'][5:]}` | {d['samples_per_s']:.0f} | {rel} | {d['comm_share'] * 100:.0f}% | ran |")
        else:
            codes = ",".join(sorted({str(c) for c in d["exit"]}))
            lines.append(f"| {d['model']} | {d['ranks']} | `{d['tag'][5:]}` | - | - | - | hung: ranks {codes} (PyTorch's NCCL watchdog aborted them) |")


def plot_allreduce(plt, main_runs, limit, out):
    """all_reduce bus bandwidth against size per k, time-sliced and under MPS."""
    for mps in (False, True):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
        for ax, k in zip(axes, (2, 4, 7)):
            for variant, style, name in (("patched", "o-", "patched NCCL 2.28.9, SHM"), ("net", "s--", "NET workaround (NCCL_HOSTID)"), ("multirank", "^:", "stock 2.30.7 multi-rank (in-GPU P2P)")):
                r = main_runs.get((variant, mps, k))
                if not r or not r["results"]:
                    continue
                ax.plot(*curve(r), style, label=name)
            if limit:
                ax.axhline(limit / k, color="gray", lw=1)
                ax.text(8192, limit / k * 1.08, f"PCIe copy bound {limit / k:.1f}", color="gray", fontsize=8)
            size_axes(ax, f"{k} leaves on one H200 ({'MPS' if mps else 'time-sliced'})")
        save(fig, axes, os.path.join(out, f"allreduce-{'mps' if mps else 'plain'}.png"))


def spread_bound(copy_each_way, k, gpus):
    """The PCIe bound of a ring all-reduce over k leaves on `gpus` GPUs (round-robin): the GPU
    with the most leaves, ceil(k/gpus), carries that many leaves' traffic over its one link."""
    return copy_each_way / -(-k // gpus)


@section("two_gpus")
def two_gpu_section(paths, ctx, lines):
    """Leaves packed on one GPU against spread over two: collectives, then DDP steps."""
    runs, rec, meta, ddp = load(paths)
    m = meta[0] if meta else {}
    per = rec["per_gpu"] if rec else []
    lines.append("")
    lines.append("## Two GPUs: leaves packed on one GPU against spread over both (benchmark 2)")
    lines.append("")
    lines.append(f"Machine: {m.get('machine', '?')}, {m.get('cpus', '?')} CPUs, PyTorch {m.get('torch', '?')}; runs of {', '.join(sorted({x['date'][:10] for x in meta}))}.")
    if per:
        lines.append("Pinned copies (256 MiB, same machine): " + "; ".join(
            f"GPU{i} H2D {g['h2d']:.1f}, D2H {g['d2h']:.1f}, both at once {g['bidirectional_total']:.1f} GB/s in total" for i, g in enumerate(per))
            + f"; both directions on both GPUs at once {rec['all_gpus_bidirectional_total']:.1f} GB/s in total.")
    lines.append("")
    lines.append("all_reduce bus bandwidth at 256 MiB, GB/s. Bound: copy/ceil(k/g) with g GPUs (one direction alone; the GPU")
    lines.append("with most leaves limits); spread/packed is the gain of spreading the same k leaves:")
    lines.append("")
    lines.append("| emulation | leaves k | packed: patched SHM | bound | % | spread: patched SHM | bound | % | spread / packed | packed: NET | spread: NET | spread: SHM / NET | spread all_gather SHM |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    limit = min(per[0]["h2d"], per[0]["d2h"]) if per else None
    got = {(r["variant"], r["mps"], r["ranks"], r["gpus"]): r for r in runs if not r.get("tag")}
    for mps in (False, True):
        for k in (2, 4, 7, 14):
            pk, sp = got.get(("patched", mps, k, 1)), got.get(("patched", mps, k, 2))
            nk, ns = got.get(("net", mps, k, 1)), got.get(("net", mps, k, 2))
            if not sp:
                continue
            v = lambda r, c="all_reduce": busbw(r, c, 256 * MIB) if r else None  # noqa: E731
            bp, bs = (spread_bound(limit, k, 1) if k <= 7 else None), spread_bound(limit, k, 2)
            pct = lambda x, b: f"{100 * x / b:.0f}%" if x and b else "-"  # noqa: E731
            ratio = lambda x, y: f"{x / y:.2f}x" if x and y else "-"  # noqa: E731
            lines.append(
                f"| {'MPS' if mps else 'plain'} | {k} | {fmt(v(pk)) if k <= 7 else 'n/a (7 leaves per GPU)'} | {fmt(bp)} | {pct(v(pk), bp)} | "
                f"{fmt(v(sp))} | {fmt(bs)} | {pct(v(sp), bs)} | {ratio(v(sp), v(pk))} | {fmt(v(nk))} | {fmt(v(ns))} | {ratio(v(sp), v(ns))} | {fmt(v(sp, 'all_gather'))} |"
            )
    steps = {(d["model"], d["ranks"], d.get("gpus", 1)): d for d in ddp if not d.get("tag") and d["variant"] == "patched" and "samples_per_s" in d}
    if steps:
        lines.append("")
        lines.append("DDP training steps (bench/ddp_step.sh, patched SHM, MPS, the plugin's default NCCL_MAX_NCHANNELS=2), packed and")
        lines.append("spread in one run: samples/s of the whole job; step time split into compute (the same step under no_sync) and")
        lines.append("communication (the rest):")
        lines.append("")
        lines.append("| model | leaves k | packed samples/s | step ms | compute ms | comm ms | spread samples/s | step ms | compute ms | comm ms | spread / packed samples/s | comm ms spread / packed |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ratios = []
        for (model, k, g) in sorted(steps):
            if g != 1 or (model, k, 2) not in steps:
                continue
            p, q = steps[(model, k, 1)], steps[(model, k, 2)]
            ms = lambda d: (d["step_s"] * 1e3, d["step_nosync_s"] * 1e3, (d["step_s"] - d["step_nosync_s"]) * 1e3)  # noqa: E731
            (ps, pc, pm), (qs, qc, qm) = ms(p), ms(q)
            lines.append(
                f"| {model} | {k} | {p['samples_per_s']:.0f} | {ps:.0f} | {pc:.0f} | {pm:.0f} | "
                f"{q['samples_per_s']:.0f} | {qs:.0f} | {qc:.0f} | {qm:.0f} | {q['samples_per_s'] / p['samples_per_s']:.2f} | {qm / pm:.2f} |"
            )
            ratios.append((q["samples_per_s"] / p["samples_per_s"], qc / pc, qm / pm))
        # Spread ranks compute faster too: MPS ranks of one GPU share its memory bandwidth and L2.
        lines.append("")
        lines.append(f"Spread / packed over these steps: samples/s {span([r[0] for r in ratios])}x, compute ms {span([r[1] for r in ratios])}x, "
                     f"comm ms {span([r[2] for r in ratios])}x.")
    if got:
        ctx["plots"]["two_gpus"] = lambda plt, out: plot_two_gpus(plt, got, os.path.join(out, "allreduce-two-gpus.png"))


@section("channels")
def channels_section(paths, ctx, lines):
    """NCCL_MAX_NCHANNELS=2 against NCCL's own choice: collectives, then DDP steps."""
    runs, _, _, ddp = load(paths)
    lines.append("")
    lines.append("## Channels: NCCL_MAX_NCHANNELS=2 against NCCL's own choice (and NCCL_MIN_NCHANNELS=16), MPS")
    lines.append("")
    lines.append("Collectives, all_reduce bus bandwidth at 256 MiB (GB/s), side by side in one run:")
    lines.append("")
    lines.append("| GPUs | leaves k | default | NCCL_MAX_NCHANNELS=2 | ratio |")
    lines.append("|---|---|---|---|---|")
    for (g, k), d in sorted(tuned(runs, lambda r: (r["gpus"], r["ranks"])).items()):
        b, c = (busbw(d[t], "all_reduce", 256 * MIB) if t in d else None for t in ("base", "NCCL_MAX_NCHANNELS=2"))
        if b and c:
            lines.append(f"| {g} | {k} | {fmt(b)} | {fmt(c)} | {c / b:.2f} |")
    lines.append("")
    lines.append("Training steps (bench/ddp_step.sh, patched SHM), samples/s of the whole job, side by side in one run:")
    lines.append("")
    lines.append("| model | GPUs | leaves k | default | NCCL_MAX_NCHANNELS=2 | ratio | comm share default -> 2 channels | NCCL_MIN_NCHANNELS=16 | ratio |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    base = {(d["model"], d.get("gpus", 1), d["ranks"], d["_file"]): d for d in ddp if not d.get("tag") and "samples_per_s" in d}
    rows = {}
    for d in ddp:
        if d.get("tag") and "samples_per_s" in d:
            key = (d["model"], d.get("gpus", 1), d["ranks"], d["_file"])
            if key in base:
                rows.setdefault(key, {})[d["tag"][5:]] = d
    for key in sorted(rows, key=lambda t: (t[0], t[1], t[2])):
        b, d = base[key], rows[key]
        two, sixteen = d.get("NCCL_MAX_NCHANNELS=2"), d.get("NCCL_MIN_NCHANNELS=16")
        cell = lambda x: (f"{x['samples_per_s']:.0f}", f"{x['samples_per_s'] / b['samples_per_s']:.3f}") if x else ("-", "-")  # noqa: E731
        c2, c16 = cell(two), cell(sixteen)
        comm = f"{b['comm_share'] * 100:.0f}% -> {two['comm_share'] * 100:.0f}%" if two else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {b['samples_per_s']:.0f} | {c2[0]} | {c2[1]} | {comm} | {c16[0]} | {c16[1]} |")
    colls = [c / b for d in tuned(runs, lambda r: (r["gpus"], r["ranks"])).values()
             for b, c in [(busbw(d[t], "all_reduce", 256 * MIB) if t in d else None for t in ("base", "NCCL_MAX_NCHANNELS=2"))] if b and c]
    two = [d["NCCL_MAX_NCHANNELS=2"]["samples_per_s"] / base[key]["samples_per_s"] for key, d in rows.items() if "NCCL_MAX_NCHANNELS=2" in d]
    sixteen = [d["NCCL_MIN_NCHANNELS=16"]["samples_per_s"] / base[key]["samples_per_s"] for key, d in rows.items() if "NCCL_MIN_NCHANNELS=16" in d]
    lines.append("")
    if colls:
        lines.append(f"NCCL_MAX_NCHANNELS=2 against the default: collectives {span(colls)}x ({pct_span(colls)}).")
    if two:
        lines.append(f"Training steps: NCCL_MAX_NCHANNELS=2 {span(two, '{:.3f}')}x ({pct_span(two)}) in {len(two)} configurations"
                     + (f"; NCCL_MIN_NCHANNELS=16 {span(sixteen, '{:.3f}')}x ({pct_span(sixteen)}) in {len(sixteen)}." if sixteen else "."))
    # Noise between runs: the defaults here against the same steps of the one-GPU section's run.
    again = [abs(b["samples_per_s"] / ctx["steps"][(m, k)] - 1) for (m, g, k, _), b in base.items() if g == 1 and (m, k) in ctx.get("steps", {})]
    if again:
        lines.append(f"The defaults against the same steps in the one-GPU run: {span([100 * x for x in again], '{:.1f}')}% apart ({len(again)} configurations).")


@section("plain_steps")
def plain_steps_section(paths, ctx, lines):
    """Training steps time-sliced, without MPS."""
    ddp = load(paths)[3]
    got = {(d["model"], d["variant"], d["ranks"]): d for d in ddp if not d.get("tag") and not d.get("mps") and "samples_per_s" in d}
    lines.append("")
    lines.append("## Training step time-sliced (no MPS): the ranks share all SMs by time-slicing, not what a MIG leaf does")
    lines.append("")
    lines.append("| model | leaves k | patched SHM samples/s | step ms | comm | NET samples/s | step ms | comm | patched / NET |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for model in ("resnet", "transformer"):
        for k in (2, 4, 7):
            p, n = got.get((model, "patched", k)), got.get((model, "net", k))
            if p and n:
                lines.append(
                    f"| {model} | {k} | {p['samples_per_s']:.0f} | {p['step_s'] * 1e3:.0f} | {p['comm_share'] * 100:.0f}% | "
                    f"{n['samples_per_s']:.0f} | {n['step_s'] * 1e3:.0f} | {n['comm_share'] * 100:.0f}% | {p['samples_per_s'] / n['samples_per_s']:.2f} |"
                )


# The PCIe paths (bench/pcie_paths.sh), as the report names them.
PATH_NAMES = {
    "ce": "copy engines (cudaMemcpyAsync)",
    "sm4": "SM loads/stores, 4 x 16 B in flight per thread (NCCL SHM's way)",
    "sm8": "SM loads/stores, 8 x 16 B in flight per thread",
    "tma": "Hopper bulk copies (cp.async.bulk)",
    "ce+sm4": "H2D by copy engines, D2H by SM stores (SHM with receiver-side copies)",
    "sm4+ce": "H2D by SM loads, D2H by copy engines (SHM with sender-side copies)",
}


PATH_SHORT = {"sm4": "SM loads/stores", "ce+sm4": "receiver-side copies", "sm4+ce": "sender-side copies", "ce": "copy engines both ways"}


def shm_path(setting):
    """The path NCCL's SHM transport takes under a setting (NCCL_SHM_MEMCPY_MODE: 1 sender side,
    the default; 2 receiver side; 3 both)."""
    if "NCCL_SHM_USE_CUDA_MEMCPY=1" not in setting:
        return "sm4"
    mode = next((e.split("=")[1] for e in setting.split(",") if e.startswith("NCCL_SHM_MEMCPY_MODE=")), "1")
    return {"1": "sm4+ce", "2": "ce+sm4", "3": "ce"}[mode]


def run_number(name):
    digits = name[3:].split("-")[0]
    return int(digits) if digits.isdigit() else 0


def failure(r):
    """Why a run has no result: hung (its ranks were killed at the timeout) or the error."""
    if "timeout" in [str(c) for c in r.get("exit", [])]:
        return "hung (killed at the timeout)"
    err = (r.get("error") or "").strip()
    return "failed: " + (err[:80] if len(err) > 3 else "no result")


def bytes_checked(r):
    """Whether a collective run verified its results: yes, WRONG, or not checked (runs recorded
    before the drivers checked the bytes)."""
    checked = [x.get("correct") for x in r["results"]]
    return "not checked" if not checked or None in checked else ("yes" if all(checked) else "WRONG")


def ce_label(path, r):
    """The path's short name; copy engines driven from the rank's own thread (flexmig's patch,
    recorded as ce_proxy "direct") are marked."""
    return PATH_SHORT[path] + (" (rank's thread)" if r.get("ce_proxy") == "direct" else "")


def shm_summary(tune, ce_one, lines):
    """The runs above by kind of setting: per k the range of the copy bound reached over all
    runs and settings of that kind, how many ran and how many hung."""
    def kind(setting, r):
        path = shm_path(setting)
        if path == "sm4":
            return "SM loads/stores, NCCL's default" if setting == "base" else None
        if path != "ce":
            return None
        big = "NCCL_BUFFSIZE=" in setting and int(setting.split("NCCL_BUFFSIZE=")[1].split(",")[0]) >= (16 << 20)
        if not big:
            return None
        if r.get("ce_proxy") == "direct":
            return "copy engines both ways, 16-128 MiB buffers, driven from the rank's thread (flexmig's patch)"
        ctx = "NCCL_CREATE_THREAD_CONTEXT=1" in setting
        return "copy engines both ways, 16-128 MiB buffers, " + ("proxy thread with its own CUDA context (no hang seen)" if ctx else "proxy thread in the rank's context (can deadlock)")
    got = defaultdict(lambda: defaultdict(list))
    for (_, _, k), d in tune.items():
        for setting, r in d.items():
            name = kind(setting, r)
            if name:
                v = busbw(r, "all_reduce", 256 * MIB)
                got[name][k].append(100 * k * v / ce_one if v else None)
    if not got:
        return
    ks = sorted({k for d in got.values() for k in d})
    lines.append("")
    lines.append("The same by kind of setting, over all runs and settings of that kind: the lowest and highest share of the")
    lines.append("copy bound at 256 MiB, and how many measurements ran (and hung):")
    lines.append("")
    lines.append("| setting | " + " | ".join(f"{k} leaves" for k in ks) + " |")
    lines.append("|---|" + "---|" * len(ks))
    for name in sorted(got, key=lambda n: (not n.startswith("SM"), n)):
        cells = []
        for k in ks:
            vals = got[name].get(k, [])
            ok = [v for v in vals if v is not None]
            hung = len(vals) - len(ok)
            rng = f"{min(ok):.0f}-{max(ok):.0f}% ({len(ok)} measurements)" if ok else "-"
            cells.append(rng + (f", {hung} hung" if hung else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")


def direct_sizes(tune, lines):
    """Copy engines driven from the rank's thread at every measured size, against the default
    (SM path) of the same run where the run has one."""
    rows = [(key, setting, r) for key in sorted(tune) for setting, r in tune[key].items() if r.get("ce_proxy") == "direct" and r["results"]]
    if not rows:
        return
    sizes = sorted({x["bytes"] for _, _, r in rows for x in r["results"]})
    lines.append("")
    lines.append("Copy engines driven from the rank's thread at each size: bus bandwidth GB/s, and in brackets the ratio to the")
    lines.append("default (SM path) of the same run (- where the run has none):")
    lines.append("")
    lines.append("| run | leaves k | setting | " + " | ".join(SIZES_LABEL.get(b, str(b)) for b in sizes) + " |")
    lines.append("|---|---|---|" + "---|" * len(sizes))
    for (_, f, k), setting, r in rows:
        base = tune[(run_number(f), f, k)].get("base")
        cells = []
        for b in sizes:
            v = busbw(r, "all_reduce", b)
            w = busbw(base, "all_reduce", b) if base else None
            cells.append("-" if not v else fmt(v) + (f" ({v / w:.2f})" if w else ""))
        lines.append(f"| {f} | {k} | `{setting.replace(',', ' ')}` | " + " | ".join(cells) + " |")


def repeats(tune, lines):
    """Copy-engine settings from the rank's thread measured in more than one run (same k): how far
    apart the runs land, at 256 MiB."""
    seen = defaultdict(dict)
    for (_, f, k), d in tune.items():
        for setting, r in d.items():
            v = busbw(r, "all_reduce", 256 * MIB)
            if r.get("ce_proxy") == "direct" and v:
                seen[(k, setting)][f] = v
    apart = {key: max(v.values()) / min(v.values()) - 1 for key, v in seen.items() if len(v) > 1}
    if not apart:
        return
    lines.append("")
    lines.append("The same setting from the rank's thread in another run, all_reduce 256 MiB: " + "; ".join(
        f"{k} leaves `{setting.replace(',', ' ')}` " + " / ".join(fmt(v) for _, v in sorted(seen[(k, setting)].items(), key=lambda t: run_number(t[0])))
        + f" GB/s ({', '.join(sorted(seen[(k, setting)], key=run_number))}), {100 * apart[(k, setting)]:.1f}% apart" for k, setting in sorted(apart))
        + f"; {span([100 * x for x in apart.values()], '{:.1f}')}% apart in all.")


@section("pcie")
def paths_section(pcie_paths, ctx, lines):
    """The link's capacity by path; ctx["ceiling"]: each path's ceiling, for the "ce" section and
    the plot."""
    meas, meta = [], []
    for p in pcie_paths:
        for line in open(p):
            d = json.loads(line)
            if str(d.get("mode", "")).startswith("loop_"):
                continue  # loop_section
            (meas if "mode" in d and "error" not in d else meta).append(d)
    m = next((x for x in meta if "machine" in x), {})
    # The last measurement of a mode and CTA count wins (copy engines run first and last).
    got = {(d["path"], d["direction"], d["blocks"]): d for d in meas if d.get("blocks_d2h", d["blocks"]) == d["blocks"]}
    # Unequal CTA counts, H2D:D2H (SM loads against SM stores).
    splits = {(d["path"], d["blocks"], d["blocks_d2h"]): d for d in meas if d.get("blocks_d2h", d["blocks"]) != d["blocks"]}
    ce_one = min(got[("ce", "h2d", 0)]["h2d_GBps"], got[("ce", "d2h", 0)]["d2h_GBps"])
    # A ring sends as many bytes as it receives: what counts is the time until both directions
    # have moved their 256 MiB, i.e. half the total of "both" (bytes of both / wall time).
    each = lambda d: d["total_GBps"] / 2  # noqa: E731
    ce_both = each(got[("ce", "both", 0)])
    blocks = sorted({b for (_, _, b) in got if b})
    lines.append("")
    lines.append("## What one GPU's PCIe link moves, by path (bench/pcie_paths.sh)")
    lines.append("")
    name, driver, mig, gen, width = (m.get("machine", "?").split(", ") + ["?"] * 5)[:5]
    lines.append(f"Machine: {name}, driver {driver}, MIG {mig}, PCIe gen {gen} x{width}; nvcc {m.get('nvcc', '?').split()[-1]}; {m.get('date', '?')[:10]}. 256 MiB per direction, pinned host memory.")
    lines.append(f"Copy engines: H2D {got[('ce', 'h2d', 0)]['h2d_GBps']:.1f} GB/s, D2H {got[('ce', 'd2h', 0)]['d2h_GBps']:.1f} GB/s alone; "
                 f"both at once {ce_both:.1f} GB/s each way.")
    lines.append("")
    lines.append("GB/s by number of CTAs (512 threads each; one thread each for bulk copies). One direction alone, and both at")
    lines.append("once (256 MiB each way; GB/s each way = bytes of one direction / time until both are done):")
    lines.append("")
    lines.append("| path | direction | " + " | ".join(f"{b} CTA{'s' if b > 1 else ''}" for b in blocks) + " |")
    lines.append("|---|---|" + "---|" * len(blocks))
    ceilings = {"ce": (ce_both, "-:-")}
    for path in ("sm4", "sm8", "tma", "ce+sm4", "sm4+ce"):
        for direction in ("h2d", "d2h", "both"):
            row = [got.get((path, direction, b)) for b in blocks]
            if not any(row):
                continue
            val = lambda d: d["h2d_GBps"] if direction == "h2d" else d["d2h_GBps"] if direction == "d2h" else each(d)  # noqa: E731
            name = {"h2d": "H2D alone", "d2h": "D2H alone", "both": "both at once, each way"}[direction]
            lines.append(f"| {PATH_NAMES[path]} | {name} | " + " | ".join(fmt(val(d)) if d else "-" for d in row) + " |")
            if direction == "both":
                best = max((d for d in row if d), key=each)
                kinds = path.split("+") if "+" in path else [path, path]  # the path of H2D, of D2H
                h, d = ("-" if k == "ce" else str(n) for k, n in zip(kinds, (best["blocks"], best["blocks_d2h"])))
                ceilings[path] = (each(best), f"{h}:{d}")
    if splits:
        lines.append("")
        lines.append("SM loads against SM stores with unequal CTA counts (H2D:D2H), both at once, GB/s each way:")
        lines.append("")
        keys = sorted(splits, key=lambda t: (t[1], t[2]))
        lines.append("| " + " | ".join(f"{h}:{d}" for _, h, d in keys) + " |")
        lines.append("|" + "---|" * len(keys))
        lines.append("| " + " | ".join(fmt(each(splits[t])) for t in keys) + " |")
        for (path, h, d), x in splits.items():
            if path in ceilings and each(x) > ceilings[path][0]:
                ceilings[path] = (each(x), f"{h}:{d}")
    lines.append("")
    lines.append("Ceiling of each path with both directions busy (best CTA count), and what it allows: a ring all-reduce over k")
    lines.append("leaves of one GPU moves k x (bus bandwidth) each way over the link, so no transport that moves bytes this way can")
    lines.append(f"pass ceiling/k, which is ceiling/copy of the copy bound (copy/k, copy = {ce_one:.1f} GB/s one direction alone); the")
    lines.append(f"80% target needs {0.8 * ce_one:.1f} GB/s each way:")
    lines.append("")
    lines.append("| path | ceiling each way, both busy | at CTAs (H2D:D2H) | share of the copy engines' both-ways rate | most of the copy bound it allows | 80% target reachable |")
    lines.append("|---|---|---|---|---|---|")
    for path, (c, at) in ceilings.items():
        lines.append(f"| {PATH_NAMES[path]} | {fmt(c)} | {at} | {100 * c / ce_both:.0f}% | {100 * c / ce_one:.0f}% | {'yes' if c >= 0.8 * ce_one else 'no'} |")
    ceiling = {"got": got, "blocks": blocks, "ce_both": ce_both, "ce_one": ce_one, "ceilings": ceilings, "shm": {}}
    ctx["ceiling"] = ceiling
    ctx["plots"]["pcie"] = lambda plt, out: plot_paths(plt, ceiling, os.path.join(out, "pcie-paths.png"))


@section("ce")
def ce_section(ce_paths, ctx, lines):
    """NCCL's SHM transport against the paths' ceilings (collectives side by side, tune: tags),
    then copy-engine settings inside DDP steps. Needs the "pcie" section's ceilings; records the
    default's link use per k in them (ctx["ceiling"]["shm"]) for the plot."""
    if "ceiling" not in ctx:
        return
    ceilings, ce_one, shm = ctx["ceiling"]["ceilings"], ctx["ceiling"]["ce_one"], ctx["ceiling"]["shm"]
    runs, _, _, ddp = load(ce_paths)
    tune = tuned(runs, lambda r: (run_number(r["_file"]), r["_file"], r["ranks"]))
    if tune:
        lines.append("")
        lines.append("NCCL's SHM transport against them (patched 2.28.9, MPS, all_reduce at 256 MiB, each run side by side; link use")
        lines.append("= k x bus bandwidth, each way; bytes checked: every rank verified the result of an all_reduce of rank + 1 at")
        lines.append("each size, in the runs that have the check):")
        lines.append("")
        lines.append("| run | leaves k | setting | path | bus bandwidth GB/s | link use each way GB/s | % of that path's ceiling | % of the copy bound | bytes checked |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for key in sorted(tune):
            _, f, k = key
            for setting, r in tune[key].items():
                path = shm_path(setting)
                name = "default" if setting == "base" else "`" + setting.replace(",", " ") + "`"
                v = busbw(r, "all_reduce", 256 * MIB)
                check = bytes_checked(r)
                if not v:
                    lines.append(f"| {f} | {k} | {name} | {ce_label(path, r)} | {failure(r)} | - | - | - | - |")
                    continue
                lines.append(f"| {f} | {k} | {name} | {ce_label(path, r)} | {fmt(v)} | {fmt(k * v)} | "
                             f"{100 * k * v / ceilings[path][0]:.0f}% | {100 * k * v / ce_one:.0f}% | {check} |")
                if setting == "base" and k not in shm.get(setting, {}):
                    shm.setdefault(setting, {})[k] = k * v
        shm_summary(tune, ce_one, lines)
        direct_sizes(tune, lines)
        repeats(tune, lines)
    if ddp:
        direct = []
        lines.append("")
        lines.append("Copy-engine SHM inside DDP steps (patched, MPS), against the default of the same run; NCCL_CREATE_THREAD_CONTEXT=1")
        lines.append("gives NCCL's proxy thread, which issues the copies, its own CUDA context:")
        lines.append("")
        lines.append("| run | model | leaves k | plugin channels | setting | samples/s | vs default | comm | gradients checked | outcome |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        base = {(d["model"], d["ranks"], d["_file"]): d for d in ddp if not d.get("tag") and d["variant"] == "patched"}
        for d in ddp:
            if not d.get("tag"):
                continue
            b = base.get((d["model"], d["ranks"], d["_file"]))
            ch = d.get("plugin_max_channels") or "off (NCCL's)"
            f = os.path.basename(d["_file"]).split(".")[0]
            grads = {None: "not checked", True: "yes", False: "WRONG"}[d.get("grads_ok")]
            if "samples_per_s" in d:
                rel = f"{d['samples_per_s'] / b['samples_per_s']:.3f}" if b and "samples_per_s" in b else "- (default failed)"
                who = " (rank's thread)" if d.get("ce_proxy") == "direct" else ""
                if who and b and "samples_per_s" in b:
                    direct.append(d["samples_per_s"] / b["samples_per_s"])
                lines.append(f"| {f} | {d['model']} | {d['ranks']} | {ch} | `{d['tag'][5:]}`{who} | {d['samples_per_s']:.0f} | {rel} | {d['comm_share'] * 100:.0f}% | {grads} | ran |")
            else:
                codes = ",".join(sorted({str(c) for c in d["exit"]}))
                lines.append(f"| {f} | {d['model']} | {d['ranks']} | {ch} | `{d['tag'][5:]}` | - | - | - | - | hung: ranks {codes} (killed after the run's timeout) |")
        if direct:
            lines.append("")
            lines.append(f"Copy engines from the rank's thread against the default, in DDP steps: {span(direct, '{:.3f}')}x ({pct_span(direct)}) samples/s in {len(direct)} runs.")


@section("pcie_loop")
def loop_section(files, ctx, lines):
    """Copy engines driven as several leaves drive them (bench/pcie_paths.sh PHASES=loop): the
    processes of one measurement share start_ms; their rates add up."""
    groups = defaultdict(list)
    for p in files:
        for line in open(p):
            d = json.loads(line)
            if str(d.get("mode", "")).startswith("loop_") and "error" not in d:
                groups[d["start_ms"]].append(d)
    got = {}
    for g in groups.values():
        d = g[0]
        key = (d["mode"][5:], d["chunk_kib"], d["mps"], int(d["procs"]), d["flows"])
        late = max(x["late_ms"] for x in g)
        got[key] = (sum(x["h2d_GBps"] for x in g), sum(x["d2h_GBps"] for x in g), len(g) == int(d["procs"]) and late == 0)
    if not got:
        return
    lines.append("")
    lines.append("## What the link moves for several leaves at once (bench/pcie_paths.sh, PHASES=loop)")
    lines.append("")
    lines.append("Copy engines in a steady stream of copies of one size, as NCCL's SHM transport issues its slices, for 1.5 s from")
    lines.append("a common start: N processes under MPS with one flow each (a leaf), against one process with N flows. \"both\":")
    lines.append("each flow copies host to device and device to host on two streams; \"pipe\": each flow copies device to host")
    lines.append("into a host slot and then, on a second stream, host to device out of it (one SHM connection's order), 4")
    lines.append("slots per flow. GB/s summed over the processes, host to device / device to host:")
    lines.append("")
    ns = sorted({k[3] for k in got} | {k[4] for k in got})
    lines.append("| flows | copy size | " + " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in ns) + " | " + " | ".join(f"1 process, {n} flows" for n in ns if n > 1) + " |")
    lines.append("|---|---|" + "---|" * (2 * len(ns) - 1))
    cell = lambda v: "-" if v is None else (f"{v[0]:.1f} / {v[1]:.1f}" + ("" if v[2] else " (late start)"))  # noqa: E731
    for (mode, kib) in sorted({(k[0], k[1]) for k in got if k[2]}):
        procs = [cell(got.get((mode, kib, True, n, 1))) for n in ns]
        flows = [cell(got.get((mode, kib, True, 1, n))) for n in ns if n > 1]
        lines.append(f"| {mode} | {kib >> 10} MiB | " + " | ".join(procs) + " | " + " | ".join(flows) + " |")
    for k, v in sorted(got.items()):
        if not k[2]:
            lines.append("")
            lines.append(f"Without MPS, one process, one flow, {k[0]}, {k[1] >> 10} MiB copies: {cell(v)} GB/s.")


@section("slicing")
def slicing_section(files, ctx, lines):
    """Ring slicing (bench/nccl_slicing.sh): the same settings on libraries built with different
    CHUNKSTEPSxSLICESTEPS (FLEXMIG_BENCH_SLICING=CxS in the setting), side by side per run. The
    bound's copy rate where a run has none: the copy engines' of the "pcie" section, else the
    one-GPU runs'."""
    ce_one = ctx["ceiling"]["ce_one"] if "ceiling" in ctx else ctx["limit"]
    runs, _, _, ddp = load(files)
    copies = {}
    for p in files:
        for line in open(p):
            d = json.loads(line)
            if "pinned_copy_GBs" in d:
                copies[os.path.basename(p).split(".")[0]] = min(d["pinned_copy_GBs"]["h2d"], d["pinned_copy_GBs"]["d2h"])

    def split(tag):
        envs = tag[5:].split(",")
        sl = next(e.split("=")[1] for e in envs if e.startswith("FLEXMIG_BENCH_SLICING="))
        rest = [e for e in envs if not e.startswith("FLEXMIG_BENCH_SLICING=")]
        return sl, ("default" if not rest else "`" + " ".join(rest) + "`")

    got = defaultdict(dict)
    for r in runs:
        if "FLEXMIG_BENCH_SLICING=" in r.get("tag", ""):
            sl, setting = split(r["tag"])
            got[(run_number(r["_file"]), r["_file"], r["ranks"], setting)][sl] = r
    if not got:
        return
    lines.append("")
    lines.append("## Ring slicing (bench/nccl_slicing.sh)")
    lines.append("")
    lines.append("Patched 2.28.9 built with ring all-reduce/all-gather chunks of CHUNKSTEPS steps cut into slices of SLICESTEPS")
    lines.append("(CxS; 4x2 is NCCL's own, 4x1 is `flexmig-gres-helper nccl install --ring-slice-steps 1`), the same settings side")
    lines.append("by side (MPS). Bus bandwidth GB/s; % of the copy bound (copy/k, copy of the same run where it has one, else")
    lines.append(f"{ce_one:.1f} GB/s from bench/pcie_paths.sh); ratios against 4x2 of the same run and setting:")
    lines.append("")
    shares = {}
    lines.append("| run | leaves k | setting | slicing | all_reduce 256 MiB | % of bound | all_gather 256 MiB | all_reduce 4 MiB | vs 4x2: all_reduce 256 MiB / all_gather 256 MiB / all_reduce 4 MiB | bytes checked |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(got):
        _, f, k, setting = key
        copy = copies.get(f, ce_one)
        ref = got[key].get("4x2")
        for sl in sorted(got[key], key=lambda x: (x != "4x2", x)):
            r = got[key][sl]
            ar, ag, small = busbw(r, "all_reduce", 256 * MIB), busbw(r, "all_gather", 256 * MIB), busbw(r, "all_reduce", 4 * MIB)
            if not ar:
                lines.append(f"| {f} | {k} | {setting} | {sl} | {failure(r)} | - | - | - | - | - |")
                continue
            check = bytes_checked(r)
            if sl != "4x2" and ref and busbw(ref, "all_reduce", 256 * MIB):
                rb = [busbw(ref, c, b) for c, b in (("all_reduce", 256 * MIB), ("all_gather", 256 * MIB), ("all_reduce", 4 * MIB))]
                ratio = " / ".join("-" if not (v and w) else f"{v / w:.2f}" for v, w in zip((ar, ag, small), rb))
            else:
                ratio = "-"
            lines.append(f"| {f} | {k} | {setting} | {sl} | {fmt(ar)} | {100 * k * ar / copy:.0f}% | {fmt(ag)} | {fmt(small)} | {ratio} | {check} |")
            shares[(f, k, setting, sl)] = 100 * k * ar / copy
    steps = defaultdict(dict)
    for d in ddp:
        if "FLEXMIG_BENCH_SLICING=" in d.get("tag", ""):
            sl, setting = split(d["tag"])
            steps[(os.path.basename(d["_file"]).split(".")[0], d["model"], d["ranks"], setting)][sl] = d
    if steps:
        lines.append("")
        lines.append("Training steps on each slicing (DDP, MPS, the plugin's environment with 2 channels; the setting overrides it):")
        lines.append("")
        lines.append("| run | model | leaves k | setting | step ms 4x2 | step ms 4x1 | 4x1 / 4x2 | comm 4x2 | comm 4x1 | gradients checked |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        per_k = defaultdict(list)
        for (f, model, k, setting), d in sorted(steps.items()):
            a, b = d.get("4x2"), d.get("4x1")
            if not (a and b and "step_s" in a and "step_s" in b):
                lines.append(f"| {f} | {model} | {k} | {setting} | - | - | - | - | - | failed or missing |")
                continue
            grads = "yes" if a.get("grads_ok") and b.get("grads_ok") else ("WRONG" if False in (a.get("grads_ok"), b.get("grads_ok")) else "not checked")
            lines.append(f"| {f} | {model} | {k} | {setting} | {a['step_s'] * 1e3:.1f} | {b['step_s'] * 1e3:.1f} | {b['step_s'] / a['step_s']:.3f} | "
                         f"{a['comm_share'] * 100:.0f}% | {b['comm_share'] * 100:.0f}% | {grads} |")
            per_k[k].append(b["step_s"] / a["step_s"])
        if per_k:
            lines.append("")
            lines.append("Step time 4x1 / 4x2: " + "; ".join(
                f"{k} leaves {span(v, '{:.3f}')} (within {100 * max(abs(x - 1) for x in v):.1f}%)" for k, v in sorted(per_k.items())) + ".")
    if shares:
        ctx["plots"]["slicing"] = lambda plt, out: plot_slicing(plt, shares, os.path.join(out, "slicing.png"))


def plot_slicing(plt, shares, path):
    """The last slicing run with a default: per k, the share of the copy bound of the default
    (SM path) and of the best copy-engine setting, for each slicing, against the 80% target."""
    last = max((f for f, _, s, _ in shares if s == "default"), key=run_number)
    ks = sorted({k for f, k, _, _ in shares if f == last})
    bars = []
    for sl in ("4x2", "4x1"):
        bars.append((f"SM path (default), {sl}", [shares.get((last, k, "default", sl), 0) for k in ks]))
        best = [max((v for (f, kk, s, x), v in shares.items() if f == last and kk == k and x == sl and s != "default"), default=0) for k in ks]
        bars.append((f"copy engines, best setting, {sl}", best))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.2
    for i, (label, ys) in enumerate(bars):
        xs = [j + (i - 1.5) * width for j in range(len(ks))]
        ax.bar(xs, ys, width, label=label)
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(80, color="gray", ls="--", lw=1, label="the 80% target")
    ax.set_xticks(range(len(ks)), [f"{k} leaves" for k in ks])
    ax.set_ylabel("% of the bound copy/k (all_reduce, 256 MiB)")
    ax.set_ylim(0, 118)
    ax.set_title(f"Ring slicing, NCCL's 4x2 against 1-step 4x1 ({last}, MPS)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print("wrote", path)


def plot_paths(plt, c, path):
    """Each-way rate with both directions busy against CTAs, per path, with NCCL SHM's link use."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for p, style in (("sm4", "o-"), ("tma", "^-"), ("ce+sm4", "s-"), ("sm4+ce", "v-")):
        pts = [(b, c["got"][(p, "both", b)]["total_GBps"] / 2) for b in c["blocks"] if (p, "both", b) in c["got"]]
        if pts:
            ax.plot(*zip(*pts), style, label=PATH_NAMES[p])
    ax.axhline(c["ce_both"], color="black", lw=1, label=f"copy engines, both at once ({c['ce_both']:.1f})")
    ax.axhline(0.8 * c["ce_one"], color="gray", ls="--", lw=1, label=f"80% target ({0.8 * c['ce_one']:.1f})")
    for setting, per_k in c["shm"].items():
        if setting == "base":
            for k, v in sorted(per_k.items()):
                ax.plot([c["blocks"][0], c["blocks"][-1]], [v, v], ":", lw=1.2, label=f"NCCL SHM, {k} leaves: link use {v:.1f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("CTAs per direction")
    ax.set_ylabel("GB/s each way, both directions busy")
    ax.set_title("One H200's PCIe link by path (256 MiB each way)")
    ax.set_ylim(0, 60)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print("wrote", path)


def plot_ddp(plt, ddp, path):
    """Samples/s of one bigger instance, k leaves over patched SHM and over NET, per model and k."""
    res = {}
    for d in ddp:
        if not d.get("tag") and "samples_per_s" in d and d.get("gpus", 1) == 1:
            res.setdefault((d["model"], d["variant"], d["ranks"]), d["samples_per_s"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, model, name in zip(axes, ("resnet", "transformer"), ("ResNet-50, batch 32 per leaf", "transformer 6x768, 16x256 per leaf")):
        ks = [k for k in (2, 4, 7) if (model, "single", k) in res]
        width = 0.27
        for i, (variant, label, color) in enumerate((("single", "one instance of k slices", "tab:gray"), ("patched", "k leaves, patched SHM", "tab:blue"), ("net", "k leaves, NET workaround", "tab:red"))):
            xs = [j + (i - 1) * width for j in range(len(ks))]
            ys = [res.get((model, variant, k), 0) for k in ks]
            ax.bar(xs, ys, width, label=label, color=color)
            if variant == "patched":
                for x, y, k in zip(xs, ys, ks):
                    ax.text(x, y, f"{y / res[(model, 'single', k)]:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(ks)), [f"{k} leaves" for k in ks])
        ax.set_ylabel("samples/s (whole job)")
        ax.set_title(f"DDP step under MPS: {name}")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print("wrote", path)


def plot_two_gpus(plt, got, path):
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), sharey=True)
    for ax, k in zip(axes, (2, 4, 7, 14)):
        for (variant, gpus), style, color, name in (
            (("patched", 1), "o-", "tab:blue", "patched SHM, packed on 1 GPU"), (("patched", 2), "o-", "tab:orange", "patched SHM, spread over 2 GPUs"),
            (("net", 1), "s--", "tab:green", "NET workaround, packed"), (("net", 2), "s--", "tab:red", "NET workaround, spread"),
        ):
            r = got.get((variant, True, k, gpus))
            if not r or not r["results"]:
                continue
            ax.plot(*curve(r), style, color=color, label=name, alpha=1.0 if gpus == 2 else 0.55)
        size_axes(ax, f"{k} leaves, MPS ~1/7 SMs per leaf")
    save(fig, axes, path)


def curve(run):
    """all_reduce bus bandwidth against message size."""
    pts = [(x["bytes"], x["busbw_GBs"]) for x in run["results"] if x["coll"] == "all_reduce"]
    return [p[0] for p in pts], [p[1] for p in pts]


def size_axes(ax, title):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("message size (bytes)")
    ax.grid(True, which="both", alpha=0.3)


def save(fig, axes, path):
    axes[0].set_ylabel("all_reduce bus bandwidth (GB/s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print("wrote", path)


if __name__ == "__main__":
    main()
