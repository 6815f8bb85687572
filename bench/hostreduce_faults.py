#!/usr/bin/env python3
"""The host-reduction library (hostreduce/) where things go wrong, on a GPU machine: a rank killed
with SIGKILL in the middle of all-reduces, a CUDA graph capture, CUDA_LAUNCH_BLOCKING=1. Ranks are
emulated leaves of GPU 0 (tests/gpu/leaf_launch.py) on PyTorch's stock NCCL with one NCCL_HOSTID
per rank (no NCCL build needed; the library recognises one host by host name and boot id, not by
NCCL's host hash, so the host path is taken all the same).

  hostreduce_faults.py --hostreduce LIB [--cases kill,graph,blocking] [--timeout 90]

Prints one `CASE {json}` line per case and exits 1 if any case did not behave:
- kill: 3 ranks all-reduce 64 MiB in a loop with FLEXMIG_HOSTREDUCE=on; rank 2 kills itself after
  3 calls. The others must end (an error raised, or PyTorch's watchdog aborting the process) within
  30 s of its death, and no /dev/shm/flexmig-hr-* file may be left.
- graph: 2 ranks capture an all-reduce into a CUDA graph (the library must hand it to NCCL) and
  replay it; the result must be right and the library's count must show the call went to NCCL.
- blocking: 2 ranks with CUDA_LAUNCH_BLOCKING=1: the communicator must take NCCL (path=nccl).
"""
import argparse
import glob
import json
import os
import re
import signal
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "tests", "gpu"))
import leaf_launch  # noqa: E402


def worker():
    import torch
    import torch.distributed as dist

    case, rank, k = os.environ["FAULT_CASE"], int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    out = {"rank": rank}
    if case == "kill":
        x = torch.ones(16 << 20, device=dev)
        calls = 0
        try:
            while calls < 1000:
                if rank == 2 and calls == 3:
                    torch.cuda.synchronize()
                    with open(os.environ["FAULT_STAMP"], "w") as fh:
                        fh.write(str(time.time()))
                    os.kill(os.getpid(), signal.SIGKILL)
                dist.all_reduce(x)
                torch.cuda.synchronize()
                calls += 1
            out["error"] = None
        except Exception as e:  # noqa: BLE001 - any error is the expected outcome here
            out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        out["calls"] = calls
        out["ended"] = time.time()
        print("RESULT " + json.dumps(out), flush=True)
        os._exit(0)
    if case == "graph":
        x = torch.full((1 << 20,), float(rank + 1), device=dev)
        dist.all_reduce(x)  # warm-up outside the graph (host path)
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            with torch.cuda.graph(g, stream=s):
                dist.all_reduce(x)
        torch.cuda.synchronize()
        x.fill_(float(rank + 1))
        g.replay()
        torch.cuda.synchronize()
        out["correct"] = bool(torch.all(x == k * (k + 1) / 2))
        # A graph that still holds NCCL work makes destroy_process_group wait forever, with or
        # without this library (stock NCCL alike): release it first, as training code must.
        del g
        torch.cuda.synchronize()
    if case == "blocking":
        x = torch.full((1 << 20,), float(rank + 1), device=dev)
        dist.all_reduce(x)
        torch.cuda.synchronize()
        out["correct"] = bool(torch.all(x == k * (k + 1) / 2))
    dist.barrier()
    print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def launch(case, k, lib, timeout, extra=None):
    port = leaf_launch.free_port()
    logdir = tempfile.mkdtemp(prefix=f"hr-fault-{case}-")
    stamp = os.path.join(logdir, "death")
    envs, logs = [], []
    for rank in range(k):
        env = dict(os.environ)
        env.update(leaf_launch.plugin_env(rank, k, port))
        env.update(NCCL_HOSTID=f"flexmig-leaf-{rank}", NCCL_SOCKET_IFNAME="lo", NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1",
                   FLEXMIG_HOSTREDUCE="on", FLEXMIG_HOSTREDUCE_DEBUG="1", LD_PRELOAD=lib, FAULT_CASE=case, FAULT_STAMP=stamp)
        env.pop("NCCL_MIG_ID", None)  # stock NCCL: the NET workaround
        env.update(extra or {})
        envs.append(env)
        logs.append(os.path.join(logdir, f"rank{rank}.log"))
    codes, text = leaf_launch.launch(HERE, envs, logs, timeout, grace=40)
    return codes, text, stamp, logdir


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--hostreduce", required=True)
    ap.add_argument("--cases", default="kill,graph,blocking")
    ap.add_argument("--timeout", type=int, default=90)
    a = ap.parse_args()
    failed = 0
    for case in a.cases.split(","):
        before = set(glob.glob("/dev/shm/flexmig-hr-*"))
        if case == "kill":
            codes, text, stamp, logdir = launch(case, 3, a.hostreduce, a.timeout)
            finished = time.time()
            res = leaf_launch.results(text)
            death = float(open(stamp).read()) if os.path.exists(stamp) else None
            ends = [r["ended"] - death for r in res if death]
            gone = finished - death if death else None
            ok = death is not None and codes[2] != 0 and all(c != "timeout" for c in codes) and gone < 30
            line = {"case": case, "exit": codes, "survivors": res, "error_raised_s_after_death": [round(e, 2) for e in ends],
                    "all_ended_s_after_death": round(gone, 2) if gone else None}
        else:
            extra = {"CUDA_LAUNCH_BLOCKING": "1"} if case == "blocking" else {}
            codes, text, stamp, logdir = launch(case, 2, a.hostreduce, a.timeout, extra)
            res = leaf_launch.results(text)
            counts = re.findall(r"(\d+) all-reduces on the host path, (\d+) through NCCL", text)
            paths = re.findall(r"path=(\S+) \(([^)]*)\)", text)
            line = {"case": case, "exit": codes, "results": res, "paths": paths, "counts": counts}
            ok = all(c == 0 for c in codes) and len(res) == 2 and all(r.get("correct") for r in res)
            if case == "graph":
                ok = ok and bool(counts) and all(int(n) >= 1 for _, n in counts)
            if case == "blocking":
                ok = ok and bool(paths) and all(p == "nccl" and "CUDA_LAUNCH_BLOCKING" in why for p, why in paths)
        left = sorted(set(glob.glob("/dev/shm/flexmig-hr-*")) - before)
        line.update(ok=ok and not left, leftovers=left, log=logdir,
                    tail=[l for l in text.splitlines() if "flexmig-hostreduce" in l or "Error" in l][-8:])
        failed += not line["ok"]
        print("CASE " + json.dumps(line), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
