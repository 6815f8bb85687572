#!/usr/bin/env python3
"""Host-reduction all-reduce (hostreduce/, LD_PRELOADed in front of patched NCCL) against NCCL's
own SHM path, between emulated MIG leaves of one GPU, in one process group per path.

  hostreduce.py run --ranks K --nccl LIB --hostreduce LIB [--mps] [--sizes ...] [--variants ...]

Each of the K ranks gets the plugin's environment (tests/gpu/leaf_launch.py) and
LD_PRELOAD="<hostreduce> <patched libnccl>". Inside every rank, one torch.distributed group per
path is created with FLEXMIG_HOSTREDUCE set just before the group's communicator is made (the
library reads it per communicator): "nccl" (off), "hostreduce" (on), with --auto "auto" (the built-in table decides), plus one group per
variant (FLEXMIG_HOSTREDUCE_CHUNK=..., FLEXMIG_HOSTREDUCE_THREADS=...). At each size the paths
take turns; time = max over ranks. Every size is checked: each rank all-reduces the same
integer-valued random tensor through every path, and all paths must give the bitwise same result
(integers: exact in any order of summation), and equal the expected sum.

Prints one `RESULT {json}` line (rank 0) with a record per (path, dtype, size).
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "tests", "gpu"))
import leaf_launch  # noqa: E402

MIB = 1 << 20
DEFAULT_SIZES = [MIB << i for i in range(9)]  # 1 MiB .. 256 MiB


def iters_for(size):
    return 10 if size <= 8 * MIB else (5 if size <= 64 * MIB else 3)


def worker():
    import torch
    import torch.distributed as dist

    rank, k = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    sizes = [int(s) for s in os.environ["BENCH_SIZES"].split(",")]
    dtypes = os.environ["BENCH_DTYPES"].split(",")
    variants = [v for v in os.environ.get("BENCH_VARIANTS", "").split(";") if v]
    variant_sizes = [int(s) for s in os.environ.get("BENCH_VARIANT_SIZES", "").split(",") if s]
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    # No device_id: communicators are made lazily, each by ncclCommInitRankConfig (not split from
    # the default group), so each group's FLEXMIG_HOSTREDUCE applies.
    os.environ["FLEXMIG_HOSTREDUCE"] = "off"
    dist.init_process_group("nccl")
    ranks = list(range(k))
    groups = {}

    def make(name, env):
        groups[name] = leaf_launch.group_with_env(torch, dist, dev, ranks, env)

    make("nccl", {"FLEXMIG_HOSTREDUCE": "off"})
    make("hostreduce", {"FLEXMIG_HOSTREDUCE": "on"})
    if os.environ.get("BENCH_AUTO") == "1":
        make("auto", {"FLEXMIG_HOSTREDUCE": "auto"})  # the built-in selection table decides per call
    for v in variants:
        make("hostreduce:" + v, {"FLEXMIG_HOSTREDUCE": "on", **dict(kv.split("=", 1) for kv in v.split(","))})
    gen = torch.Generator(device=dev)
    out = []
    for dtype_name in dtypes:
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
        for size in sizes:
            n = size // torch.tensor([], dtype=dtype).element_size()
            # Integers small enough that every partial sum is exact in the type (bf16: |sum| <= 256).
            lim = 1000 if dtype == torch.float32 else 8
            gen.manual_seed(1234 + rank * 7919 + size)
            src = torch.randint(-lim, lim + 1, (n,), device=dev, generator=gen).to(dtype)
            expect = src.clone()
            dist.all_reduce(expect, group=groups["nccl"])  # reference: NCCL's own result
            x = torch.empty_like(src)
            names = [g for g in groups if g in ("nccl", "hostreduce", "auto") or size in variant_sizes]
            times = {g: [] for g in names}
            correct = {}
            for name in names:
                x.copy_(src)
                dist.all_reduce(x, group=groups[name])
                torch.cuda.synchronize()
                correct[name] = bool(torch.equal(x, expect))
            # Paths take turns, so drift on the machine hits all of them alike.
            for _ in range(2):
                for name in names:
                    for _ in range(2):
                        dist.all_reduce(x, group=groups[name])
                    torch.cuda.synchronize()
                    dist.barrier(group=groups["nccl"])
                    it = iters_for(size)
                    t0 = time.perf_counter()
                    for _ in range(it):
                        dist.all_reduce(x, group=groups[name])
                    torch.cuda.synchronize()
                    times[name].append((time.perf_counter() - t0) / it)
            for name in names:
                t = torch.tensor([min(times[name])], device=dev, dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX, group=groups["nccl"])
                ok = torch.tensor([1 if correct[name] else 0], device=dev, dtype=torch.int32)
                dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=groups["nccl"])
                dt = t.item()
                algbw = size / dt / 1e9
                out.append({
                    "impl": name.split(":")[0], "variant": name.split(":", 1)[1] if ":" in name else "default",
                    "dtype": dtype_name, "bytes": size, "time_s": dt, "algbw_GBps": algbw,
                    "busbw_equiv_GBps": algbw * 2 * (k - 1) / k, "correct": bool(ok.item()),
                })
            del src, expect, x
    overlap_sizes = [int(v) for v in os.environ.get("BENCH_OVERLAP_SIZES", "").split(",") if v]
    if overlap_sizes:
        out += overlap(torch, dist, dev, groups, overlap_sizes, k)
    torch.cuda.synchronize()
    dist.barrier(group=groups["nccl"])
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def overlap(torch, dist, dev, groups, sizes, k):
    """All-reduces beside compute, as in training: per size, every rank runs matrix products on a
    stream of its own (as much as NCCL's all-reduces of that size take alone, so either can hide the
    other) while its default stream all-reduces; the time until both are done, per path, max over
    ranks, best of two rounds taking turns. A path that takes SMs from the compute, or the link
    from the other ranks, shows here and not in the all-reduce alone. fp32, kind "overlap"."""
    cs = torch.cuda.Stream(device=dev)
    a = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    c = torch.empty_like(a)

    def slowest(t):
        v = torch.tensor([t], device=dev, dtype=torch.float64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX, group=groups["nccl"])
        return v.item()

    def timed(fn):
        torch.cuda.synchronize()
        dist.barrier(group=groups["nccl"])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return slowest(time.perf_counter() - t0)

    def compute(n):
        with torch.cuda.stream(cs):
            for _ in range(n):
                torch.mm(a, b, out=c)

    for _ in range(20):
        torch.mm(a, b, out=c)
    per_mm = timed(lambda: compute(50)) / 50
    names = [g for g in ("nccl", "hostreduce", "auto") if g in groups]
    recs = []
    for size in sizes:
        x = torch.zeros(size // 4, device=dev, dtype=torch.float32)  # sums stay 0: no overflow over many calls
        calls = 2 * iters_for(size)

        def reduce(name):
            for _ in range(calls):
                dist.all_reduce(x, group=groups[name])
        for name in names:
            reduce(name)  # warm
        alone = {name: min(timed(lambda: reduce(name)) for _ in range(2)) for name in names}
        n_mm = max(1, round(alone["nccl"] / per_mm))
        compute_s = min(timed(lambda: compute(n_mm)) for _ in range(2))
        both = {name: [] for name in names}
        for _ in range(2):
            for name in names:
                both[name].append(timed(lambda: (compute(n_mm), reduce(name))))
        for name in names:
            recs.append({"kind": "overlap", "impl": name, "variant": "default", "dtype": "f32", "bytes": size, "calls": calls,
                         "matmuls": n_mm, "compute_s": compute_s, "allreduce_alone_s": alone[name], "both_s": min(both[name]),
                         "busbw_equiv_alone_GBps": size * calls / alone[name] / 1e9 * 2 * (k - 1) / k})
        del x
    return recs


def run(args):
    k = args.ranks
    port = leaf_launch.free_port()
    logdir = args.log or tempfile.mkdtemp(prefix="hostreduce-")
    os.makedirs(logdir, exist_ok=True)
    label = f"hostreduce{'-mps' if args.mps else ''}-{k}{('-' + args.tag) if args.tag else ''}"
    envs, logs = [], []
    for rank in range(k):
        env = dict(os.environ)
        env.update(leaf_launch.placement_env(args, rank, k, port))
        env.update(
            NCCL_DEBUG="WARN", NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1", FLEXMIG_HOSTREDUCE_DEBUG="1",
            BENCH_SIZES=",".join(str(s) for s in args.sizes), BENCH_DTYPES=",".join(args.dtypes),
            BENCH_VARIANTS=";".join(args.variants), BENCH_VARIANT_SIZES=",".join(str(s) for s in args.variant_sizes),
            BENCH_OVERLAP_SIZES=",".join(str(s) for s in args.overlap_sizes),
            LD_PRELOAD=f"{args.hostreduce} {args.nccl}", BENCH_AUTO="1" if args.auto else "0",
        )
        if args.mps:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.mps_percent)
        for kv in args.env:
            key, v = kv.split("=", 1)
            env[key] = v
        envs.append(env)
        logs.append(os.path.join(logdir, f"{label}.rank{rank}.log"))
    t0 = time.time()
    codes, text = leaf_launch.launch(HERE, envs, logs, args.timeout)
    res = leaf_launch.results(text)
    paths = sorted({m.group(1) for m in re.finditer(r"flexmig-hostreduce: rank \d+/\d+ comm \S+: path=(\S+ \([^)]*\))", text)})
    err = ""
    if not res:
        errs = [l for l in text.splitlines() if "error" in l.lower() or "Traceback" in l]
        err = (errs[-1] if errs else (text.strip().splitlines() or ["no output"])[-1])[:400]
    common = {"kind": "allreduce", "k": k, "mps": f"{args.mps_percent}%" if args.mps else "off", "env": args.env, "tag": args.tag, "exit": codes, "wall_s": round(time.time() - t0, 1)}
    print("RESULT " + json.dumps({**common, "paths": paths, "results": res[0] if res else [], "error": err}), flush=True)


def lines(machine, copy, nccl_as=None):
    """RESULT lines (stdin) to one JSON object per measurement (stdout), with the run's common
    fields; a failed launch becomes one line with its error. With `nccl_as`, only NCCL's records,
    renamed (the copy-engine runs)."""
    copy = json.loads(copy)
    for line in sys.stdin:
        if not line.startswith("RESULT "):
            continue
        d = json.loads(line[len("RESULT "):])
        common = {"kind": "allreduce", "k": d["k"], "mps": d["mps"], "env": d["env"], "tag": d.get("tag", ""), "paths": d["paths"], "machine": machine,
                  "copy_bound": copy.get("pinned_copy_GBs"), "wall_s": d["wall_s"]}
        if not d["results"]:
            print(json.dumps({**common, "impl": nccl_as or "run", "error": d["error"], "exit": d["exit"]}), flush=True)
        for r in d["results"]:
            if nccl_as:
                if r["impl"] != "nccl":
                    continue
                r["impl"] = nccl_as
            print(json.dumps({**common, **r}), flush=True)


def ddp_lines(machine, impl):
    """bench/ddp_step.py's RESULT lines (stdin) as this benchmark's DDP records (kind "ddp")."""
    for line in sys.stdin:
        if not line.startswith("RESULT "):
            continue
        d = json.loads(line[len("RESULT "):])
        common = {"kind": "ddp", "model": d["model"], "k": d["ranks"], "machine": machine, "mps": "14%" if d["mps"] else "off"}
        rest = {key: v for key, v in d.items() if key not in ("model", "ranks", "samples_per_s", "mps", "compare")}
        if "compare" in d:
            # One record per exchange of the side-by-side launch, all through DDP's comm hook.
            for name, c in d["compare"].items():
                print(json.dumps({**common, "impl": name, "exchange": "comm-hook" + ("-bucket-view" if d.get("bucket_view") else ""), "samples_per_s": c["samples_per_s"], **rest, **c}), flush=True)
        else:
            exchange = "none" if impl == "single" else "ddp-default"
            print(json.dumps({**common, "impl": impl, "exchange": exchange, "samples_per_s": d.get("samples_per_s"), **rest}), flush=True)


def summarize():
    """A short table of the measurement lines (stdin): 4, 64 and 256 MiB."""
    for line in sys.stdin:
        d = json.loads(line)
        if "error" in d:
            print(f"  k={d['k']}: FAILED {d['error']} exit={d['exit']} paths={d['paths']}", flush=True)
        elif d.get("kind") == "overlap":
            print(f"  k={d['k']} {d['impl']:<10} beside compute {d['bytes'] // MIB:>4} MiB x{d['calls']}: both {d['both_s'] * 1e3:7.1f} ms, "
                  f"compute alone {d['compute_s'] * 1e3:7.1f} ms, all-reduces alone {d['allreduce_alone_s'] * 1e3:7.1f} ms", flush=True)
        elif d["bytes"] in (4 * MIB, 64 * MIB, 256 * MIB):
            print(f"  k={d['k']} {d['impl']:<10} {d['variant']:<34} {d['dtype']:<4} {d['bytes'] // MIB:>4} MiB "
                  f"busbw_equiv {d['busbw_equiv_GBps']:6.2f} GB/s correct={d['correct']}", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    if len(sys.argv) > 3 and sys.argv[1] == "lines":
        lines(sys.argv[2], sys.argv[3], sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--nccl-as" else None)
        return
    if len(sys.argv) > 3 and sys.argv[1] == "ddp-lines":
        ddp_lines(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summarize()
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--ranks", type=int, required=True)
    r.add_argument("--nccl", required=True, help="the patched libnccl.so.2 (preloaded behind the host-reduction library)")
    r.add_argument("--hostreduce", required=True, help="libflexmig_hostreduce.so")
    r.add_argument("--mps", action="store_true")
    r.add_argument("--mps-percent", type=int, default=14)
    r.add_argument("--auto", action="store_true", help="also a group with FLEXMIG_HOSTREDUCE=auto (impl \"auto\")")
    r.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=DEFAULT_SIZES)
    r.add_argument("--dtypes", type=lambda s: s.split(","), default=["f32"])
    r.add_argument("--variants", type=lambda s: [v for v in s.split(";") if v], default=[], help="host-path settings to compare, ';'-separated, each K=V[,K=V]")
    r.add_argument("--variant-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    r.add_argument("--overlap-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                   help="also these sizes beside compute (kind \"overlap\")")
    r.add_argument("--env", action="append", default=[])
    r.add_argument("--tag", default="")
    r.add_argument("--log", default="")
    r.add_argument("--timeout", type=int, default=240)
    leaf_launch.add_placement_args(r)
    args = ap.parse_args()
    run(args)


if __name__ == "__main__":
    main()
