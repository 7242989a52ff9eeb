"""Tool inputs and results in Claude Code's shapes, and fake-but-realistic secrets, for the demo corpus."""

from __future__ import annotations

import random
import string

B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


def rand_str(rng: random.Random, n: int, alphabet: str = B62) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# --- secrets: every kind the redactor must catch (all generated, none real) ---
def make_secret(kind: str, rng: random.Random) -> str:
    if kind == "anthropic_key":
        return "sk-ant-api03-" + rand_str(rng, 86, B62 + "-_") + "AA"
    if kind == "openai_key":
        return "sk-proj-" + rand_str(rng, 48, B62 + "-_")
    if kind == "aws_keys":
        return f"AKIA{rand_str(rng, 16, string.ascii_uppercase + '234567')} / {rand_str(rng, 40, B62 + '/+')}"
    if kind == "github_token":
        return "ghp_" + rand_str(rng, 36)
    if kind == "slack_token":
        return f"xoxb-{rand_str(rng, 12, string.digits)}-{rand_str(rng, 13, string.digits)}-{rand_str(rng, 24)}"
    if kind == "stripe_key":
        return "sk_test_" + rand_str(rng, 24) + rand_str(rng, 75)
    if kind == "jwt":
        head = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        return f"{head}.eyJ{rand_str(rng, 60, B62 + '_-')}.{rand_str(rng, 43, B62 + '_-')}"
    if kind == "password":
        return rand_str(rng, 6, string.ascii_letters) + "!" + rand_str(rng, 4, string.digits) + rand_str(rng, 3)
    if kind == "db_url":
        return f"postgres://app_admin:{rand_str(rng, 18)}@db.internal.acme.dev:5432/prod"
    if kind == "private_key":
        body = "\n".join(rand_str(rng, 64, B62 + "+/") for _ in range(6))
        return f"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA{body}\n-----END OPENSSH PRIVATE KEY-----"
    raise ValueError(kind)


SECRET_KINDS = ["anthropic_key", "openai_key", "aws_keys", "github_token", "slack_token", "stripe_key", "jwt",
                "db_url"]

# Bash commands per workflow; `{...}` slots are filled from the task's slots.
BASH = {
    "run_tests": ["{testcmd}"], "run_tests_fix": ["{testcmd}"], "fix_failing_test": ["{testcmd}"],
    "fix_types": ["{typecheck}"], "lint_fix": ["{lint}"], "coverage": ["{testcmd} --cov"],
    "commit": ["git add -A && git commit -m \"{msg}\""], "commit_push": ["git push origin HEAD"],
    "create_pr": ["git push -u origin HEAD"], "git_log": ["git log --oneline -{n}"], "blame": ["git log -p -- {file}"],
    "rebase": ["git fetch origin && git rebase origin/main"], "branch": ["git checkout -b {branch}"],
    "dev_server": ["{cmd}"], "long_build": ["{cmd}"], "disk": ["du -sh * | sort -h | tail"],
    "port": ["lsof -i :{port}"], "env_setup": ["python -m venv .venv && .venv/bin/pip install -r requirements.txt"],
    "docker_logs": ["docker compose logs --tail=200 {service}"], "terraform": ["terraform plan -var-file={env}.tfvars"],
    "deploy": ["make deploy ENV={env}"], "vuln_audit": ["npm audit --omit=dev"], "changelog": ["git log --oneline v{ver}..HEAD"],
    "count_lines": ["find {dir} -name '*.{ext}' | xargs wc -l | tail -1"], "perf": ["python -m cProfile -s cumtime {file}"],
    "migration": ["alembic revision -m \"add {col} to {table}\""], "db_query": ["psql -c \"select count(*) from {table}\""],
    "update_dep": ["pip install -U {lib}"], "add_dep": ["npm install {lib}"], "kill_server": ["pkill -f \"{cmd}\""],
    "db_password": ["psql \"{dburl}\" -c '\\dt'"], "ssh_key": ["gh secret set DEPLOY_KEY < deploy_key"],
    "latest_version": ["pip index versions {lib}"], "list_files": ["ls -la {dir}"], "find_def": ["rg -n \"def {func}\""],
    "script": ["chmod +x {script} && ./{script} --dry-run"], "skill": ["git status --short"],
    "k8s_scale": ["kubectl scale deploy/{service} --replicas={n}"], "cron": ["crontab -l"], "regex": ["echo test | grep -E ..."],
}
BASH_DEFAULT = ["git status --short", "git diff --stat", "{testcmd}", "ls {dir}"]

TODO_DONE = ("Todos have been modified successfully. Ensure that you continue to use the todo list to track your "
             "progress. Please proceed with the current tasks if applicable")
REJECTED = ("The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it was a file "
            "edit, the new_string was NOT written to the file). STOP what you are doing and wait for the user to "
            "tell you how to proceed.")


def _fmt(template: str, slots: dict) -> str:
    try:
        return template.format(**slots)
    except (KeyError, IndexError, ValueError):
        return template


def tool_call(name: str, wf: str, slots: dict, cwd: str, rng: random.Random, big: bool = False):
    """Input, tool_result content and toolUseResult (None when the tool writes none) for one call."""
    path = slots.get("file") or "README.md"
    abspath = path if path.startswith("/") else f"{cwd}/{path}"
    if name == "Bash":
        cmd = _fmt(rng.choice(BASH.get(wf, BASH_DEFAULT)), slots)
        out = rng.choice(["", "ok", "3 passed in 0.41s", "1 failed, 12 passed", "On branch main\nnothing to commit",
                          "Done in 2.3s", "error: exit status 1"])
        return ({"command": cmd, "description": rng.choice(["Run command", "Run tests", "Check status", cmd[:30]])},
                out, {"stdout": out, "stderr": "", "interrupted": False, "isImage": False})
    if name == "Read":
        n = 4000 if big else rng.randint(2, 3)
        lines = [f"line {i} of {path}" for i in range(1, n + 1)]
        if big:  # a large file read: the result line is over 100 KB, as real ones often are
            lines = [f"{i:>6}\t" + rand_str(rng, 24) for i in range(1, n + 1)]
        text = "\n".join(f"{i:>6}→{t}" for i, t in enumerate(lines, 1))
        body = "\n".join(lines)
        return ({"file_path": abspath}, text, {"type": "text", "file": {
            "filePath": abspath, "content": body, "numLines": n, "startLine": 1, "totalLines": n}})
    if name in ("Edit", "MultiEdit"):
        old, new = rng.choice([("return None", "return default"), ("timeout=30", "timeout=60"), ("TODO", "done")])
        if name == "MultiEdit":
            inp = {"file_path": abspath, "edits": [{"old_string": old, "new_string": new}] * 2}
            return inp, f"Applied 2 edits to {abspath}", {"filePath": abspath, "edits": inp["edits"]}
        inp = {"file_path": abspath, "old_string": old, "new_string": new, "replace_all": False}
        return inp, f"The file {abspath} has been updated successfully.", {
            "filePath": abspath, "oldString": old, "newString": new, "structuredPatch": [
                {"oldStart": 12, "oldLines": 1, "newStart": 12, "newLines": 1, "lines": [f"-{old}", f"+{new}"]}],
            "userModified": False, "replaceAll": False}
    if name == "Write":
        target = slots.get("newfile") or slots.get("script") or path
        target = target if target.startswith("/") else f"{cwd}/{target}"
        content = f"# {target.rsplit('/', 1)[-1]}\n\n"
        return ({"file_path": target, "content": content}, f"File created successfully at: {target}",
                {"type": "create", "filePath": target, "content": content, "structuredPatch": [], "originalFile": None})
    if name == "Grep":
        pattern = slots.get("func") or slots.get("cls") or "TODO"
        files = [f"{cwd}/{f}" for f in rng.sample(slots["_files"], 2)]
        return ({"pattern": pattern, "path": cwd, "output_mode": "files_with_matches"},
                f"Found {len(files)} files\n" + "\n".join(files),
                {"mode": "files_with_matches", "filenames": files, "numFiles": len(files)})
    if name == "Glob":
        files = [f"{cwd}/{f}" for f in rng.sample(slots["_files"], 2)]
        return ({"pattern": f"**/*.{slots.get('ext', 'py')}"}, "\n".join(files),
                {"filenames": files, "durationMs": rng.randint(5, 400), "numFiles": len(files), "truncated": False})
    if name == "LS":
        return {"path": cwd}, f"- {cwd}/\n  - src/\n  - tests/\n  - README.md\n", None
    if name == "TodoWrite":
        todos = [{"content": c, "status": s, "activeForm": c + "ing"} for c, s in
                 [("Investigate", "in_progress"), ("Implement", "pending"), ("Test", "pending")]]
        return {"todos": todos}, TODO_DONE, {"oldTodos": [], "newTodos": todos}
    if name in ("TaskOutput", "BashOutput"):
        key = "task_id" if name == "TaskOutput" else "bash_id"
        bid = "b" + rand_str(rng, 6, HEX)
        return {key: bid, "block": True, "timeout": 120000}, "<status>completed</status>\n<exit_code>0</exit_code>", None
    if name == "KillShell":
        sid = "b" + rand_str(rng, 6, HEX)
        return {"shell_id": sid}, f"Successfully killed shell: {sid}", {"message": f"Successfully killed shell: {sid}"}
    if name == "WebSearch":
        q = f"{slots.get('lib', '')} {slots.get('api', slots.get('err', ''))}".strip()
        return ({"query": q}, f"Web search results for query: \"{q}\"\n\nLinks: []",
                {"query": q, "results": [], "durationSeconds": rng.randint(2, 9)})
    if name == "WebFetch":
        url = slots.get("url") or f"https://pypi.org/project/{slots.get('lib', 'requests')}/"
        return ({"url": url, "prompt": "Summarize the relevant part"}, "The page explains the API in brief.",
                {"bytes": rng.randint(2000, 90000), "code": 200, "codeText": "OK", "result": "The page explains it.",
                 "durationMs": rng.randint(300, 4000), "url": url})
    if name == "NotebookEdit":
        nb = slots.get("nb", "notebooks/explore.ipynb")
        return ({"notebook_path": f"{cwd}/{nb}", "cell_id": f"cell-{slots.get('n', 3)}", "new_source": "plt.plot(x)"},
                f"Updated cell cell-{slots.get('n', 3)} with plt.plot(x)", None)
    if name == "AskUserQuestion":
        q = "Which part should I focus on?"
        inp = {"questions": [{"question": q, "header": "Scope", "multiSelect": False, "options": [
            {"label": "Readability", "description": "Rename and split"}, {"label": "Speed", "description": "Profile"}]}]}
        return inp, f'User has answered your questions: "{q}"="Readability".', {**inp, "answers": {q: "Readability"}}
    if name == "Skill":
        return {"skill": slots.get("skill", "commit")}, f"Launching skill: {slots.get('skill', 'commit')}", None
    if name == "EnterPlanMode":
        return {}, "Entered plan mode.", {"message": "Entered plan mode."}
    if name == "ExitPlanMode":
        return {"plan": "# Plan\n1. Read\n2. Change\n3. Test"}, "User has approved your plan.", None
    if name.startswith("mcp__"):
        payload = '{"ok":true,"number":%d}' % slots.get("pr", slots.get("issue", 1))
        return _mcp_input(name, slots), [{"type": "text", "text": payload}], [{"type": "text", "text": payload}]
    return {}, "ok", None


def _mcp_input(name: str, slots: dict) -> dict:
    repo = {"owner": "acme", "repo": slots.get("_project", "app")}
    short = name.split("__")[-1]
    if short == "create_pull_request":
        return {**repo, "title": slots.get("msg", "Update"), "head": slots.get("branch", "feature"), "base": "main",
                "body": "## Summary\n- changes"}
    if short in ("get_issue", "add_issue_comment"):
        extra = {"body": slots.get("commentmsg", "")} if short == "add_issue_comment" else {}
        return {**repo, "issue_number": slots.get("issue", 1), **extra}
    if short.startswith("get_pull_request"):
        return {**repo, "pull_number": slots.get("pr", 1)}
    if short == "list_pull_requests":
        return {**repo, "state": "open"}
    if short == "query":
        return {"sql": slots.get("sql") or f"SELECT count(*) FROM {slots.get('table', 'users')}"}
    if short == "browser_navigate":
        return {"url": slots.get("localurl", "http://localhost:3000")}
    if short == "get_issue_details":
        return {"issue_id": slots.get("sentry", "WEB-1")}
    if short == "create_issue":
        return {"title": slots.get("thing", "Follow-up"), "teamId": "ENG", "description": "From Claude"}
    return {}
