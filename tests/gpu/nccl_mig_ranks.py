#!/usr/bin/env python3
"""Run N torch.distributed ranks on one GPU (or spread over --gpus GPUs), each as its own emulated MIG leaf, and check
all_reduce, all_gather, reduce_scatter, broadcast and send/recv results exactly.

Driver:  nccl_mig_ranks.py run --ranks 4 --label patched-4 --log DIR [--preload LIB]
         [--mig-ids distinct|same|none] [--env K=V ...] [--unset VAR ...] [--expect ok|fail:TEXT] [--gpus G]
         (--env FLEXMIG_SCENARIO=graph|split-graph: CUDA graph capture instead of the collectives; see graph_worker)
Worker:  started by the driver with RANK/WORLD_SIZE/... in its environment.

The driver prints one summary line:
  CASE <label> ranks=<n> result=<PASS|FAIL> nccl=<ver> shm=<lines> p2p=<lines> net=<lines> busbw64M=<GB/s> note=<...>
and exits 0 when the outcome matched --expect.
"""
import argparse
import json
import os
import re
import sys
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
import leaf_launch  # noqa: E402


def graph_worker(scenario, rank, n, dev):
    """FLEXMIG_SCENARIO=graph: an all_reduce checked eagerly, then captured in a CUDA graph and replayed
    (checked); split-graph: the same on a communicator split from the world one (ncclCommSplit, which
    shares the parent's connections under NCCL_COMM_SPLIT_SHARE_RESOURCES=1). A capture NCCL refuses
    prints CAPTURE_REFUSED and exits 4."""
    import torch
    import torch.distributed as dist

    m = 1 << 20
    want = torch.arange(m, device=dev, dtype=torch.float32) % 1024 * (n * (n + 1) // 2)
    x = torch.arange(m, device=dev, dtype=torch.float32) % 1024 * (rank + 1)
    # The world communicator connects first (NCCL connects at the first collective), so that a split
    # that shares resources reuses these connections instead of making its own.
    dist.all_reduce(x)
    checks = {"eager_all_reduce": torch.equal(x, want)}
    group = dist.new_group(list(range(n))) if scenario == "split-graph" else None
    if group is not None:
        x = torch.arange(m, device=dev, dtype=torch.float32) % 1024 * (rank + 1)
        dist.all_reduce(x, group=group)
        checks["split_all_reduce"] = torch.equal(x, want)
    torch.cuda.synchronize()
    print(f"rank {rank}: eager all_reduce {checks}", flush=True)
    y = torch.empty(m, device=dev, dtype=torch.float32)
    # Warm up on a side stream, as PyTorch's CUDA graph notes ask for NCCL, then capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dist.all_reduce(y, group=group)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            dist.all_reduce(y, group=group)
    except Exception as e:  # noqa: BLE001 (whatever torch raises for an NCCL error)
        print(f"rank {rank}: CAPTURE_REFUSED: {type(e).__name__}: {str(e)[:300]}", flush=True)
        os._exit(4)  # the communicator is in an error state: no orderly teardown
    print(f"rank {rank}: captured", flush=True)
    for _ in range(2):
        y.copy_(torch.arange(m, device=dev, dtype=torch.float32) % 1024 * (rank + 1))
        g.replay()
    torch.cuda.synchronize()
    checks["graph_all_reduce"] = torch.equal(y, want)
    ver = ".".join(str(v) for v in torch.cuda.nccl.version())
    dist.barrier()
    dist.destroy_process_group()
    print("RESULT " + json.dumps({"rank": rank, "nccl": ver, "checks": checks, "busbw": 0.0}), flush=True)
    sys.exit(0 if all(checks.values()) else 3)


def worker():
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    n = int(os.environ["WORLD_SIZE"])
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)  # eager NCCL init: duplicate checks fire here
    scenario = os.environ.get("FLEXMIG_SCENARIO", "")
    if scenario:
        return graph_worker(scenario, rank, n, dev)
    ver = ".".join(str(x) for x in torch.cuda.nccl.version())
    checks = {}

    def check(name, got, want):
        ok = torch.equal(got, want)
        checks[name] = ok
        if not ok:
            bad = (got != want).nonzero()
            print(f"rank {rank}: {name} MISMATCH at {bad[:5].tolist()}", flush=True)

    # all_reduce (int64 and float32 holding small integers: exact), an odd size to hit tails
    m = 1_000_003
    base = torch.arange(m, device=dev, dtype=torch.int64)
    t = base * (rank + 1)
    dist.all_reduce(t)
    check("all_reduce_i64", t, base * (n * (n + 1) // 2))
    f = (base % 1024).float() * (rank + 1)
    dist.all_reduce(f)
    check("all_reduce_f32", f, (base % 1024).float() * (n * (n + 1) // 2))

    # all_gather
    c = 1 << 18
    mine = torch.arange(c, device=dev, dtype=torch.int32) + rank * 1_000_000
    out = torch.empty(n * c, device=dev, dtype=torch.int32)
    dist.all_gather_into_tensor(out, mine)
    want = torch.cat([torch.arange(c, device=dev, dtype=torch.int32) + r * 1_000_000 for r in range(n)])
    check("all_gather", out, want)

    # reduce_scatter
    inp = torch.arange(n * c, device=dev, dtype=torch.int32) + rank
    got = torch.empty(c, device=dev, dtype=torch.int32)
    dist.reduce_scatter_tensor(got, inp)
    chunk = torch.arange(rank * c, (rank + 1) * c, device=dev, dtype=torch.int32)
    check("reduce_scatter", got, chunk * n + n * (n - 1) // 2)

    # broadcast from the last rank
    root = n - 1
    b = torch.arange(c, device=dev, dtype=torch.int64) * 7 if rank == root else torch.zeros(c, device=dev, dtype=torch.int64)
    dist.broadcast(b, src=root)
    check("broadcast", b, torch.arange(c, device=dev, dtype=torch.int64) * 7)

    # send/recv around the ring
    s = torch.full((c,), rank + 1, device=dev, dtype=torch.int32)
    r = torch.empty(c, device=dev, dtype=torch.int32)
    ops = [dist.P2POp(dist.isend, s, (rank + 1) % n), dist.P2POp(dist.irecv, r, (rank - 1) % n)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    check("send_recv", r, torch.full((c,), (rank - 1) % n + 1, device=dev, dtype=torch.int32))

    # all_reduce bus bandwidth at 64 MiB (nccl-tests definition: size * 2(n-1)/n / time)
    x = torch.ones(16 << 20, device=dev, dtype=torch.float32)
    for _ in range(3):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dist.barrier()
    iters = 10
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    busbw = x.numel() * 4 * 2 * (n - 1) / n / dt / 1e9

    dist.barrier()
    dist.destroy_process_group()
    print("RESULT " + json.dumps({"rank": rank, "nccl": ver, "checks": checks, "busbw": busbw}), flush=True)
    sys.exit(0 if all(checks.values()) else 3)


def driver(args):
    os.makedirs(args.log, exist_ok=True)
    # The rendezvous port is free when picked, but another process (NCCL's bootstrap listens on
    # ephemeral ports too) can take it before rank 0 binds it: then the launch is made again, once,
    # on a new port, and the case says so.
    codes, text = launch(args)
    retried = leaf_launch.port_taken(text)
    if retried:
        codes, text = launch(args)
    return report(args, codes, text, retried)


def launch(args):
    n = args.ranks
    port = leaf_launch.free_port()
    envs, logs = [], []
    for rank in range(n):
        env = dict(os.environ)
        env.update(leaf_launch.placement_env(args, rank, n, port))
        env.update(NCCL_DEBUG="INFO", PYTHONUNBUFFERED="1")
        env.pop("NCCL_MIG_ID", None)
        if args.mig_ids == "distinct":
            env["NCCL_MIG_ID"] = f"MIG-00000000-0000-0000-0000-0000000000{rank:02d}"
        elif args.mig_ids == "same":
            env["NCCL_MIG_ID"] = "MIG-00000000-0000-0000-0000-000000000000"
        if args.preload:
            env["LD_PRELOAD"] = args.preload
        for kv in args.env:
            k, v = kv.split("=", 1)
            env[k] = v
        for name in args.unset:
            env.pop(name, None)
        envs.append(env)
        logs.append(os.path.join(args.log, f"{args.label}.rank{rank}.log"))
    # Once one rank fails, the others get 15 s (they may hang waiting for it).
    return leaf_launch.launch(HERE, envs, logs, args.timeout, grace=15)


def report(args, codes, text, retried):
    n = args.ranks
    codes = ["killed" if c == "timeout" else c for c in codes]
    results = leaf_launch.results(text)
    counts, _ = leaf_launch.transports(text)
    shm, p2p, net = counts["SHM"], counts["P2P"], counts["NET"]
    all_ok = len(results) == n and all(all(r["checks"].values()) for r in results) and all(c == 0 for c in codes)
    # torch.cuda.nccl.version() reports the NCCL torch was built with; the log has the one loaded.
    loaded = re.search(r"NCCL version (\d+\.\d+\.\d+)", text)
    ver = loaded.group(1) if loaded else "-"
    busbw = f"{results[0]['busbw']:.2f}" if results else "-"
    note = ["retried on a new port after a port collision"] if retried else []
    for needle in ("Duplicate GPU detected", "Multiple Ranks are using the same GPU", "flexmig-mig-patch/1"):
        if needle in text:
            note.append(needle)
    bad = sorted({k for r in results for k, v in r["checks"].items() if not v})
    if bad:
        note.append("wrong:" + ",".join(bad))
    if not all_ok:
        note.append("exit=" + ",".join(str(c) for c in codes))
    if args.expect == "ok":
        matched = all_ok
        if args.require_shm and (shm == 0 or p2p > 0):
            matched = False
            note.append("expected SHM only")
    else:
        want = args.expect.split(":", 1)[1] if ":" in args.expect else ""
        matched = (not all_ok) and want in text
    print(
        f"CASE {args.label} ranks={n} result={'PASS' if all_ok else 'FAIL'} expected={args.expect} "
        f"{'OK' if matched else 'UNEXPECTED'} nccl={ver} shm={shm} p2p={p2p} net={net} busbw64M={busbw}GB/s "
        f"note={'|'.join(note) or '-'}",
        flush=True,
    )
    sys.exit(0 if matched else 1)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--ranks", type=int, required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--preload", default="")
    r.add_argument("--mig-ids", choices=["distinct", "same", "none"], default="distinct")
    r.add_argument("--env", action="append", default=[])
    r.add_argument("--unset", action="append", default=[], help="drop a variable the plugin would export")
    r.add_argument("--expect", default="ok")
    r.add_argument("--require-shm", action="store_true")
    leaf_launch.add_placement_args(r)
    r.add_argument("--timeout", type=float, default=180)
    driver(ap.parse_args())


if __name__ == "__main__":
    main()
