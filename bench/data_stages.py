"""Time the data stages on a large synthetic Claude Code corpus: ingest -> dedup -> split, and render apart.

    python bench/data_stages.py               # 1,000,000 typed tasks (~7 lines each), a few GB in a temp dir
    python bench/data_stages.py --n 20000     # quick
Target: ingest through split of 1M tasks in under 60 s wall, every stage's peak memory under 4 GB.
The corpus reuses the demo generator's workflows (scripts/gen_demo.py) but writes pre-encoded bytes directly.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from demo_tools import tool_call  # noqa: E402
from demo_workflows import PROJECTS, WORKFLOWS  # noqa: E402
from gen_demo import sample_task  # noqa: E402

TARGET_S, TARGET_BYTES = 60.0, 4 * 1024**3
POOL, COMMON_TASKS = 4000, 200
SUFFIXES = [" (ticket #%d)", " - see run %d", " for build %d", " on line %d", " in shard %d", " (attempt %d)"]
# The peer every stage is compared with in the same run: one process that reads and parses every line with orjson.
PEER = """import orjson, pathlib, sys
n = 0
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.jsonl")):
    with open(path, "rb") as handle:
        for line in handle:
            n += orjson.loads(line).get("type") == "user"
print(n)
"""
USAGE = b'"usage":{"input_tokens":3,"cache_creation_input_tokens":812,"cache_read_input_tokens":41230,"output_tokens":97}'


def _js(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _esc(obj) -> bytes:
    """Compact JSON with `%` doubled, for pieces that are themselves %-format templates."""
    return _js(obj).replace(b"%", b"%%")


def build_pool(seed: int = 0) -> list[tuple[bytes, list[tuple[bytes, bytes, bytes]]]]:
    """Task templates: the prompt as a JSON string, and per call (name, tool_use tail, tool_result tail)."""
    rng = random.Random(seed)
    weights = [w[1] for w in WORKFLOWS]
    pool = []
    for i in range(POOL):
        proj = PROJECTS[i % len(PROJECTS)]
        task = sample_task(proj, {}, rng, weights)
        calls = []
        for name in task["calls"]:
            inp, content, tur = tool_call(name, task["workflow"], task["slots"], proj["cwd"], rng)
            use = b'","name":' + _js(name) + b',"input":' + _js(inp) + b"}]"
            res = b'","type":"tool_result","content":' + _esc(content) + b"}]}"
            res += b',"uuid":"%s","timestamp":"%s"' + (b',"toolUseResult":' + _esc(tur) if tur is not None else b"")
            calls.append((_js(name)[1:-1], use, res))
        pool.append((_js(task["text"]), calls))
    return pool


def _templates(env: bytes) -> dict[str, bytes]:
    """%-format templates for one session file's lines (its envelope baked in)."""
    return {
        "prompt": b'{"parentUuid":%s,' + env + b',"type":"user","message":{"role":"user","content":%s},"uuid":"%s",'
                  b'"timestamp":"%s","thinkingMetadata":{"maxThinkingTokens":31999},"todos":[],'
                  b'"permissionMode":"default"}\n',
        "use": b'{"parentUuid":"%s",' + env + b',"message":{"model":"claude-opus-4-6","id":"msg_01%s","type":'
               b'"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_01%s%s,"stop_reason":null,'
               b'"stop_sequence":null,' + USAGE + b'},"requestId":"req_011C%s","type":"assistant","uuid":"%s",'
               b'"timestamp":"%s"}\n',
        "hook": b'{"parentUuid":"%s",' + env + b',"type":"progress","data":{"type":"hook_progress","hookEvent":'
                b'"PostToolUse","hookName":"PostToolUse:%s","command":"${CLAUDE_PLUGIN_ROOT}/hooks/capture.sh"},'
                b'"toolUseID":"toolu_01%s","parentToolUseID":"toolu_01%s","uuid":"%s","timestamp":"%s"}\n',
        "result": b'{"parentUuid":"%s",' + env + b',"type":"user","message":{"role":"user","content":[{'
                  b'"tool_use_id":"toolu_01%s',
        "text": b'{"parentUuid":"%s",' + env + b',"message":{"model":"claude-opus-4-6","id":"msg_01%s","type":'
                b'"message","role":"assistant","content":[{"type":"text","text":"Done."}],"stop_reason":null,'
                b'"stop_sequence":null,' + USAGE + b'},"requestId":"req_011C%s","type":"assistant","uuid":"%s",'
                b'"timestamp":"%s"}\n',
    }


def _task_lines(tpl: dict, new_uuid, k: int, prompt: bytes, calls: list, parent: bytes) -> tuple[list, bytes]:
    """The ~7 lines of task k: prompt, tool_use / progress / tool_result per call, a closing text half the time."""
    ts = b"2026-%02d-%02dT%02d:%02d:%02d" % (1 + k % 12, 1 + k % 28, k % 24, k % 60, (k // 60) % 60)
    last = new_uuid()
    lines = [tpl["prompt"] % (parent, prompt, last, ts + b".001Z")]
    for j, (name, use, res) in enumerate(calls):
        tid, mid = b"%020x%02d" % (k, j), b"%022x" % (k * 16 + j)
        use_uid = new_uuid()
        lines.append(tpl["use"] % (last, mid, tid, use, mid, use_uid, ts + b".1%02dZ" % j))
        if j % 2 == 0:
            lines.append(tpl["hook"] % (use_uid, name, tid, tid, new_uuid(), ts + b".2%02dZ" % j))
        last = new_uuid()
        lines.append(tpl["result"] % (use_uid, tid) + res % (last, ts + b".3%02dZ" % j)
                     + b',"sourceToolAssistantUUID":"' + use_uid + b'"}\n')
    if not calls or k % 2:
        mid, text_uid = b"%022x" % (k * 16 + 15), new_uuid()
        lines.append(tpl["text"] % (last, mid, mid, text_uid, ts + b".900Z"))
        last = text_uid
    return lines, b'"' + last + b'"'


def write_file(args) -> int:
    """One session file of `count` tasks; returns the number of typed tasks written."""
    path, file_index, first_task, count, pool = args
    rng = random.Random(file_index)
    bits = lambda: (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12), rng.getrandbits(12))  # noqa: E731
    sid = b"%08x-%04x-4%03x-a%03x-" % bits() + b"%012x" % file_index
    env = (b'"isSidechain":false,"userType":"external","cwd":"/home/dev/src/project-%02d","sessionId":"%s",'
           b'"version":"2.1.39","gitBranch":"main","slug":"bench-run-%d"' % (file_index % 20, sid, file_index))
    tpl = _templates(env)
    prefix, counter = b"%08x-%04x-4%03x-8%03x-" % bits(), iter(range(1, 1 << 47))
    new_uuid = lambda: prefix + b"%012x" % next(counter)  # noqa: E731
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        parent = b"null"
        for k in range(first_task, first_task + count):
            if rng.random() < 0.05:  # 5% repeat one of a few common tasks exactly: dedup has work to do
                prompt, calls = pool[rng.randrange(COMMON_TASKS)]
            else:  # the rest are unique prompts over the whole pool (the number is masked by the template key)
                prompt, calls = pool[rng.randrange(len(pool))]
                prompt = prompt[:-1] + (SUFFIXES[k % len(SUFFIXES)] % k).encode() + b'"'
            lines, parent = _task_lines(tpl, new_uuid, k, prompt, calls, parent)
            handle.writelines(lines)
    return count


def generate(out_dir: Path, n: int, workers: int = 2) -> tuple[int, int]:
    """Write n typed tasks as Claude Code session files under out_dir; returns (files, bytes)."""
    pool = build_pool()
    n_files = max(1, min(400, n // 2500))
    per, extra = divmod(n, n_files)
    jobs, first = [], 0
    for i in range(n_files):
        count = per + (i < extra)
        project = f"-home-dev-src-project-{i % 20:02d}"
        jobs.append((str(out_dir / project / f"session-{i:04d}.jsonl"), i, first, count, pool))
        first += count
    if workers > 1 and n_files > 1:
        with mp.get_context("fork").Pool(workers) as procs:
            done = sum(procs.map(write_file, jobs, chunksize=1))
    else:
        done = sum(map(write_file, jobs))
    assert done == n
    size = sum(p.stat().st_size for p in out_dir.rglob("*.jsonl"))
    return n_files, size


def _help(stage: str) -> str | None:
    """`toolsel <stage> --help`, or None when the stage command does not exist (yet)."""
    try:
        proc = subprocess.run(["toolsel", stage, "--help"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "200"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def stage_commands(work: Path, corpus: Path, model_dir: Path) -> dict[str, list[str]]:
    """Each stage on explicit paths, so the bench never touches the repo's data/ or metrics/."""
    m = work / "metrics"
    return {
        "ingest": ["toolsel", "ingest", "--sources", str(corpus), "--output", str(work / "ingested"),
                   "--metrics", str(m / "ingest.json")],
        "dedup": ["toolsel", "dedup", "--input", str(work / "ingested" / "examples.jsonl"),
                  "--output", str(work / "dedup" / "examples.jsonl"), "--metrics", str(m / "dedup.json")],
        "split": ["toolsel", "split", "--input", str(work / "dedup" / "examples.jsonl"),
                  "--output-dir", str(work / "split"), "--metrics", str(m / "split.json")],
        "render": ["toolsel", "render", "--input-dir", str(work / "split"), "--output-dir", str(work / "rendered"),
                   "--metrics", str(m / "render.json"), "--model-dir", str(model_dir)],
    }


def tokenizer_model(work: Path, model_dir: Path | None) -> Path | None:
    """The model directory render tokenizes with: the given one, the repo's models/base, or a tiny one built
    (untimed) by `toolsel base` from 5,000 training prompts of this run."""
    for candidate in (model_dir, ROOT / "models" / "base"):
        if candidate is not None and (candidate / "tokenizer.json").exists():
            return candidate
    train = work / "split" / "train.jsonl"
    if not train.exists() or _help("base") is None:
        return None
    sample = work / "base_train.jsonl"
    with open(train, "rb") as src, open(sample, "wb") as dst:
        dst.writelines(line for _, line in zip(range(5000), src))
    t0 = time.perf_counter()
    r = run_stage(["toolsel", "base", "--train", str(sample), "--output", str(work / "model"),
                   "--metrics", str(work / "metrics" / "base.json")])
    if r["rc"] != 0:
        print(f"base (setup for render) FAILED:\n{r['output'][-2000:]}")
        return None
    print(f"(setup: tiny model for render's tokenizer built in {time.perf_counter() - t0:.0f} s)")
    return work / "model"


def run_stage(argv: list[str]) -> dict:
    """Run one stage; wall time, the largest single process's peak RSS (wait4) and the whole tree's (polled)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    log = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    root = psutil.Process(proc.pid) if psutil else None
    tree_peak = 0
    while True:  # reap with wait4 ourselves: it returns this child's own rusage (a fresh ru_maxrss per stage)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if root is not None:
            try:
                tree_peak = max(tree_peak, sum(p.memory_info().rss for p in [root] + root.children(recursive=True)))
            except psutil.Error:
                pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux, bytes on macOS
    return {"rc": proc.returncode, "wall": wall, "peak": max(peak, tree_peak), "peak_process": peak,
            "peak_tree": tree_peak, "output": log.read().decode(errors="replace")}


def count_lines(path: Path) -> int:
    if path.is_dir():
        return sum(count_lines(p) for p in sorted(path.glob("*.jsonl")) if p.name in (
            "train.jsonl", "valid.jsonl", "test.jsonl", "examples.jsonl"))
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="typed tasks to generate")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (corpus and outputs)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a new temp dir)")
    ap.add_argument("--stages", default="ingest,dedup,split,render")
    ap.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    ap.add_argument("--no-peer", action="store_true", help="skip the bare orjson parse the stages are compared to")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="model directory render tokenizes with (default: models/base, else a tiny one built here)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="toolsel-bench-", dir=args.workdir))
    corpus = work / "claude-code"
    try:
        t0 = time.perf_counter()
        n_files, size = generate(corpus, args.n)
        gen_s = time.perf_counter() - t0
        print(f"generate: {args.n:,} tasks, {n_files} files, {size / 1e9:.2f} GB in {gen_s:.1f} s "
              f"({args.n / gen_s:,.0f} tasks/s)", flush=True)
        return report(work, corpus, args)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(work: Path, corpus: Path, args) -> int:
    commands = stage_commands(work, corpus, Path("unset"))
    inputs = {"ingest": args.n, "dedup": work / "ingested" / "examples.jsonl",
              "split": work / "dedup" / "examples.jsonl", "render": work / "split"}
    results = {}
    print(f"{'stage':<8} {'records':>11} {'wall s':>8} {'records/s':>11} {'peak MB':>9}  (largest process / tree)"
          f"  x peer")
    peer = None if args.no_peer else run_stage([sys.executable, "-c", PEER, str(corpus)])
    if peer is not None:
        print(f"{'peer':<8} {args.n:>11,} {peer['wall']:>8.1f} {args.n / peer['wall']:>11,.0f} "
              f"{peer['peak'] / 2**20:>9,.0f}  (orjson.loads of every line, one process)", flush=True)
    for stage in args.stages.split(","):
        if _help(stage) is None:
            print(f"{stage:<8} skipped: `toolsel {stage}` is not available")
            continue
        if stage == "render":
            model_dir = tokenizer_model(work, args.model_dir)
            if model_dir is None:
                print("render   skipped: no model directory with a tokenizer (give --model-dir)")
                continue
            commands = stage_commands(work, corpus, model_dir)
        records = inputs[stage] if isinstance(inputs[stage], int) else count_lines(inputs[stage])
        r = results[stage] = run_stage(commands[stage])
        if r["rc"] != 0:
            print(f"{stage:<8} FAILED (exit {r['rc']}):\n{r['output'][-3000:]}")
            break
        ratio = f"  {r['wall'] / peer['wall']:.2f}" if peer else ""
        print(f"{stage:<8} {records:>11,} {r['wall']:>8.1f} {records / r['wall']:>11,.0f} {r['peak'] / 2**20:>9,.0f}"
              f"  ({r['peak_process'] / 2**20:,.0f} / {r['peak_tree'] / 2**20:,.0f}){ratio}", flush=True)
    core = [results.get(s) for s in ("ingest", "dedup", "split")]
    if not all(r and r["rc"] == 0 for r in core):
        print("target: not measured (ingest, dedup and split must all run)")
        return 1 if args.check else 0
    wall = sum(r["wall"] for r in core)
    peak = max(r["peak"] for r in core)
    line = f"ingest->split: {wall:.1f} s wall for {args.n:,} tasks, peak {peak / 2**30:.2f} GB"
    if peer:
        line += f", {wall / peer['wall']:.2f}x the peer parse"
    if args.n < 1_000_000:
        print(f"{line} (the target, < {TARGET_S:.0f} s and < 4 GB, applies at --n 1000000)")
        return 0
    ok = wall < TARGET_S and peak < TARGET_BYTES
    print(f"{line}; target < {TARGET_S:.0f} s and < 4 GB: {'PASS' if ok else 'MISS'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
