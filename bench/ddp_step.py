#!/usr/bin/env python3
"""A real training step over emulated MIG leaves of one GPU.

  ddp_step.py run --model resnet|transformer --variant patched|net|single --ranks K [--lib L] [--mps]
                  [--compare NAME=K=V[,K=V][;...]]

patched: K ranks, DistributedDataParallel over flexmig's patched NCCL (SHM between leaves);
net:     K ranks over PyTorch's stock NCCL with one NCCL_HOSTID per rank (the NET workaround);
single:  one process with K times the SM share and K times the batch: the same job on one
         bigger instance, no communication.
Ranks get the environment the flexmig plugin exports for `srun --flexmig -nK` (see
spank-plugin/src/binding.rs): CUDA_VISIBLE_DEVICES, NCCL_MIG_ID, NCCL_MULTI_RANK_GPU_ENABLE=1,
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, FLEXMIG_GPU,
FLEXMIG_PROFILE; here all leaves are on GPU 0 (emulated with MPS thread percentages).
Step time = mean of timed steps with gradient sync; communication share = 1 - (step time under
DDP.no_sync()) / (step time with sync). Random data, no downloads.

--compare (patched only): one launch times several exchanges side by side, taking turns, through a
DDP comm hook that does what DDP's default hook does (divide, all-reduce the bucket) on one process
group per NAME, each made with its K=V environment (e.g. hostreduce=FLEXMIG_HOSTREDUCE=on), plus
three references: "none" (no_sync: no exchange, the ceiling), "noop" (the hook returns the bucket:
DDP's bucketing without any exchange) and "tiny" (the hook all-reduces one element per bucket
through NCCL: the ranks wait for each other per bucket, but move no data). Gradients are checked
per NAME. --buffers-off adds "nobuf" and "tiny-nobuf" (noop and tiny with DDP's
broadcast_buffers=False: no broadcast of the module's buffers, BatchNorm's statistics, from rank 0
before each forward; "none" skips it too), "sync-nobuf" (nobuf with one element broadcast from
rank 0 before each forward: the wait for rank 0 that the buffer broadcast imposes, without its
bytes and without flattening the buffers) and every NAME again as NAME-nobuf. Each mode's timed
steps follow one untimed step in its own setting.
Prints `RESULT {json}`.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "tests", "gpu"))
import leaf_launch  # noqa: E402
BATCH = {"resnet": 32, "transformer": 16}
NOBUF = "nobuf"  # a --compare mode with DDP's broadcast_buffers=False
# Reference modes, not exchanges: a --compare NAME must be none of these.
REFS = ("none", "noop", "tiny", "sync")


def build(model, torch):
    if model == "resnet":
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        make = lambda b: (torch.randn(b, 3, 224, 224), torch.randint(0, 1000, (b,)))  # noqa: E731
    else:
        layer = torch.nn.TransformerEncoderLayer(d_model=768, nhead=12, dim_feedforward=3072, batch_first=True)
        enc = torch.nn.TransformerEncoder(layer, num_layers=6)
        head = torch.nn.Linear(768, 1000)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc, self.head = enc, head

            def forward(self, x):
                return self.head(self.enc(x).mean(dim=1))

        net = Net()
        make = lambda b: (torch.randn(b, 256, 768), torch.randint(0, 1000, (b,)))  # noqa: E731
    return net, make


def worker():
    import torch
    import torch.distributed as dist

    model, per_rank_batch = os.environ["BENCH_MODEL"], int(os.environ["BENCH_BATCH"])
    distributed = os.environ.get("BENCH_DDP") == "1"
    compare = json.loads(os.environ.get("BENCH_COMPARE", "[]"))
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    if distributed and compare and os.environ.get("BENCH_DEVICE_ID") != "1":
        # No device_id: each group's communicator is then made by its own ncclCommInitRank (not
        # split from the default one). With --device-id they are split from it (ncclCommSplit),
        # as PyTorch does for a user's new_group; either way the environment at creation applies.
        dist.init_process_group("nccl")
    elif distributed:
        dist.init_process_group("nccl", device_id=dev)
    torch.manual_seed(0)
    net, make = build(model, torch)
    net = net.to(dev)
    params = sum(p.numel() for p in net.parameters())
    if distributed:
        # gradient_as_bucket_view: gradients live in DDP's buckets, so no copy into them (an option
        # of the user's code, measured to show what it saves).
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0], gradient_as_bucket_view=os.environ.get("BENCH_BUCKET_VIEW") == "1")
    hook = compare_hook(net, compare, torch, dist, dev) if distributed and compare else None
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = make(per_rank_batch)
    x, y = x.to(dev), y.to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    def timed(n, sync=True):
        if distributed:
            dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            if sync or not distributed:
                step()
            else:
                with net.no_sync():
                    step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / n
        if distributed:
            t = torch.tensor([dt], device=dev, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dt = t.item()
        return dt

    rank = int(os.environ.get("RANK", "0"))
    if hook:
        modes = ["none", "noop", "tiny"] + [name for name, _ in compare]
        if os.environ.get("BENCH_BUFFERS_OFF") == "1" and any(True for _ in net.module.buffers()):
            # The same exchanges with DDP's broadcast_buffers=False (an option of the user's code:
            # no broadcast of BatchNorm's running statistics from rank 0 before every forward).
            modes += [NOBUF, "tiny-" + NOBUF, "sync-" + NOBUF] + [name + "-" + NOBUF for name, _ in compare]

        rounds = {m: [] for m in modes}

        def select(m):
            """Sets the hook's exchange and DDP's buffer broadcast for mode m."""
            net.broadcast_buffers = not (m == NOBUF or m.endswith("-" + NOBUF))
            base = "noop" if m in ("none", NOBUF) else m.removesuffix("-" + NOBUF)
            hook["mode"] = base

        for m in modes:  # warm-up, every exchange once
            select(m)
            step()
        for _ in range(2):  # taking turns, so drift hits every mode alike
            for m in modes:
                select(m)
                # One step untimed in the mode's own setting: the first synced forward after
                # no_sync() skips DDP's buffer broadcast, and the first after a change of exchange
                # would carry the previous one's tail.
                if m == "none":
                    with net.no_sync():
                        step()
                else:
                    step()
                rounds[m].append(timed(10, sync=m != "none"))
        res = {"params": params, "compare": {}, "settle_steps": 1}
        for m in modes:
            select(m)
            ok = grads_check(net, x, y, loss_fn, torch, dist, dev) if hook["mode"] in dict(compare) else None
            res["compare"][m] = {"step_s": sum(rounds[m]) / len(rounds[m]), "rounds": rounds[m], "grads_ok": ok}
        dist.destroy_process_group()
        if rank == 0:
            print("RESULT " + json.dumps(res), flush=True)
        return
    for _ in range(3):
        step()
    t_sync = timed(10)
    t_nosync = timed(10, sync=False) if distributed else t_sync
    t_sync2 = timed(10)  # again, so drift shows
    res = {"params": params, "step_s": (t_sync + t_sync2) / 2, "step_nosync_s": t_nosync, "step_s_first": t_sync, "step_s_second": t_sync2}
    if distributed:
        res["grads_ok"] = grads_check(net, x, y, loss_fn, torch, dist, dev)
        dist.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


def compare_hook(net, compare, torch, dist, dev):
    """Makes one process group per (name, env) of `compare` (its communicator created while env is
    set) and registers a comm hook on `net` that exchanges through the group of the current mode.
    Returns the hook's state: set state["mode"] to pick the exchange."""
    k = dist.get_world_size()
    ranks = list(range(k))

    def group(env):
        return leaf_launch.group_with_env(torch, dist, dev, ranks, env)

    state = {"mode": "noop", "groups": {name: group(env) for name, env in compare}, "tiny": torch.zeros(1, device=dev)}
    state["tiny_group"] = group({"FLEXMIG_HOSTREDUCE": "off"})

    def hook(st, bucket):
        buf = bucket.buffer()
        mode = st["mode"]
        if mode in ("noop", "sync"):
            fut = torch.futures.Future()
            fut.set_result(buf)
            return fut
        if mode == "tiny":
            work = dist.all_reduce(st["tiny"], group=st["tiny_group"], async_op=True)
            return work.get_future().then(lambda _: buf)
        buf.div_(k)  # what DDP's default hook does: average as a sum of the divided gradients
        work = dist.all_reduce(buf, group=st["groups"][mode], async_op=True)
        return work.get_future().then(lambda f: f.value()[0])

    def before_forward(_module, _inputs):
        # "sync": the ranks wait for rank 0 before the forward, as DDP's buffer broadcast (from
        # rank 0) makes them, but with one element and no buffers to flatten and copy back.
        if state["mode"] == "sync":
            dist.broadcast(state["tiny"], src=0, group=state["tiny_group"])

    net.register_comm_hook(state, hook)
    net.register_forward_pre_hook(before_forward)
    return state


def grads_check(net, x, y, loss_fn, torch, dist, dev):
    """The gradients DDP all-reduced arrived right: every rank holds the same bytes, and since
    every rank has the same data, their average is (up to rounding) the rank's own gradient.
    In eval mode, so that dropout and batch statistics do not differ between the two passes."""
    net.eval()
    net.zero_grad(set_to_none=True)
    with net.no_sync():
        loss_fn(net(x), y).backward()
    local = torch.cat([p.grad.detach().reshape(-1).clone() for p in net.parameters()])
    net.zero_grad(set_to_none=True)
    loss_fn(net(x), y).backward()
    synced = torch.cat([p.grad.detach().reshape(-1) for p in net.parameters()])
    ref = synced.clone()
    dist.broadcast(ref, src=0)
    ok = torch.equal(synced, ref) and torch.allclose(synced, local, rtol=1e-2, atol=1e-4)
    flag = torch.tensor([1 if ok else 0], device=dev, dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    net.train()
    return bool(flag.item())


def run(a):
    k = a.ranks
    nproc = 1 if a.variant == "single" else k
    port = leaf_launch.free_port()
    os.makedirs(a.log, exist_ok=True)
    spread = f"-spread{a.gpus}" if a.gpus > 1 and a.variant != "single" else ""
    if a.placement and a.variant != "single":
        spread = "-placed" + "-".join(map(str, a.placement))
    label = f"{a.model}-{a.variant}{'-mps' if a.mps else ''}-{k}{spread}{('-' + a.tag) if a.tag else ''}"
    envs, logs = [], []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            BENCH_MODEL=a.model, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", CUDA_VISIBLE_DEVICES="0", NCCL_DEBUG="INFO",
            BENCH_BATCH=str(BATCH[a.model] * (k if a.variant == "single" else 1)),
            BENCH_DDP="0" if a.variant == "single" else "1",
        )
        env.pop("LD_PRELOAD", None)
        if a.compare:
            env["BENCH_COMPARE"] = json.dumps(a.compare)
        if a.bucket_view:
            env["BENCH_BUCKET_VIEW"] = "1"
        if a.buffers_off:
            env["BENCH_BUFFERS_OFF"] = "1"
        if a.device_id:
            env["BENCH_DEVICE_ID"] = "1"
        if a.variant != "single":
            env.update(leaf_launch.placement_env(a, rank, k, port))
        if a.variant == "patched":
            env["LD_PRELOAD"] = a.lib
        if a.variant == "net":
            env["NCCL_HOSTID"] = f"flexmig-leaf-{rank}"
            env["NCCL_SOCKET_IFNAME"] = "lo"
            env.pop("NCCL_MIG_ID", None)
        for kv in a.env:
            key, val = kv.split("=", 1)
            env[key] = val
        if a.mps:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(min(100, a.mps_percent * (k if a.variant == "single" else 1)))
        envs.append(env)
        logs.append(os.path.join(a.log, f"{label}.rank{rank}.log"))
    codes, text = leaf_launch.launch(HERE, envs, logs, a.timeout)
    res = leaf_launch.results(text)
    _, via = leaf_launch.transports(text)
    out = {"label": label, "model": a.model, "variant": a.variant, "ranks": k, "bucket_view": a.bucket_view, "groups": "split" if a.device_id else "own", "gpus": 1 if a.variant == "single" else max(a.gpus, len(a.placement or [])), "placement": a.placement, "plugin_max_channels": a.plugin_max_channels, "mps": a.mps, "env": a.env, "tag": a.tag, "exit": codes, "via": via, "ce_proxy": leaf_launch.ce_proxy(text)}
    if res and "compare" in res[0]:
        out.update(res[0])
        ceiling = out["compare"]["none"]["step_s"]
        for m, c in out["compare"].items():
            c["samples_per_s"] = BATCH[a.model] * k / c["step_s"]
            c["comm_share"] = max(0.0, 1 - ceiling / c["step_s"])
    elif res:
        r = res[0]
        out.update(r)
        out["comm_share"] = max(0.0, 1 - r["step_nosync_s"] / r["step_s"]) if a.variant != "single" else 0.0
        out["samples_per_s"] = BATCH[a.model] * k / r["step_s"]
    else:
        out["error"] = (text.strip().splitlines() or ["no output"])[-1][:300]
    print("RESULT " + json.dumps(out), flush=True)
    if res and "compare" in out:
        s = "; ".join(f"{m} {c['samples_per_s']:.0f}/s {c['comm_share'] * 100:.1f}%{' WRONG GRADIENTS' if c['grads_ok'] is False else ''}" for m, c in out["compare"].items())
    else:
        s = f"{out['samples_per_s']:.1f} samples/s, step {out['step_s'] * 1e3:.1f} ms, comm {out['comm_share'] * 100:.0f}%" if res else out["error"]
    if out.get("grads_ok") is False:
        s += " WRONG GRADIENTS"
    print(f"  {label:<32} {','.join(via)} {s}", file=sys.stderr, flush=True)


def compare_spec(text):
    """'nccl=FLEXMIG_HOSTREDUCE=off;t2=FLEXMIG_HOSTREDUCE=on,FLEXMIG_HOSTREDUCE_THREADS=2' to
    [(name, {K: V})]; the names of REFS and nobuf, and any NAME-nobuf, are the references."""
    out = []
    for entry in filter(None, text.split(";")):
        name, _, kvs = entry.partition("=")
        if not name or name in REFS + (NOBUF,) or name.endswith("-" + NOBUF) or not kvs:
            raise argparse.ArgumentTypeError(f"{entry!r}: want NAME=K=V[,K=V], NAME not {'/'.join(REFS + (NOBUF,))} nor ending in -{NOBUF}")
        out.append((name, dict(kv.split("=", 1) for kv in kvs.split(","))))
    return out


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", choices=["resnet", "transformer"], required=True)
    r.add_argument("--variant", choices=["patched", "net", "single"], required=True)
    r.add_argument("--ranks", type=int, required=True)
    r.add_argument("--lib", default="")
    r.add_argument("--mps", action="store_true")
    r.add_argument("--mps-percent", type=int, default=14)
    r.add_argument("--env", action="append", default=[], help="extra K=V for every rank")
    r.add_argument("--tag", default="")
    r.add_argument("--bucket-view", action="store_true", help="DDP with gradient_as_bucket_view=True")
    r.add_argument("--buffers-off", action="store_true", help=f"with --compare: also the reference {NOBUF!r} and each exchange as NAME-{NOBUF}, with broadcast_buffers=False (models with buffers)")
    r.add_argument("--device-id", action="store_true", help="with --compare: init_process_group(device_id=...), so the compared groups are split from the default one")
    r.add_argument("--compare", type=compare_spec, default=[], help="NAME=K=V[,K=V][;...]: exchanges timed side by side through a comm hook")
    leaf_launch.add_placement_args(r)
    r.add_argument("--log", default="/tmp/flexmig-bench/ddp-logs")
    r.add_argument("--timeout", type=float, default=120)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
