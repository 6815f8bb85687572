"""Launching ranks as emulated MIG leaves of one GPU, shared by tests/gpu and bench/.

Each rank gets the environment the flexmig plugin exports for local task `rank` of an
`srun --flexmig -nK` step (spank-plugin/src/binding.rs). MIG mode is never touched: leaves are
emulated by ranks sharing a GPU, each with its own NCCL_MIG_ID. With `gpus` > 1 the leaves are
spread over GPUs 0..gpus-1 in the plugin's round-robin order; with 1 they are packed on GPU 0.
bench/check.sh (run by scripts/test.sh) compares plugin_env() with the plugin's own
binding::plan_task for 1 and 2 GPUs and 2 to 14 leaves, so the two cannot drift apart.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(text):
    """Whether a launch failed because its rendezvous port was taken before rank 0 bound it."""
    return "EADDRINUSE" in text and "failed to listen" in text


def mig_id(rank):
    """The emulated leaf's MIG UUID."""
    return f"MIG-f1e0{rank:04x}-0000-4000-8000-000000000000"


def leaf_gpu(rank, gpus):
    """The GPU of local task `rank` when a step holds the same number of leaves on each of `gpus`
    GPUs (or one more on the first ones): the plugin orders leaves round-robin over the GPUs
    (leaf 0 of every GPU, then leaf 1, ...: binding.rs, balanced_leaves), so task r is on GPU r % gpus."""
    return rank % gpus


def group_with_env(torch, dist, dev, ranks, env):
    """A new process group of `ranks` whose NCCL communicator is made while `env` is set (so
    that, e.g., its FLEXMIG_HOSTREDUCE applies to it), the environment restored afterwards. Made
    by ncclCommInitRank where the default group has no device_id, else split from it
    (ncclCommSplit); the host-reduce library reads the environment at either."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        g = dist.new_group(ranks)
        dist.all_reduce(torch.ones(1024, device=dev), group=g)  # the communicator is made here
        torch.cuda.synchronize()
    finally:
        for key, v in saved.items():
            if v is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = v
    return g


def placed_gpus(counts):
    """The GPU of each local task when the step holds counts[g] leaves of GPU g (a job Slurm
    placed unevenly, e.g. [4, 2]): the plugin's round-robin over the GPUs that still have leaves
    (binding.rs, balanced_leaves): [4, 2] gives GPUs 0, 1, 0, 1, 0, 0."""
    left, out = list(counts), []
    while any(left):
        for g, n in enumerate(left):
            if n:
                out.append(g)
                left[g] -= 1
    return out


def placement_arg(value):
    """argparse type for --placement: leaves per GPU, "4,2"."""
    counts = [int(v) for v in value.split(",")]
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"--placement {value}: leaves per GPU, e.g. 4,2")
    return counts


def placement_env(args, rank, ranks, port):
    """plugin_env() for a driver's parsed add_placement_args() options; a --placement must
    number as many leaves as the step has ranks."""
    if args.placement and sum(args.placement) != ranks:
        raise SystemExit(f"--placement {','.join(map(str, args.placement))} holds {sum(args.placement)} leaves, the step has {ranks} ranks")
    return plugin_env(rank, ranks, port, gpus=max(args.gpus, len(args.placement or [])), max_channels=args.plugin_max_channels, placement=args.placement)


def plugin_env(rank, ranks, port, profile="1g.18gb", gpus=1, max_channels=None, placement=None):
    """What the plugin exports for local task `rank` of a `ranks`-task step on one node whose
    leaves lie on `gpus` GPUs (evenly; or `placement[g]` leaves on GPU g), with plugstack
    `nccl_max_channels=max_channels` (None: `off`; the plugin's default is 2)."""
    gpu = str(placed_gpus(placement)[rank] if placement else leaf_gpu(rank, gpus))
    extra = {"NCCL_MAX_NCHANNELS": str(max_channels)} if max_channels else {}
    return extra | {
        "CUDA_VISIBLE_DEVICES": gpu,
        "NCCL_MIG_ID": mig_id(rank),
        "NCCL_MULTI_RANK_GPU_ENABLE": "1",
        "NCCL_NVLS_ENABLE": "0",
        "NCCL_MNNVL_ENABLE": "0",
        "FLEXMIG_LEAF": mig_id(rank),
        "FLEXMIG_GPU": gpu,
        "FLEXMIG_PROFILE": profile,
        "RANK": str(rank),
        "WORLD_SIZE": str(ranks),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def channels_arg(value):
    """argparse type for --plugin-max-channels: a count or `off`, as nccl_max_channels= takes."""
    return None if value == "off" else int(value)


def add_placement_args(parser):
    """The drivers' options for plugin_env(): --gpus (or --placement) and --plugin-max-channels."""
    parser.add_argument("--gpus", type=int, default=1, help="spread the leaves round-robin over GPUs 0..G-1, as the plugin does")
    parser.add_argument("--placement", type=placement_arg, default=None, help="leaves per GPU instead, e.g. 4,2 (the ranks then number their sum)")
    parser.add_argument("--plugin-max-channels", type=channels_arg, default=None, help="the plugin's nccl_max_channels= (N or off; default off: NCCL chooses)")


def _die_with_parent():
    """In each rank, before exec: die when the driver dies (PR_SET_PDEATHSIG), so that a driver
    killed by an outer timeout leaves no hung rank holding the GPU or the MPS server."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def launch(script, envs, log_paths, timeout, grace=10):
    """Starts `python script worker` once per environment, output to its log; waits until all
    exit or `timeout` seconds pass (once one rank fails, the others get `grace` seconds: they
    may hang waiting for it). Returns the exit codes ("timeout" for a killed rank) and the
    concatenated logs."""
    procs = []
    for env, path in zip(envs, log_paths):
        fh = open(path, "w")
        procs.append((subprocess.Popen([sys.executable, script, "worker"], env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent), fh))
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p, _ in procs):
        if any(p.poll() not in (None, 0) for p, _ in procs):
            deadline = min(deadline, time.time() + grace)
        time.sleep(0.2)
    codes = []
    for p, fh in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
            codes.append("timeout")
        else:
            codes.append(p.returncode)
        fh.close()
    text = ""
    for path in log_paths:
        with open(path, errors="replace") as fh:
            text += fh.read()
    return codes, text


def results(text):
    """The JSON payloads of the `RESULT {...}` lines workers print."""
    return [json.loads(l[len("RESULT "):]) for l in text.splitlines() if l.startswith("RESULT ")]


def connections(text):
    """NCCL's INFO lines that say how two ranks are connected (`... via SHM/direct/direct`)."""
    return [l for l in text.splitlines() if re.search(r"Channel \d+(/\d+)? : \d+\[\d+\] -> \d+\[\d+\]", l)]


def transports(text):
    """Counts of connection lines per transport, and the distinct `via` forms."""
    conn = connections(text)
    counts = {t: sum(f" via {t}" in l for l in conn) for t in ("SHM", "P2P", "NET")}
    via = sorted({m.group(1) for l in conn for m in [re.search(r" via (\S+)", l)] if m})
    return counts, via


def ce_proxy(text):
    """Who drives the copy engines when NCCL's SHM transport uses them ("SHM/CE/..."): "direct" for
    flexmig's patched library (the rank's own thread enqueues them; it logs `flexmig-shm-ce/1: copy
    engines driven`), "proxy" for NCCL's proxy thread (stock, or NCCL_SHM_CE_DIRECT=0), None when no
    copy engine is used."""
    _, via = transports(text)
    if not any("CE" in v for v in via):
        return None
    return "direct" if "flexmig-shm-ce/1: copy engines driven" in text else "proxy"
