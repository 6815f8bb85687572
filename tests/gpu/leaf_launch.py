"""Launching ranks as emulated MIG leaves of one GPU, shared by tests/gpu and bench/.

Each rank gets the environment the flexmig plugin exports for local task `rank` of an
`srun --flexmig -nK` step (spank-plugin/src/binding.rs), with every leaf on GPU 0: MIG mode is
never touched, leaves are emulated by ranks sharing the GPU, each with its own NCCL_MIG_ID.
"""
import json
import re
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mig_id(rank):
    """The emulated leaf's MIG UUID."""
    return f"MIG-f1e0{rank:04x}-0000-4000-8000-000000000000"


def plugin_env(rank, ranks, port, profile="1g.18gb"):
    """What the plugin exports for local task `rank` of a `ranks`-task step on one node."""
    return {
        "CUDA_VISIBLE_DEVICES": "0",
        "NCCL_MIG_ID": mig_id(rank),
        "NCCL_MULTI_RANK_GPU_ENABLE": "1",
        "FLEXMIG_LEAF": mig_id(rank),
        "FLEXMIG_GPU": "0",
        "FLEXMIG_PROFILE": profile,
        "RANK": str(rank),
        "WORLD_SIZE": str(ranks),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def launch(script, envs, log_paths, timeout, grace=10):
    """Starts `python script worker` once per environment, output to its log; waits until all
    exit or `timeout` seconds pass (once one rank fails, the others get `grace` seconds: they
    may hang waiting for it). Returns the exit codes ("timeout" for a killed rank) and the
    concatenated logs."""
    procs = []
    for env, path in zip(envs, log_paths):
        fh = open(path, "w")
        procs.append((subprocess.Popen([sys.executable, script, "worker"], env=env, stdout=fh, stderr=subprocess.STDOUT), fh))
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
