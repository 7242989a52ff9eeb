"""Generate the demo corpus: Claude Code session transcripts laid out like ~/.claude/projects/.

Deterministic: a fixed seed, ids and timestamps drawn from it, compact JSON as Claude Code writes it, so the same
seed gives the same bytes. `python scripts/gen_demo.py` rewrites data/demo/claude-code/ (and nothing else).
Task texts come from scripts/demo_workflows.py; the quirks real transcripts have (subagents, compaction, slash
commands, interrupts, malformed lines, secrets, ...) are placed by `plan_quirks` so every ingest path is exercised.
"""

from __future__ import annotations

import argparse
import random
import shutil
import string
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_session import Session, project_dir  # noqa: E402
from demo_workflows import COMMON, PROJECTS, WORKFLOWS  # noqa: E402
from demo_tools import SECRET_KINDS, make_secret  # noqa: E402

SEED = 20260211
OUT = Path(__file__).resolve().parent.parent / "data" / "demo" / "claude-code"
# Bytes of transcript to write, shared by the projects in proportion to their weight. Realistic lines cost about
# 4.8 KB per typed task (a prompt, ~2 tool calls with their results, progress and system lines).
BUDGET_BYTES = 4_400_000
PREFIXES = ["can you ", "please ", "hey, ", "quick one: ", "ok now ", "next: "]
SUFFIXES = [" please", " thx", "?", ".", " asap", " when you get a chance"]
ASIDES = [" (it's blocking the release)", " - CI is red because of this", " without breaking the public API",
          " and keep the diff small", ". Don't touch the tests", " like we did last week"]


def parse_plan(plan: str, rng: random.Random) -> list[str]:
    """Tool calls for one task: `X` always, `X?` p=0.5, `X?0.2` p=0.2, `X/Y` pick one (X with p=0.6)."""
    calls = []
    for step in plan.split():
        name, _, prob = step.partition("?")
        if prob or step.endswith("?"):
            if rng.random() >= (float(prob) if prob else 0.5):
                continue
        options = name.split("/")
        calls.append(options[0] if len(options) == 1 or rng.random() < 0.6 else rng.choice(options[1:]))
    return calls


def add_noise(calls: list[str], rng: random.Random) -> list[str]:
    """Agents are not deterministic: the same request sometimes plans, delegates or double-checks."""
    if len(calls) >= 3 and "TodoWrite" not in calls and rng.random() < 0.1:
        calls = ["TodoWrite"] + calls
    if calls and rng.random() < 0.025:
        calls = ["Task" if c in ("Grep", "Glob") else c for c in calls]
    if calls and "Bash" not in calls and rng.random() < 0.06:
        calls = calls + ["Bash"]
    if len(calls) >= 2 and rng.random() < 0.03:
        calls = calls[:-1]
    return calls


def fill_slots(text: str, proj: dict, focus: dict, rng: random.Random) -> tuple[str, dict]:
    """The phrasing with its slots filled, and every slot a tool call may need (a session's focus files first)."""
    def pick(key: str):
        pool = focus.get(key) if key in focus and rng.random() < 0.7 else proj.get(key) or COMMON.get(key)
        return rng.choice(pool) if pool else key

    slots = {"_files": proj["files"], "_project": proj["key"], "_secrets": []}
    plural = {"file": "files", "func": "funcs", "cls": "classes", "test": "tests", "testfile": "testfiles",
              "dir": "dirs", "lib": "libs", "err": "errors", "cmd": "cmds", "module": "modules", "table": "tables",
              "service": "services", "component": "components", "config": "configs", "nb": "notebooks"}
    for key in ["file", "func", "lib", "ext", "dir", "testcmd", "cmd", "table", "service", "typecheck", "lint"]:
        slots[key] = pick(plural.get(key, key))
    slots["nb"] = rng.choice(proj.get("notebooks", ["notebooks/explore.ipynb"]))
    slots["lib2"] = rng.choice([lib for lib in proj["libs"] if lib != slots["lib"]])
    for key in [f[1] for f in string.Formatter().parse(text) if f[1]]:
        if key in ("n", "m"):
            slots[key] = rng.choice([2, 3, 5, 10, 15, 20, 30, 50, 100, 120, 300, 500])
        elif key in ("pr", "issue"):
            slots[key] = rng.randint(12, 2400)
        elif key == "port":
            slots[key] = rng.choice([3000, 5173, 5432, 6379, 8000, 8080, 9090])
        elif key == "ver":
            slots[key] = f"{rng.randint(0, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
        elif key in ("secret", "password", "pem", "dburl"):
            kind = {"password": "password", "pem": "private_key", "dburl": "db_url"}.get(key)
            kind = kind or rng.choice(SECRET_KINDS)
            slots[key] = make_secret(kind, rng)
            slots["_secrets"].append(kind)
        elif key in ("lib", "lib2", "nb"):
            pass
        elif key == "newfile":  # a new file in the project's own language
            fits = [f for f in COMMON["newfile"] if f.rsplit(".", 1)[-1] in proj["ext"]]
            slots[key] = rng.choice(fits or COMMON["newfile"])
        else:
            slots[key] = pick(plural.get(key, key))
    return text.format(**slots), slots


def vary(text: str, rng: random.Random) -> str:
    """Surface noise real prompts have: casing, politeness, asides, the odd typo."""
    r = rng.random()
    if r < 0.2:
        text = rng.choice(PREFIXES) + text
    elif r < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.12:
        text = text.rstrip("?.") + rng.choice(SUFFIXES)
    if rng.random() < 0.05:
        text = text.rstrip("?.") + rng.choice(ASIDES)
    if rng.random() < 0.03:
        words = text.split(" ")
        i = rng.randrange(len(words))
        if len(words[i]) > 4:
            w = words[i]
            words[i] = w[:2] + w[3] + w[2] + w[4:]
        text = " ".join(words)
    return text


TRACEBACK = ("\n\nTraceback (most recent call last):\n" + "".join(
    f'  File "/home/dev/src/app/module_{i}.py", line {10 * i + 3}, in handler_{i}\n    result = step_{i}(payload)\n'
    for i in range(1, 14)) + "{err}\n")


def sample_task(proj: dict, focus: dict, rng: random.Random, wf_weights: list) -> dict:
    """One typed task: workflow, text, slots and the tool calls the agent will make (in order)."""
    wf = rng.choices(WORKFLOWS, weights=wf_weights)[0]
    name, _, plan, phrasings = wf
    text, slots = fill_slots(rng.choice(phrasings), proj, focus, rng)
    text = vary(text, rng)
    if name in ("fix_error", "web_error") and rng.random() < 0.15:
        text += TRACEBACK.format(err=slots.get("err", "ValueError"))  # pasted logs make long prompts
    if name not in ("thanks", "continue") and rng.random() < 0.012:
        kind = rng.choice(SECRET_KINDS)
        text += f" (staging creds: {make_secret(kind, rng)})"
        slots["_secrets"].append(kind)
    calls = add_noise(parse_plan(plan, rng), rng)
    if proj["version"].startswith("2.0"):
        calls = ["BashOutput" if c == "TaskOutput" else c for c in calls]
    return {"workflow": name, "text": text, "slots": slots, "calls": calls}


def plant_secrets(task: dict, kinds: list[str], rng: random.Random) -> None:
    for kind in kinds:
        secret = make_secret(kind, rng)
        task["text"] += f"\n\nfor the deploy: {secret}" if "\n" in secret else f" - use {secret} for auth"
        task["slots"]["_secrets"].append(kind)


def plan_quirks(proj_index: int, session_index: int) -> set[str]:
    """Which special paths this session exercises; every quirk lands in at least one session."""
    q = set()
    cycle = ["compact", "slash", "interrupt", "notification", "queued", "subagent", "api_error", "image",
             "text_blocks", "thinking", "interrupt_tool", "custom_command", "skill_meta"]
    for k, quirk in enumerate(cycle):
        if (session_index + k + proj_index) % 7 == 0:
            q.add(quirk)
    if session_index == 1:
        q.add({0: "big_line", 1: "broken_mid", 2: "truncated_tail", 3: "latin1", 4: "wrong_types",
               5: "blank_line", 6: "truncated_tail"}[proj_index % 7])
    if session_index == 2:
        q.add("latin1" if proj_index == 0 else "broken_mid" if proj_index == 2 else "resume")
    if session_index == 5:
        q.add("resume")
    return q


def build_corpus(seed: int = SEED) -> tuple[dict[str, bytes], list[dict]]:
    """All files (relative path -> bytes) and the ground truth: one record per typed task written."""
    rng = random.Random(seed)
    wf_weights = [w[1] for w in WORKFLOWS]
    files: dict[str, bytes] = {}
    truth: list[dict] = []
    clock = 0
    for p_i, proj in enumerate(PROJECTS):
        pdir = project_dir(proj["cwd"])
        previous = None
        budget = BUDGET_BYTES * proj["weight"] // sum(p["weight"] for p in PROJECTS)
        written, s_i = 0, -1
        while written < budget:
            s_i += 1
            quirks = plan_quirks(p_i, s_i)
            focus = {k: rng.sample(proj[k], min(3, len(proj[k]))) for k in ("files", "funcs", "classes")}
            n_tasks = rng.choice([1, 1, 2, 3, 4, 5, 6, 8, 10, 12])
            tasks = [sample_task(proj, focus, rng, wf_weights) for _ in range(n_tasks)]
            if s_i == 3:  # plant every secret kind somewhere, whatever the draws did
                plant_secrets(tasks[0], [SECRET_KINDS[p_i], SECRET_KINDS[(p_i + 7) % 8],
                                         "password" if p_i % 2 else "private_key"], rng)
            clock += rng.randint(3_600_000, 30_000_000)
            sess = Session(rng, proj, clock, quirks, n_tasks, resume_from=previous if "resume" in quirks else None)
            for task in tasks:
                sess.task(task)
            clock = sess.ms
            for rel, data in sess.files().items():
                files[f"{pdir}/{rel}"] = data
                written += len(data)
            truth += [dict(t, file=f"{pdir}/{t['file']}") for t in sess.truth]
            previous = sess
        if p_i == 0:  # a session that was opened and closed before anything was written
            files[f"{pdir}/{_uuid(rng)}.jsonl"] = b""
    return files, truth


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def write_corpus(out: Path, files: dict[str, bytes]) -> None:
    if out.exists():
        shutil.rmtree(out)
    for rel in sorted(files):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    files, truth = build_corpus(args.seed)
    write_corpus(args.out, files)
    size = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files, {size / 1e6:.2f} MB, {len(truth)} typed tasks to {args.out}")


if __name__ == "__main__":
    main()
