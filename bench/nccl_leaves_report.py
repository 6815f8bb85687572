#!/usr/bin/env python3
"""Tables and plots from bench/nccl_leaves.sh results (JSON lines).

  python3 bench/nccl_leaves_report.py bench/results/nccl/*.jsonl --out bench/results/nccl

Writes report.md (the tables BENCHMARKS.md quotes) and PNG plots (needs matplotlib:
`pip install matplotlib`). Every number comes from the JSON lines; nothing is typed in.
"""
import argparse
import json
import os
from collections import defaultdict

MIB = 1 << 20
DDP = []  # bench/ddp_step.py results
SIZES_LABEL = {8192: "8K", 65536: "64K", 524288: "512K", 4 * MIB: "4M", 32 * MIB: "32M", 256 * MIB: "256M"}


def load(paths):
    runs, copy, meta = [], None, []
    for p in paths:
        for line in open(p):
            d = json.loads(line)
            if "model" in d:
                d["_file"] = p
                DDP.append(d)
            elif "pinned_copy_GBs" in d:
                copy = d["pinned_copy_GBs"]
            elif "machine" in d:
                meta.append(d)
            elif "label" in d:
                runs.append(d)
    # Later runs of the same label win (a repeated run replaces an earlier one).
    by_label = {}
    for r in runs:
        by_label[r["label"]] = r
    return list(by_label.values()), copy, meta


def busbw(run, coll, size):
    for x in run["results"]:
        if x["coll"] == coll and x["bytes"] == size:
            return x["busbw_GBs"]
    return None


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else (f"{v:.2f}" if v >= 0.1 else f"{v:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    runs, copy, meta = load(a.files)
    os.makedirs(a.out, exist_ok=True)
    limit = min(copy["h2d"], copy["d2h"]) if copy else None
    main_runs = {(r["variant"], r["mps"], r["ranks"]): r for r in runs if not r.get("tag")}
    lines = []
    m = meta[0] if meta else {}
    lines.append(f"Machine: {m.get('machine', '?')}, {m.get('cpus', '?')} CPUs, PyTorch {m.get('torch', '?')}; runs of {', '.join(sorted({x['date'][:10] for x in meta}))}.")
    if copy:
        lines.append(
            f"Pinned host<->device copy (256 MiB, same run): H2D {copy['h2d']:.1f} GB/s, D2H {copy['d2h']:.1f} GB/s, "
            f"both directions at once {copy['bidirectional_total']:.1f} GB/s in total."
        )
    lines.append("")
    lines.append("Bus bandwidth in GB/s at 256 MiB (nccl-tests definitions), and the share of the PCIe bound copy/k:")
    lines.append("")
    lines.append("| emulation | leaves k | bound copy/k | patched SHM all_reduce | % of bound | NET workaround | patched / NET | stock 2.30.7 multi-rank (in-GPU P2P, not a MIG path) | patched all_gather | NET all_gather |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
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
                f"{(100 * pa / bound):.0f}% | {fmt(na)} | {(pa / na):.1f}x | {sa_txt} | "
                f"{fmt(busbw(p, 'all_gather', 256 * MIB))} | {fmt(busbw(n, 'all_gather', 256 * MIB) if n else None)} |"
            )
    lines.append("")
    lines.append("All sizes, all_reduce bus bandwidth (GB/s):")
    lines.append("")
    sizes = sorted({x["bytes"] for r in runs for x in r["results"]})
    lines.append("| run | " + " | ".join(SIZES_LABEL.get(s, str(s)) for s in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for key in sorted(main_runs, key=lambda t: (t[1], t[2], t[0])):
        r = main_runs[key]
        lines.append(f"| {r['label']} | " + " | ".join(fmt(busbw(r, "all_reduce", s)) for s in sizes) + " |")
    lines.append("")
    lines.append("SHM settings side by side (patched 2.28.9, all_reduce at 256 MiB, GB/s; ratio to the default):")
    lines.append("")
    tune = defaultdict(dict)
    for r in runs:
        if r.get("tag", "").startswith("tune:"):
            tune[(r["mps"], r["ranks"])][r["tag"][5:]] = r
    settings = []
    for d in tune.values():
        for s in d:
            if s not in settings:
                settings.append(s)
    lines.append("| emulation | k | " + " | ".join(s.replace(",", " + ") for s in settings) + " |")
    lines.append("|---|---|" + "---|" * len(settings))
    for (mps, k) in sorted(tune):
        d = tune[(mps, k)]
        base = busbw(d["base"], "all_reduce", 256 * MIB) if "base" in d else None
        cells = []
        for s in settings:
            v = busbw(d[s], "all_reduce", 256 * MIB) if s in d else None
            cells.append("-" if v is None else (f"{fmt(v)} ({v / base:.2f}x)" if base else fmt(v)))
        lines.append(f"| {'MPS' if mps else 'plain'} | {k} | " + " | ".join(cells) + " |")
    if DDP:
        lines.append("")
        lines.append("Training step under MPS (bench/ddp_step.sh): samples/s of the whole job, step time, share of the step spent in")
        lines.append("gradient communication (1 - no_sync step / synced step), and throughput against one process with k/7 of the GPU")
        lines.append("and k times the batch (one bigger instance, no communication):")
        lines.append("")
        lines.append("| model | leaves k | one instance samples/s | patched SHM samples/s | step ms | comm | vs one instance | NET samples/s | step ms | comm | patched / NET |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        # Side by side in one run: the first run that has a case provides it.
        res = {}
        for d in DDP:
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
        tuned = [d for d in DDP if d.get("tag")]
        if tuned:
            lines.append("")
            lines.append("SHM settings inside the training step (patched, MPS), against the default of the same run:")
            lines.append("")
            lines.append("| model | leaves k | setting | samples/s | vs default | comm | outcome |")
            lines.append("|---|---|---|---|---|---|---|")
            for d in tuned:
                base = next((b for b in DDP if not b.get("tag") and b["model"] == d["model"] and b["ranks"] == d["ranks"] and b["variant"] == "patched" and b["_file"] == d["_file"]), None)
                if "samples_per_s" in d:
                    rel = f"{d['samples_per_s'] / base['samples_per_s']:.2f}" if base and "samples_per_s" in base else "-"
                    lines.append(f"| {d['model']} | {d['ranks']} | `{d['tag'][5:]}` | {d['samples_per_s']:.0f} | {rel} | {d['comm_share'] * 100:.0f}% | ran |")
                else:
                    codes = ",".join(sorted({str(c) for c in d["exit"]}))
                    lines.append(f"| {d['model']} | {d['ranks']} | `{d['tag'][5:]}` | - | - | - | hung: ranks {codes} (PyTorch's NCCL watchdog aborted them) |")
    open(os.path.join(a.out, "report.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: pip install matplotlib for the plots)")
        return
    for mps in (False, True):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
        for ax, k in zip(axes, (2, 4, 7)):
            for variant, style, name in (("patched", "o-", "patched NCCL 2.28.9, SHM"), ("net", "s--", "NET workaround (NCCL_HOSTID)"), ("multirank", "^:", "stock 2.30.7 multi-rank (in-GPU P2P)")):
                r = main_runs.get((variant, mps, k))
                if not r or not r["results"]:
                    continue
                xs = [x["bytes"] for x in r["results"] if x["coll"] == "all_reduce"]
                ys = [x["busbw_GBs"] for x in r["results"] if x["coll"] == "all_reduce"]
                ax.plot(xs, ys, style, label=name)
            if limit:
                ax.axhline(limit / k, color="gray", lw=1)
                ax.text(8192, limit / k * 1.08, f"PCIe copy bound {limit / k:.1f}", color="gray", fontsize=8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{k} leaves on one H200 ({'MPS' if mps else 'time-sliced'})")
            ax.set_xlabel("message size (bytes)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("all_reduce bus bandwidth (GB/s)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(a.out, f"allreduce-{'mps' if mps else 'plain'}.png")
        fig.savefig(path, dpi=90)
        print("wrote", path)


if __name__ == "__main__":
    main()
