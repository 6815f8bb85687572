#!/usr/bin/env bash
# CI check of the GPU benchmark and test scripts, no GPU needed:
# 1. every Python script compiles, and the launcher's plugin environment follows the plugin's
#    round-robin order and its nccl_max_channels= argument;
# 2. bench/results/nccl/report.md is exactly what bench/nccl_leaves_report.py makes of the
#    committed raw results, every raw result there is read by a section of the report (or kept
#    out on purpose, and cited), and BENCHMARKS.md with bench/NOTES.md quotes its tables unchanged
#    (the numbers in those tables come from the scripts, not by hand).
# Needs python3 (no third-party modules; plots are skipped without matplotlib).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
python3 - <<'PY'
import ast, glob, sys
for f in sorted(glob.glob("bench/*.py") + glob.glob("tests/gpu/*.py")):
    ast.parse(open(f).read(), f)
sys.dont_write_bytecode = True
sys.path.insert(0, "tests/gpu")
import leaf_launch as L
# 7 leaves over 2 GPUs: ranks alternate GPUs, every rank its own MIG id, one rendezvous.
envs = [L.plugin_env(r, 7, 29500, gpus=2) for r in range(7)]
assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1", "0", "1", "0"], envs
assert len({e["NCCL_MIG_ID"] for e in envs}) == 7
assert all(e["FLEXMIG_GPU"] == e["CUDA_VISIBLE_DEVICES"] and e["MASTER_PORT"] == "29500" for e in envs)
assert all("NCCL_MAX_NCHANNELS" not in e for e in envs)
assert L.plugin_env(0, 2, 1, max_channels=L.channels_arg("2"))["NCCL_MAX_NCHANNELS"] == "2"
assert L.channels_arg("off") is None
# A rendezvous port taken before rank 0 bound it is recognised (the launch is then made again).
assert L.port_taken("DistNetworkError: The server socket has failed to listen on any local network address. port: 36183, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")
assert not L.port_taken("NCCL WARN Duplicate GPU detected")
# Which path a run's copy engines took, from NCCL's own log lines (recorded as ce_proxy).
conn = "vm:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] via SHM/{}/{}\n"
direct = "vm:1:1 [0] NCCL INFO flexmig-shm-ce/1: copy engines driven from the rank's stream, no proxy thread\n"
assert L.ce_proxy(conn.format("direct", "direct")) is None
assert L.ce_proxy(conn.format("CE", "CE")) == "proxy"
assert L.ce_proxy(conn.format("direct", "CE") + direct) == "direct"
print("bench/check: scripts compile")
PY
for f in bench/*.sh tests/gpu/*.sh; do bash -n "$f"; done
echo "bench/check: shell scripts parse"
# A rank never outlives its driver: a driver killed from outside (an outer timeout, SIGKILL)
# must not leave hung ranks holding the GPU or the MPS server for the next run.
python3 - <<'PY'
import os, signal, subprocess, sys, tempfile, textwrap, time
d = tempfile.mkdtemp()
worker = os.path.join(d, "w.py")
open(worker, "w").write("import os, sys, time\nif sys.argv[1] == 'worker':\n    open(sys.argv[0] + '.pids', 'a').write(f'{os.getpid()}\\n')\n    time.sleep(60)\n")
driver = textwrap.dedent(f"""
    import os, sys
    sys.path.insert(0, "tests/gpu")
    import leaf_launch
    leaf_launch.launch({worker!r}, [dict(os.environ)] * 2, [{worker!r} + ".0", {worker!r} + ".1"], 60)
""")
p = subprocess.Popen([sys.executable, "-c", driver])
pids_file = worker + ".pids"
for _ in range(100):
    if os.path.exists(pids_file) and len(open(pids_file).read().split()) == 2:
        break
    time.sleep(0.1)
pids = [int(x) for x in open(pids_file).read().split()]
assert len(pids) == 2, pids
p.kill()
p.wait()
def state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
for _ in range(50):
    if all(state(x) in ("Z", "X", "gone") for x in pids):
        break
    time.sleep(0.1)
alive = [x for x in pids if state(x) not in ("Z", "X", "gone")]
for x in alive:
    os.kill(x, signal.SIGKILL)
assert not alive, f"ranks {alive} outlived their killed driver"
print("bench/check: ranks die with their driver")
PY
# The launcher's environment against the plugin's own code (binding::plan_task, through
# spank-plugin/examples/plan_env.rs): the same variables, and the same values wherever the
# emulation does not have to differ. By design they differ in what names a device or a port:
# CUDA_VISIBLE_DEVICES (the GPU index: MIG is off where the benchmarks run), the MIG ids,
# FLEXMIG_PROFILE, MASTER_ADDR and MASTER_PORT.
cargo build -q -p flexmig-spank --example plan_env
PLAN_ENV="${CARGO_TARGET_DIR:-$REPO/target}/debug/examples/plan_env"
python3 - "$PLAN_ENV" <<'PY'
import subprocess, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "tests/gpu")
import leaf_launch as L
SAME = ["NCCL_MULTI_RANK_GPU_ENABLE", "NCCL_NVLS_ENABLE", "NCCL_MNNVL_ENABLE", "FLEXMIG_GPU", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NCCL_MAX_NCHANNELS"]
n = 0
SHAPES = [(1, 2, None), (1, 4, None), (1, 7, None), (2, 2, None), (2, 4, None), (2, 7, None), (2, 14, None)]
# Jobs Slurm placed unevenly over two GPUs (the placements of the two-GPU benchmark).
SHAPES += [(2, sum(p), p) for p in ([6, 0], [5, 1], [4, 2], [3, 3], [1, 5])]
for gpus, tasks, placed in SHAPES:
    for ch in ("off", "2"):
        shape = ["--placement", ",".join(map(str, placed))] if placed else ["--gpus", str(gpus), "--tasks", str(tasks)]
        out = subprocess.run([sys.argv[1], *shape, "--max-channels", ch], check=True, capture_output=True, text=True).stdout
        real = {}
        for line in out.splitlines():
            t, kv = line.split(" ", 1)
            k, v = kv.split("=", 1)
            real.setdefault(int(t), {})[k] = v
        emu = {t: L.plugin_env(t, tasks, 29500, gpus=gpus, max_channels=L.channels_arg(ch), placement=placed) for t in range(tasks)}
        for t in range(tasks):
            r, e = real[t], emu[t]
            assert set(r) == set(e), f"{gpus} GPUs, {tasks} tasks, channels {ch}, task {t}: plugin {sorted(r)} launcher {sorted(e)}"
            for k in SAME:
                assert r.get(k) == e.get(k), f"{gpus} GPUs, {tasks} tasks, task {t}: {k} plugin {r.get(k)} launcher {e.get(k)}"
            assert r["CUDA_VISIBLE_DEVICES"] == r["NCCL_MIG_ID"] == r["FLEXMIG_LEAF"]
        for env in (real, emu):
            assert len({env[t]["NCCL_MIG_ID"] for t in range(tasks)}) == tasks, "one leaf per task"
            assert len({env[t]["MASTER_PORT"] for t in range(tasks)}) == 1, "one rendezvous per step"
        n += 1
print(f"bench/check: the launcher exports the plugin's variables ({n} step shapes compared with binding::plan_task)")
PY
R=bench/results/nccl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# No files named: the report script reads the raw results its MANIFEST names, from $R.
python3 bench/nccl_leaves_report.py --results "$R" --out "$tmp" --no-plots >/dev/null
diff -u "$R/report.md" "$tmp/report.md"
echo "bench/check: $R/report.md is reproduced from the raw results"
# ... every row of its tables is quoted unchanged in BENCHMARKS.md or bench/NOTES.md (the summary
# and the record behind it), and a table there under one of report.md's header rows holds only
# rows of that table of report.md, unchanged (no altered or hand-made rows among quoted ones).
python3 - "$R/report.md" BENCHMARKS.md bench/NOTES.md <<'PY'
import sys
def tables(path):
    """The markdown tables of a file: lists of their rows (header first, no |---| line)."""
    out, cur = [], None
    for l in open(path).read().splitlines():
        if l.startswith("|"):
            if cur is None:
                cur = []
                out.append(cur)
            if not l.startswith("|---"):
                cur.append(l)
        else:
            cur = None
    return out
report = {}
for t in tables(sys.argv[1]):
    report.setdefault(t[0], set()).update(t)
rows = {l for t in report.values() for l in t}
quoted, problems = set(), []
for doc in sys.argv[2:]:
    for t in tables(doc):
        quoted.update(t)
        if t[0] in report:
            problems += [f"{doc}: {l}" for l in t[1:] if l not in report[t[0]]]
assert not problems, "these rows, in tables under a header of report.md, are not rows of that table (altered?):\n" + "\n".join(problems)
missing = sorted(rows - quoted)
assert not missing, "neither BENCHMARKS.md nor bench/NOTES.md quotes these rows of report.md (or they were altered):\n" + "\n".join(missing)
print(f"bench/check: BENCHMARKS.md and bench/NOTES.md quote all {len(rows)} table rows of report.md, unchanged")
PY
# Every file in bench/results/nccl/ is accounted for by bench/nccl_leaves_report.py:
# - outputs of the report script: report.md and the *.png plots;
# - console transcripts (what a command printed; no section parses them): every *.console.txt
#   (the console of a bench/ run, beside its .jsonl) and the captures named in TRANSCRIPTS
#   (run6-topology.txt, run8-nccl-mig-summary.txt, run36-graph-refusals.txt);
# - raw results: everything else (.jsonl, .json, .csv and any other .txt). Each must be read by a
#   section of MANIFEST, or be named in KEPT_OUT (kept out of the tables on purpose) and be cited
#   in BENCHMARKS.md or bench/NOTES.md, by its name or its run prefix (run25-... as `run25`).
python3 - "$R" BENCHMARKS.md bench/NOTES.md <<'PY'
import os, re, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import nccl_leaves_report as rep
results, prose = sys.argv[1], "\n".join(open(f).read() for f in sys.argv[2:])
read = {f for files in rep.MANIFEST.values() for f in files}
problems = []
for name in sorted(set(read) | set(rep.KEPT_OUT) | set(rep.TRANSCRIPTS)):
    if not os.path.isfile(os.path.join(results, name)):
        problems.append(f"{name}: named by the report script, not in {results}/")
for name in sorted(read & (set(rep.KEPT_OUT) | set(rep.TRANSCRIPTS))):
    problems.append(f"{name}: read by a section, and listed as kept out or as a transcript")
raw = 0
for name in sorted(os.listdir(results)):
    if name == "report.md" or name.endswith(".png") or name.endswith(".console.txt") or name in rep.TRANSCRIPTS:
        continue
    raw += 1
    if name in read:
        continue
    if name in rep.KEPT_OUT:
        stem = name.split(".")[0]
        if not re.search(r"\b(%s|%s)\b" % (re.escape(stem), re.escape(stem.split("-")[0])), prose):
            problems.append(f"{name}: kept out of the report (KEPT_OUT), but neither BENCHMARKS.md nor bench/NOTES.md cites it")
        continue
    problems.append(f"{name}: raw results that no section of bench/nccl_leaves_report.py's MANIFEST reads (add it to a section, or to KEPT_OUT or TRANSCRIPTS with the reason)")
assert not problems, "\n".join(problems)
print(f"bench/check: every raw result in {results}/ is read by a report section ({len(read)}) or kept out on purpose ({len(rep.KEPT_OUT)}), of {raw}")
PY

# 4. The host-reduction report: bench/results/hostreduce/report.md is what
#    bench/hostreduce_report.py makes of the committed runs (its RUNS, and every raw result there is
#    one of them), and every table row of BENCHMARKS.md's "Host-side reduction between leaves" is a
#    row of it, unchanged.
python3 - <<'PY'
import contextlib, io, os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import hostreduce_report as hr
d = "bench/results/hostreduce"
problems = []
for name in sorted(os.listdir(d)):
    if name.endswith(".jsonl") and name not in hr.RUNS:
        problems.append(f"{d}/{name}: raw results that bench/hostreduce_report.py's RUNS does not name")
cwd = os.getcwd()
os.chdir(d)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    sys.argv = ["hostreduce_report.py"]
    hr.main()
os.chdir(cwd)
committed = open(os.path.join(d, "report.md")).read()
if out.getvalue() != committed:
    problems.append(f"{d}/report.md is not what bench/hostreduce_report.py makes of RUNS (run it there and commit the result)")
import prose_numbers as pn
rows = set(l for l in committed.splitlines() if l.startswith("|"))
b = open("BENCHMARKS.md").read()
section = pn.section(b, "Host-side reduction between leaves")
quoted = [l for l in section.splitlines() if l.startswith("|")]
for l in quoted:
    if l not in rows:
        problems.append(f"BENCHMARKS.md, host-side reduction, a table row not in {d}/report.md: {l[:120]}")
# Numbers its prose quotes, and the summary rows linking to it, must be numbers the report gives
# (bench/prose_numbers.py; this section keeps the check's ratios-and-shares form).
summary = [pn.strip(l) for l in b.splitlines() if l.startswith("|") and "(#host-side-reduction-between-leaves)" in l]
bad, _ = pn.unquoted(pn.prose(section) + summary, committed, ratios_only=True)
for tok, l in bad:
    problems.append(f"BENCHMARKS.md, host-side reduction: {tok} is quoted but {d}/report.md gives no such number: {l[:100]}")
# Timeline summaries are what bench/hostreduce_trace.py makes of the committed timelines
# (run*-timelines/<source>-*.txt beside run*-timelines.jsonl, in the order it was made).
import json, subprocess
traced = 0
for name in sorted(os.listdir(d)):
    if not name.endswith("-timelines.jsonl"):
        continue
    raw = os.path.join(d, name[: -len(".jsonl")])
    want = [l for l in open(os.path.join(d, name)).read().splitlines() if l.strip()]
    sources = list(dict.fromkeys(json.loads(l)["source"] for l in want))
    got = []
    for src in sources:
        files = sorted(os.path.join(raw, f) for f in os.listdir(raw) if f.startswith(src + "-"))
        got += subprocess.run([sys.executable, "bench/hostreduce_trace.py", "--source", src, *files],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    if got != want:
        problems.append(f"{d}/{name} is not what bench/hostreduce_trace.py makes of {raw}/")
    traced += 1
assert not problems, "\n".join(problems)
print(f"bench/check: {d}/report.md is reproduced from {len(hr.RUNS)} runs ({traced} timeline summaries from their timelines); BENCHMARKS.md quotes {len(quoted)} of its rows unchanged and only numbers it gives")
PY

# 5. The numbers the other sections quote in prose (and the summary rows linking to them) are
#    numbers their results give: bench/results/nccl/report.md, split at its "## " sections, the
#    cost transcripts. What counts as a quoted measurement, and what is left alone (sizes, counts,
#    versions, dates): bench/prose_numbers.py.
python3 - <<'PY'
import re, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import prose_numbers as pn
report = open("bench/results/nccl/report.md").read()
parts = {"one GPU": report.split("\n## ")[0]}
for p in report.split("\n## ")[1:]:
    parts[p.split("\n", 1)[0]] = p
def of(*prefixes):
    """The report sections whose headings start so, in one text; each must exist."""
    got = [t for h, t in parts.items() if h.startswith(prefixes)]
    assert len(got) >= len(prefixes), f"report.md has no section for one of {prefixes}"
    return "\n".join(got)
host = open("bench/results/hostreduce/report.md").read()
cost = open("bench/results/helper_cost.txt").read() + open("bench/results/plugin_overhead.txt").read()
sim = open("bench/results/simulator/report.md").read()
# Each section of BENCHMARKS.md, and the results its prose quotes (a section may quote another's).
SOURCES = {
    "Collectives between leaves of one GPU: patched NCCL against the NET workaround": of("one GPU", "Two GPUs", "Channels", "What one GPU's PCIe link"),
    "Leaves spread over two GPUs against packed on one": of("Two GPUs"),
    "DDP training on k leaves against one k-slice instance": of("one GPU", "Channels") + host,
    "Channels: what the plugin exports by default": of("Channels", "one GPU"),
    "The ceiling: what one GPU's PCIe link moves, by path, and copy engines": of("What one GPU's PCIe link", "What the link moves", "Ring slicing"),
    "What the plugin and the helper cost": cost,
    "Simulator": sim,
}
nccl = "bench/results/nccl/"
# bench/NOTES.md, every section ("" is its introduction): the run-by-run record quotes superseded
# runs too, all of which report.md keeps, and a console transcript where no section parses the run.
NOTES = {
    "": of("one GPU", "What one GPU's PCIe link"),
    "Collective bandwidth between MIG leaves of one GPU": of("one GPU", "Two GPUs", "Channels", "What one GPU's PCIe link", "What the link moves", "Ring slicing")
        + open(nccl + "run6-two-gpus-mps.console.txt").read(),
    "Leaves spread over two GPUs against packed on one": of("Two GPUs"),
    "A real training step over leaves of one GPU": of("one GPU", "Two GPUs", "Channels", "Training step time-sliced"),
    "Channels: what the plugin exports by default": of("Channels", "one GPU"),
    "The ceiling: what one GPU's PCIe link moves, by path, and copy engines, run by run": of("one GPU", "What one GPU's PCIe link", "What the link moves", "Ring slicing", "Channels"),
    "Two leaves: not the link, the ring's order": of("What the link moves", "Ring slicing", "What one GPU's PCIe link"),
}
b = open("BENCHMARKS.md").read()
def anchor(title):
    return "#" + re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
problems, counts = [], {}
for title, text in SOURCES.items():
    summary = [pn.strip(l) for l in b.splitlines() if l.startswith("|") and f"]({anchor(title)})" in l]
    bad, n = pn.unquoted(pn.prose(pn.section(b, title)) + summary, text)
    counts[title.split(":")[0]] = n
    problems += [f"BENCHMARKS.md, {title.split(':')[0]}: {tok} is quoted but its results give no such number: {l[:110]}" for tok, l in bad]
notes = open("bench/NOTES.md").read()
titles = {l[3:] for l in notes.splitlines() if l.startswith("## ")}
assert titles == set(NOTES) - {""}, f"bench/NOTES.md sections without their results in NOTES, or gone: {sorted(titles ^ (set(NOTES) - {''}))}"
for title, text in NOTES.items():
    part = pn.section(notes, title) if title else notes.split("\n## ")[0]
    bad, n = pn.unquoted(pn.prose(part), text)
    title = title or "introduction"
    counts["NOTES " + title.split(":")[0]] = n
    problems += [f"bench/NOTES.md, {title.split(':')[0]}: {tok} is quoted but its results give no such number: {l[:110]}" for tok, l in bad]
assert not problems, "\n".join(problems)
print("bench/check: BENCHMARKS.md and bench/NOTES.md quote only numbers their results give (numbers checked: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + ")")
PY

# 6. The simulator's speed: bench/results/simulator/report.md is what bench/sim_report.py makes of
#    the raw output beside it (bench/sim_bench.sh); every table of BENCHMARKS.md's "Simulator"
#    section is a table of it, unchanged and whole-row for row in its order (its four timing tables
#    share one header and some rows, so a row alone could come from another table), under a
#    caption naming the same scheduler and mode; the summary row that links to the section quotes
#    only numbers the report gives.
python3 - <<'PY'
import re, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import prose_numbers as pn
import sim_report
d = "bench/results/simulator"
made, kept = sim_report.report(d), open(f"{d}/report.md").read()
assert made == kept, f"{d}/report.md is not what bench/sim_report.py makes of the raw output there: run python3 bench/sim_report.py"


def tables(text):
    """(caption, rows) of each table: its consecutive "|" lines and the last other non-empty line
    before them."""
    out, rows, caption = [], [], ""
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            out.append((caption, rows))
            rows = []
        if line.strip():
            caption = line
    return out


KEYS = re.compile(r"\b(FIFO|Backfilling|Flex-MIG|Dynamic-MIG|Static-MIG)\b")
bench = open("BENCHMARKS.md").read()
theirs = tables(kept)
quoted = tables(pn.section(bench, "Simulator"))
problems = []
for caption, rows in quoted:
    match = [c for c, r in theirs if r == rows]
    if not match:
        problems.append(f"a table that is not one of report.md's, whole and unchanged (under {caption!r}):\n" + "\n".join(rows))
    elif set(KEYS.findall(match[0])) != set(KEYS.findall(caption)):
        problems.append(f"report.md's table {match[0]!r} under the caption {caption!r}")
summary = [l for l in bench.splitlines() if l.startswith("|") and "(#simulator)" in l]
bad, n = pn.unquoted([pn.strip(l) for l in summary], kept)
problems += [f"summary row quotes {v}, which report.md does not give: {line}" for v, line in bad]
assert quoted and summary and not problems, "BENCHMARKS.md, Simulator:\n" + "\n".join(problems)
print(f"bench/check: {d}/report.md is reproduced from the raw output; BENCHMARKS.md quotes {len(quoted)} of its tables "
      f"({sum(len(r) for _, r in quoted)} rows) unchanged, and the summary {n} of its numbers")
PY
