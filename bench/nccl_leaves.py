#!/usr/bin/env python3
"""Collective bandwidth between emulated MIG leaves, of one GPU or spread over several.

Each leaf is one rank on GPU 0 (or, with --gpus G, on GPU rank % G: the plugin's round-robin
spread) with its own NCCL_MIG_ID, launched with the environment the
flexmig plugin exports (CUDA_VISIBLE_DEVICES, NCCL_MIG_ID, NCCL_MULTI_RANK_GPU_ENABLE=1, RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

  nccl_leaves.py copy [G]                   pinned host<->device copy bandwidth (the bound), per GPU
                                            of the first G, then on all G at once
  nccl_leaves.py collect LOGDIR             RESULT lines rebuilt from the ranks' logs of earlier runs
  nccl_leaves.py run --variant V --ranks K  one communicator of K ranks, all sizes, both collectives
      variants: patched (LD_PRELOAD patched NCCL, SHM), net (PyTorch's stock NCCL with a distinct
      NCCL_HOSTID per rank: the NET/socket workaround), multirank (stock NCCL >= 2.30 with
      NCCL_MULTI_RANK_GPU_ENABLE=1)
      --lib PATH (the library to preload), --mps (ranks get CUDA_MPS_ACTIVE_THREAD_PERCENTAGE),
      --env K=V (extra settings), --sizes, --colls, --tag, --gpus G (spread over G GPUs)
Each run prints one line `RESULT {json}`: per collective and size the time and bus bandwidth
(nccl-tests definitions: all_reduce busbw = S*2(k-1)/k/t, all_gather busbw = S*(k-1)/k/t with S
the gathered bytes), the max over ranks, plus the transports NCCL logged.
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
KIB = 1024
DEFAULT_SIZES = [8 * KIB, 64 * KIB, 512 * KIB, 4 << 20, 32 << 20, 256 << 20]


def iters_for(size):
    if size <= (1 << 20):
        return 20
    if size <= (32 << 20):
        return 5
    return 3


def worker():
    import torch
    import torch.distributed as dist

    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    sizes = [int(s) for s in os.environ["BENCH_SIZES"].split(",")]
    colls = os.environ["BENCH_COLLS"].split(",")
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    out = []
    for coll in colls:
        for size in sizes:
            if coll == "all_reduce":
                x = torch.ones(size // 4, device=dev, dtype=torch.float32)
                op = lambda: dist.all_reduce(x)  # noqa: E731
                factor = 2 * (n - 1) / n
            else:  # all_gather: `size` is the gathered output
                per = max(size // 4 // n, 1)
                x = torch.ones(per, device=dev, dtype=torch.float32)
                y = torch.empty(per * n, device=dev, dtype=torch.float32)
                op = lambda: dist.all_gather_into_tensor(y, x)  # noqa: E731
                factor = (n - 1) / n
            for _ in range(2):
                op()
            torch.cuda.synchronize()
            dist.barrier()
            it = iters_for(size)
            t0 = time.perf_counter()
            for _ in range(it):
                op()
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / it
            t = torch.tensor([dt], device=dev, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dt = t.item()
            # The bytes arrive right, not only fast: every rank contributes rank + 1, once more.
            x.fill_(rank + 1)
            op()
            if coll == "all_reduce":
                ok = torch.all(x == n * (n + 1) / 2)
            else:
                ok = torch.equal(y, torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat_interleave(per))
            flag = torch.tensor([1 if bool(ok) else 0], device=dev, dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            out.append({"coll": coll, "bytes": size, "iters": it, "time_s": dt, "busbw_GBs": size * factor / dt / 1e9, "correct": bool(flag.item())})
            del x
            if coll == "all_gather":
                del y
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def run(args):
    n = args.ranks
    port = leaf_launch.free_port()
    logdir = args.log or tempfile.mkdtemp(prefix="nccl-leaves-")
    os.makedirs(logdir, exist_ok=True)
    spread = f"-spread{args.gpus}" if args.gpus > 1 else ""
    if args.placement:
        spread = "-placed" + "-".join(map(str, args.placement))
    label = f"{args.variant}{'-mps' if args.mps else ''}-{n}{spread}{('-' + args.tag) if args.tag else ''}"
    envs, logs = [], []
    for rank in range(n):
        env = dict(os.environ)
        env.update(leaf_launch.placement_env(args, rank, n, port))
        env.update(
            NCCL_DEBUG="INFO", NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1",
            BENCH_SIZES=",".join(str(s) for s in args.sizes), BENCH_COLLS=",".join(args.colls),
        )
        env.pop("LD_PRELOAD", None)
        if args.variant in ("patched", "multirank"):
            env["LD_PRELOAD"] = args.lib
        if args.variant == "net":
            # The workaround people use today: each rank pretends to be its own host.
            env["NCCL_HOSTID"] = f"flexmig-leaf-{rank}"
            env["NCCL_SOCKET_IFNAME"] = "lo"
            env.pop("NCCL_MIG_ID")
        if args.mps:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.mps_percent)
        for kv in args.env:
            k, v = kv.split("=", 1)
            env[k] = v
        envs.append(env)
        logs.append(os.path.join(logdir, f"{label}.rank{rank}.log"))
    codes, text = leaf_launch.launch(HERE, envs, logs, args.timeout)
    if "EADDRINUSE" in text and not args.retried:
        # free_port() gave a port that something else took before rank 0 listened: once more.
        args.retried = True
        return run(args)
    report(label, args.variant, n, args.gpus, args.mps, args.env, args.tag, codes, text, args.plugin_max_channels)


def report(label, variant, n, gpus, mps, env, tag, codes, text, plugin_max_channels=None):
    """Prints the run's `RESULT {json}` line from the ranks' logs."""
    res = leaf_launch.results(text)
    # via: e.g. "SHM/direct/direct" or "SHM/CE/direct": whether copy engines move the data.
    transports, via = leaf_launch.transports(text)
    ver = re.search(r"NCCL version (\d+\.\d+\.\d+)", text)
    err = ""
    if not res:
        errs = [l for l in text.splitlines() if "error" in l.lower()]
        err = (errs[-1] if errs else (text.strip().splitlines() or ["no output"])[-1])[:300]
    line = {
        "label": label, "variant": variant, "ranks": n, "gpus": gpus, "plugin_max_channels": plugin_max_channels, "mps": mps, "env": env, "tag": tag,
        "nccl": ver.group(1) if ver else None, "transports": transports, "via": via, "ce_proxy": leaf_launch.ce_proxy(text), "exit": codes,
        "results": res[0] if res else [], "error": err,
    }
    print("RESULT " + json.dumps(line), flush=True)


LABEL = re.compile(r"^(patched|net|multirank)(-mps)?-(\d+)(?:-spread(\d+))?(?:-(.+))?$")


def collect(logdir):
    """Rebuilds the RESULT lines of earlier runs from the ranks' logs in `logdir` (the --log
    folder: <label>.rank<i>.log), for when the driver's output was lost but the logs were kept.
    Exit codes are not in the logs: "exit" is null."""
    labels = sorted({f.rsplit(".rank", 1)[0] for f in os.listdir(logdir) if re.search(r"\.rank\d+\.log$", f)})
    for label in labels:
        m = LABEL.match(label)
        if not m:
            continue
        variant, mps, n, gpus, tag = m.group(1), bool(m.group(2)), int(m.group(3)), int(m.group(4) or 1), m.group(5) or ""
        env = tag[len("tune:"):].split(",") if tag.startswith("tune:") and tag != "tune:base" else []
        text = ""
        for i in range(n):
            path = os.path.join(logdir, f"{label}.rank{i}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as fh:
                    text += fh.read()
        report(label, variant, n, gpus, mps, env, tag, None, text)


def copy_bench(ngpus=1):
    """Pinned host<->device copies of 256 MiB: H2D, D2H and both at once (two streams), on each
    of GPUs 0..ngpus-1 alone, then (ngpus > 1) both directions on all GPUs at once: whether the
    host side holds up when every GPU's link is busy."""
    import torch
    size = 256 << 20

    def bufs(i):
        dev = torch.device("cuda", i)
        return {
            "h": torch.empty(size, dtype=torch.uint8, pin_memory=True),
            "h2": torch.empty(size, dtype=torch.uint8, pin_memory=True),
            "d": torch.empty(size, dtype=torch.uint8, device=dev),
            "d2": torch.empty(size, dtype=torch.uint8, device=dev),
            "s1": torch.cuda.Stream(dev), "s2": torch.cuda.Stream(dev),
        }

    def timed(fn, reps=10):
        for _ in range(2):
            fn()
        for i in range(ngpus):
            torch.cuda.synchronize(i)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        for i in range(ngpus):
            torch.cuda.synchronize(i)
        return (time.perf_counter() - t0) / reps

    def h2d(b):
        with torch.cuda.stream(b["s1"]):
            b["d"].copy_(b["h"], non_blocking=True)

    def d2h(b):
        with torch.cuda.stream(b["s2"]):
            b["h2"].copy_(b["d2"], non_blocking=True)

    B = [bufs(i) for i in range(ngpus)]
    out = {"bytes": size, "per_gpu": []}
    for b in B:
        out["per_gpu"].append({
            "h2d": size / timed(lambda: h2d(b)) / 1e9,
            "d2h": size / timed(lambda: d2h(b)) / 1e9,
            "bidirectional_total": 2 * size / timed(lambda: (h2d(b), d2h(b))) / 1e9,
        })
    # The first GPU's figures keep their old name: the bound of the one-GPU collectives.
    out["pinned_copy_GBs"] = out["per_gpu"][0]
    if ngpus > 1:
        out["all_gpus_bidirectional_total"] = 2 * ngpus * size / timed(lambda: [(h2d(b), d2h(b)) for b in B]) / 1e9
    print("RESULT " + json.dumps(out), flush=True)


def summarize():
    """One line per run result read from stdin: label, transports, bus bandwidth at 256 MiB."""
    for line in sys.stdin:
        d = json.loads(line)
        r = {(x["coll"], x["bytes"]): x["busbw_GBs"] for x in d["results"]}
        big = [f"{c} {r[(c, s)]:.2f}" for c in ("all_reduce", "all_gather") for s in (256 << 20,) if (c, s) in r]
        wrong = sorted({f"{x['coll']}@{x['bytes']}" for x in d["results"] if x.get("correct") is False})
        print(f"  {d['label']:<48} nccl={d['nccl']} {','.join(d.get('via', []))} busbw@256MiB GB/s: {' '.join(big) or d['error']}"
              + (f" WRONG RESULTS: {' '.join(wrong)}" if wrong else ""), flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summarize()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    if len(sys.argv) > 2 and sys.argv[1] == "collect":
        collect(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "copy":
        copy_bench(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--variant", choices=["patched", "net", "multirank"], required=True)
    r.add_argument("--ranks", type=int, required=True)
    r.add_argument("--lib", default="")
    r.add_argument("--mps", action="store_true")
    leaf_launch.add_placement_args(r)
    r.add_argument("--mps-percent", type=int, default=14)
    r.add_argument("--env", action="append", default=[])
    r.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=DEFAULT_SIZES)
    r.add_argument("--colls", type=lambda s: s.split(","), default=["all_reduce", "all_gather"])
    r.add_argument("--tag", default="")
    r.add_argument("--log", default="")
    r.add_argument("--timeout", type=float, default=90)
    a = ap.parse_args()
    a.retried = False
    run(a)


if __name__ == "__main__":
    main()
