"""Workflow catalog for the demo corpus: task phrasings, slot fillers and the tools each workflow tends to use.

A plan is a space-separated list of steps, in call order. `Read` always happens, `Read?` with p=0.5, `Read?0.2`
with p=0.2, `Grep/Glob` picks one (the first with p=0.6). The phrasings carry the signal; the plans carry noise.
"""

from __future__ import annotations

# (name, weight, plan, phrasings). Slots: see PROJECTS below and gen_demo.fill_slots.
WORKFLOWS = [
    # --- searching and understanding (head) ---
    ("find_def", 6, "Grep/Glob/Bash Read?0.7", [
        "find where {func} is defined", "where is {func} defined?", "locate the definition of {cls}",
        "which file defines {cls}?", "where do we define {func}"]),
    ("find_usages", 4, "Grep Read?0.3", [
        "find all usages of {func}", "who calls {func}?", "list every place that imports {cls}",
        "is {func} still used anywhere?"]),
    ("explain_file", 4, "Read Grep?0.2", [
        "explain what {file} does", "walk me through {file}", "what does the code in {file} do?",
        "summarize {file} for me"]),
    ("explain_flow", 3, "Grep/Task/Glob Read Read?0.3", [
        "how does {feature} work in this codebase?", "explain how {feature} is implemented",
        "trace the code path for {feature}", "I don't understand how {feature} works, can you explain"]),
    ("list_files", 2, "Glob/LS/Bash", [
        "what files are in {dir}?", "list the {ext} files under {dir}", "show me the structure of {dir}"]),
    ("todo_scan", 1, "Grep Read?0.2", [
        "find all TODO comments in {dir}", "list the FIXMEs in the codebase", "grep for 'XXX' markers in {dir}"]),
    ("count_lines", 1, "Bash", [
        "how many lines of code are in {dir}", "count the {ext} files in the repo"]),
    # --- tests and fixes (head) ---
    ("run_tests_fix", 7, "Bash Read Edit/MultiEdit Bash", [
        "run the tests and fix any failures", "run the test suite and fix what's broken",
        "tests are failing, please fix them", "make the tests pass", "run {testcmd} and fix the failures"]),
    ("run_tests", 5, "Bash", [
        "run the tests", "run {testcmd}", "run the unit tests for {module}", "can you run the tests"]),
    ("fix_failing_test", 4, "Bash?0.6 Read Edit Bash?0.8", [
        "the test {test} in {testfile} is failing, fix it", "fix the failing test {test}",
        "{test} fails with {err}, can you fix it?", "why does {test} fail?"]),
    ("fix_error", 5, "Bash?0.4 Grep/Read Read Edit Bash?0.5", [
        "I'm getting {err} when I run {cmd}, can you fix it?", "fix this error: {err}",
        "{cmd} crashes with {err}", "getting {err} in {file} line {n}, please fix"]),
    ("fix_types", 2, "Bash Read Edit/MultiEdit Bash?0.6", [
        "fix the type errors reported by {typecheck}", "run {typecheck} and fix the errors",
        "make {typecheck} happy"]),
    ("lint_fix", 2, "Bash Edit/MultiEdit/Read Bash?0.3", [
        "run the linter and fix the warnings", "fix all the lint errors in {dir}", "run {lint} and clean up"]),
    ("add_test", 4, "Read Edit/Write Bash?0.8", [
        "add a unit test for {func} in {testfile}", "write a test that covers the {n} retries case in {func}",
        "add a regression test for {err}", "add test coverage for {func}"]),
    ("write_tests_new", 3, "Read Glob?0.3 Write Bash?0.7", [
        "write tests for {file}", "create a test file for {module}", "we have no tests for {cls}, write some"]),
    ("coverage", 1, "Bash Read?0.3", [
        "check test coverage for {module}", "what's our test coverage right now?"]),
    ("flaky", 1, "Bash Read Grep?0.4 Edit?0.6", [
        "the test {test} is flaky, figure out why", "{test} fails about 1 in {n} runs, investigate"]),
    # --- editing (head/mid) ---
    ("rename", 3, "Grep Read?0.4 Edit/MultiEdit Bash?0.3", [
        "rename {func} to {func2} everywhere", "rename the {cls} class to {cls2}",
        "can you rename {func} to {func2} across the codebase"]),
    ("add_param", 3, "Grep?0.5 Read Edit", [
        "add a {param} parameter to {func} with default {n}", "make {func} accept an optional {param}",
        "{func} should take a {param} argument"]),
    ("change_const", 3, "Read/Grep Edit", [
        "change the default timeout in {file} from {n} to {m} seconds", "set max retries to {n} in {file}",
        "bump the page size in {file} to {m}", "lower the cache TTL in {file} to {n} minutes"]),
    ("refactor", 3, "Read Edit/MultiEdit Bash?0.4", [
        "refactor {func} into smaller functions", "clean up {file}, it's a mess",
        "extract the validation logic from {func} into its own function", "simplify {func}"]),
    ("add_logging", 2, "Read Edit", [
        "add logging to {func}", "add debug logs around the retry loop in {file}",
        "log the request id in {func}"]),
    ("bump_version", 1, "Grep Read?0.5 Edit", [
        "bump the version to {ver}", "release {ver}: update the version string"]),
    ("update_dep", 2, "Read Edit Bash", [
        "upgrade {lib} to {ver}", "update {lib} to the latest version and make sure everything still builds"]),
    ("add_dep", 2, "Bash/Edit Read?0.4", [
        "add {lib} as a dependency", "install {lib}", "we need {lib}, add it to the project"]),
    ("delete_dead", 2, "Grep Read?0.3 Edit", [
        "remove the unused function {func}", "delete {func}, nothing uses it anymore",
        "remove dead code in {file}"]),
    ("config_change", 2, "Read Edit", [
        "set {envvar} to {n} in {config}", "change the log level to debug in {config}",
        "add a {envvar} setting to {config}"]),
    ("typo", 2, "Read Edit", [
        "fix the typo in {file} line {n}", "there's a typo in the error message in {file}",
        "fix the spelling of 'recieve' in {file}"]),
    ("docstrings", 2, "Read MultiEdit/Edit", [
        "add docstrings to all public functions in {file}", "document {func}", "add comments to {file}"]),
    ("convert", 1, "Read Write Bash?0.3", [
        "convert {config} from {fmt1} to {fmt2}", "port {file} to {lang2}"]),
    ("undo", 2, "Bash/Edit Read?0.2", [
        "undo that last change", "revert your changes to {file}", "put {func} back the way it was"]),
    ("i18n", 1, "Grep Read Edit", [
        "add a {langname} translation for the '{uistring}' string", "translate the {component} labels into {langname}"]),
    ("style_change", 2, "Grep Read Edit", [
        "make the {component} button {color}", "increase the padding on {component} to {n}px",
        "the {component} font is too small, bump it to {n}px"]),
    ("perf", 2, "Bash Read Edit Bash", [
        "profile {func} and make it faster", "{func} is slow on large inputs, optimize it",
        "why is {cmd} taking {n} seconds?"]),
    ("secret_config", 2, "Read Edit/Write", [
        "configure the app to use this API key: {secret}", "put {secret} in the .env file as {envvar}",
        "here is the token for staging {secret} - wire it into {config}"]),
    # --- creating files ---
    ("create_file", 4, "Glob?0.3 Read?0.3 Write", [
        "create a new file {newfile} with a {cls} class", "create {newfile} with a helper to {purpose}",
        "add a new module {newfile} that can {purpose}", "make a new file called {newfile}"]),
    ("endpoint", 3, "Grep/Glob Read Edit Write?0.4 Bash?0.5", [
        "add a new {method} endpoint {endpoint} that returns {thing}", "add an endpoint to {purpose}",
        "expose {func} over HTTP at {endpoint}"]),
    ("script", 2, "Write Bash", [
        "write a script that {purpose2} and save it as {script}", "create a bash script to {purpose2}",
        "write me a quick script to {purpose2}"]),
    ("create_config", 2, "Glob?0.5 Read?0.4 Write", [
        "create a {tool} config file for this project", "set up {tool} for this repo",
        "add a {tool} configuration"]),
    ("readme", 2, "Glob/LS/Bash Read Write/Edit", [
        "write a README for this project", "update the README with setup instructions",
        "document how to run {cmd} in the README"]),
    ("gitignore", 1, "Read Edit", [
        "add {ignore} to .gitignore", "stop git from tracking {ignore}"]),
    ("dockerfile", 1, "Read Glob?0.4 Write", [
        "write a Dockerfile for the {service} service", "containerize {service}"]),
    ("migration", 2, "Bash Read?0.5 Write/Edit", [
        "create a database migration that adds a {col} column to {table}",
        "add an index on {table}.{col}", "write a migration to rename {table}.{col} to {col2}"]),
    ("ci_workflow", 1, "Glob Read?0.5 Write", [
        "add a GitHub Actions workflow that runs the tests on every push",
        "set up CI for this repo", "add a CI job that runs {lint}"]),
    # --- git and GitHub ---
    ("commit", 5, "Bash", [
        "commit these changes", "commit with message '{msg}'", "commit", "commit this", "make a commit"]),
    ("commit_push", 3, "Bash", [
        "commit and push", "push it", "commit and push to {branch}"]),
    ("create_pr", 3, "Bash mcp__github__create_pull_request", [
        "open a PR for this branch", "create a pull request with these changes",
        "open a pull request against main titled '{msg}'", "make a PR"]),
    ("pr_review", 2, "mcp__github__get_pull_request mcp__github__get_pull_request_files?0.7 Read?0.4", [
        "review PR #{pr}", "look at pull request {pr} and tell me what you think",
        "can you review #{pr}?"]),
    ("issue_fix", 3, "mcp__github__get_issue Grep Read Edit Bash?0.6", [
        "fix issue #{issue}", "work on GitHub issue {issue}", "take a look at issue #{issue} and fix it"]),
    ("issue_comment", 1, "mcp__github__add_issue_comment", [
        "comment on issue #{issue} that {commentmsg}", "reply to #{issue}: {commentmsg}"]),
    ("list_prs", 1, "mcp__github__list_pull_requests", [
        "list my open pull requests", "which PRs are waiting for review?"]),
    ("git_log", 2, "Bash", [
        "what changed in the last {n} commits?", "show me the git log for {file}", "what did I do yesterday?"]),
    ("rebase", 2, "Bash Read Edit Bash", [
        "rebase on main and resolve conflicts", "merge main into {branch} and fix the conflicts"]),
    ("blame", 1, "Bash Read?0.3", [
        "who last changed {file} and why?", "when was {func} introduced?"]),
    ("branch", 1, "Bash", [
        "create a branch called {branch}", "switch to a new branch for this work"]),
    # --- web and docs ---
    ("docs_lookup", 3, "WebSearch/WebFetch WebFetch?0.5", [
        "look up the docs for {lib}'s {api}", "how do I use {api} in {lib}? check the docs",
        "find the documentation for {lib} {api}", "search the {lib} docs for {api}"]),
    ("web_error", 2, "WebSearch WebFetch?0.4", [
        "search the web for '{err}'", "google this error: {err}", "has anyone else hit {err} with {lib}?"]),
    ("fetch_url", 2, "WebFetch", [
        "read {url} and summarize it", "what does {url} say about {api}?", "fetch {url}"]),
    ("latest_version", 1, "WebSearch/Bash", [
        "what's the latest version of {lib}?", "is there a newer release of {lib}?"]),
    ("compare_libs", 1, "WebSearch WebFetch?0.3", [
        "compare {lib} and {lib2} for {purpose} and recommend one", "should we use {lib} or {lib2}?"]),
    # --- planning ---
    ("plan_feature", 2, "TodoWrite/EnterPlanMode Grep Read ExitPlanMode?0.6", [
        "plan how to implement {feature2}", "make a plan for {feature2} before writing any code",
        "think through how we'd add {feature2}, don't code yet"]),
    ("todo_start", 2, "TodoWrite Read Edit Bash?0.5", [
        "make a todo list for {feature2} and start on the first item",
        "break {feature2} into steps and do them one by one"]),
    ("big_feature", 3, "TodoWrite?0.7 Grep/Glob Read Edit Write?0.6 Bash", [
        "implement {feature2}", "add support for {feature2}", "build {feature2} end to end with tests"]),
    ("vague_improve", 1, "AskUserQuestion Read Edit?0.5", [
        "improve {file}", "make {component} better", "can you improve the UX here"]),
    ("skill", 1, "Skill Bash?0.5 Read?0.3", [
        "use the {skill} skill", "run the {skill} skill on {file}"]),
    # --- long-running and background ---
    ("dev_server", 2, "Bash TaskOutput?0.6", [
        "start the dev server in the background", "run {cmd} in the background and watch the output"]),
    ("long_build", 1, "Bash TaskOutput", [
        "run the full build and tell me when it's done", "kick off the release build and wait for it"]),
    ("kill_server", 1, "KillShell/Bash", [
        "stop the dev server", "kill the background job"]),
    # --- notebooks, data, browsers, trackers ---
    ("notebook_edit", 2, "Read NotebookEdit NotebookEdit?0.3", [
        "update cell {n} in {nb} to use {lib}", "fix the plotting cell in {nb}",
        "add a cell to {nb} that prints the {metric} per epoch"]),
    ("notebook_plot", 1, "Read NotebookEdit Bash?0.3", [
        "add a plot of {metric} to {nb}", "plot {metric} vs epoch in {nb}"]),
    ("db_query", 2, "mcp__postgres__query/Bash", [
        "how many rows are in the {table} table?", "query the db for the last {n} {table}",
        "check if there are duplicate emails in {table}"]),
    ("db_schema", 1, "mcp__postgres__query Read?0.3", [
        "show me the schema for {table}", "what columns does {table} have?"]),
    ("screenshot", 1, "mcp__playwright__browser_navigate mcp__playwright__browser_take_screenshot", [
        "take a screenshot of {localurl} and check the header", "open {localurl} in the browser and show me"]),
    ("ui_bug", 2, "mcp__playwright__browser_navigate mcp__playwright__browser_take_screenshot?0.7 Grep Read Edit", [
        "the {component} looks broken on mobile, check it in the browser and fix it",
        "{component} overlaps the footer at {localurl}, fix the layout"]),
    ("sentry", 1, "mcp__sentry__get_issue_details Grep Read Edit?0.6", [
        "investigate sentry issue {sentry}", "look into the {err} errors in sentry ({sentry})"]),
    ("linear", 1, "mcp__linear__create_issue", [
        "create a linear ticket for {thing}", "file a ticket: {commentmsg}"]),
    # --- subagent-heavy ---
    ("security_review", 1, "Task Read?0.3", [
        "do a thorough review of {dir} for security problems", "audit {dir} for injection bugs",
        "review the auth code for vulnerabilities"]),
    ("explore", 1, "Task", [
        "explore the codebase and tell me how {feature} is implemented",
        "use subagents to map out the {dir} module", "get me an overview of this repo"]),
    # --- shell and ops ---
    ("disk", 1, "Bash", ["why is the disk full?", "what's using all the disk space in {dir}?"]),
    ("port", 1, "Bash", ["what is listening on port {port}?", "port {port} is already in use, free it"]),
    ("env_setup", 2, "Bash Read?0.3", [
        "set up a virtualenv and install the requirements", "install the dependencies",
        "set up the dev environment"]),
    ("docker_logs", 1, "Bash", ["check the logs of the {service} container", "why does the {service} container keep restarting?"]),
    ("terraform", 1, "Bash Read?0.5", ["run terraform plan for {env}", "what would terraform change in {env}?"]),
    ("k8s_scale", 1, "Bash/Read Edit?0.5", [
        "scale the {service} deployment to {n} replicas", "bump {service} to {n} replicas in the {env} manifest"]),
    ("cron", 1, "Bash/Read Edit?0.6", ["add a cron job that runs {script} every {n} minutes"]),
    ("deploy", 2, "Bash Bash?0.2", ["deploy to {env}", "ship it to {env}", "deploy {service} to {env}"]),
    ("vuln_audit", 1, "Bash WebSearch?0.4", ["check dependencies for known vulnerabilities", "run a security audit of the deps"]),
    ("changelog", 1, "Bash Read Edit", ["update the CHANGELOG for release {ver}", "write release notes for {ver}"]),
    ("sql_opt", 1, "Read?0.4 mcp__postgres__query/Bash Edit?0.6", [
        "this query is slow: \"{sql}\" - optimize it", "why is \"{sql}\" doing a full table scan?"]),
    ("db_password", 1, "Bash Read?0.3", [
        "the db password is {password}, connect and list the tables",
        "connect to {dburl} and check the {table} table"]),
    ("ssh_key", 1, "Bash Write?0.5", [
        "here's the deploy key, add it to the CI secrets:\n{pem}",
        "save this key as deploy_key and use it for the {env} deploy\n{pem}"]),
    # --- no tools at all (questions) ---
    ("question", 3, "", [
        "what's the difference between {c1} and {c2}?", "explain {concept} briefly",
        "when should I use {c1} instead of {c2}?", "is {concept} worth it for a project this size?"]),
    ("regex", 1, "Bash?0.3", ["write a regex to match {thing2}", "give me a regex for {thing2}"]),
    ("thanks", 2, "", ["thanks!", "thanks", "great, thank you", "perfect"]),
    # --- context-dependent (noisy by nature) ---
    ("continue", 3, "Bash/Edit/Read Edit?0.4 Bash?0.3", [
        "continue", "go ahead", "yes do it", "ok, do that", "keep going", "yes"]),
]

PROJECTS = [
    dict(key="acme-api", lang="python", cwd="/home/dev/src/acme-api", version="2.0.76", hooks=False, weight=5,
         files=["src/acme/api/users.py", "src/acme/api/orders.py", "src/acme/db/session.py", "src/acme/settings.py",
                "src/acme/services/billing.py", "src/acme/auth/jwt.py", "src/acme/utils/retry.py",
                "src/acme/workers/email.py", "src/acme/main.py", "scripts/seed_db.py"],
         funcs=["get_user_by_email", "create_order", "apply_discount", "refresh_token", "send_invoice",
                "parse_webhook", "retry_with_backoff", "normalize_phone", "list_orders", "charge_card"],
         classes=["OrderService", "UserRepository", "InvoiceMailer", "TokenStore", "RateLimiter", "Settings"],
         tests=["test_create_order_applies_discount", "test_refresh_token_expired", "test_list_orders_paginates",
                "test_webhook_signature", "test_rate_limit_resets"],
         testfiles=["tests/test_orders.py", "tests/test_auth.py", "tests/test_webhooks.py", "tests/test_users.py"],
         dirs=["src/acme/api", "src/acme/db", "src/acme/services", "tests", "scripts"],
         testcmd=["pytest", "pytest -x tests/test_orders.py", "make test", "pytest -k billing"],
         typecheck=["mypy", "pyright"], lint=["ruff check .", "flake8"], ext=["py"],
         libs=["fastapi", "sqlalchemy", "pydantic", "httpx", "celery", "alembic", "structlog", "redis-py"],
         errors=["KeyError: 'user_id'", "sqlalchemy.exc.IntegrityError", "TypeError: 'NoneType' object is not subscriptable",
                 "ImportError: cannot import name 'Settings'", "422 Unprocessable Entity", "RecursionError"],
         cmds=["uvicorn acme.main:app", "python scripts/seed_db.py", "make migrate", "celery -A acme.workers worker"],
         modules=["billing", "auth", "orders", "webhooks"], tables=["users", "orders", "invoices", "payments"],
         services=["api", "worker", "scheduler"], components=["admin dashboard", "login page"],
         configs=["src/acme/settings.py", ".env.example", "docker-compose.yml", "pyproject.toml"]),
    dict(key="storefront", lang="typescript", cwd="/home/dev/src/storefront", version="2.1.38", hooks=True, weight=3,
         files=["src/components/CartDrawer.tsx", "src/pages/checkout.tsx", "src/lib/api.ts", "src/hooks/useCart.ts",
                "src/components/ProductCard.tsx", "src/store/session.ts", "next.config.js", "src/lib/format.ts"],
         funcs=["useCart", "formatPrice", "fetchProducts", "applyCoupon", "calculateShipping", "getServerSideProps",
                "trackEvent", "debounce"],
         classes=["CartDrawer", "ProductCard", "CheckoutForm", "ApiClient", "SessionStore"],
         tests=["renders empty cart", "applies coupon code", "formats EUR prices", "redirects when logged out"],
         testfiles=["src/__tests__/cart.test.tsx", "src/lib/format.test.ts", "e2e/checkout.spec.ts"],
         dirs=["src/components", "src/pages", "src/lib", "e2e", "public"],
         testcmd=["npm test", "npx vitest run", "pnpm test -- cart", "npx playwright test"],
         typecheck=["tsc --noEmit", "npm run typecheck"], lint=["eslint .", "npm run lint"], ext=["tsx", "ts"],
         libs=["react-query", "zod", "next", "tailwindcss", "stripe-js", "zustand", "vitest", "playwright"],
         errors=["TypeError: Cannot read properties of undefined (reading 'map')", "Hydration failed",
                 "Module not found: Can't resolve '@/lib/api'", "ERR_PNPM_OUTDATED_LOCKFILE", "401 Unauthorized"],
         cmds=["npm run dev", "npm run build", "pnpm start", "next build"],
         modules=["cart", "checkout", "catalog", "auth"], tables=["products", "carts", "customers"],
         services=["web", "edge"], components=["CartDrawer", "navbar", "checkout button", "ProductCard", "footer"],
         configs=["next.config.js", "tsconfig.json", ".env.local", "package.json"]),
    dict(key="ledger", lang="go", cwd="/home/dev/work/ledger", version="2.0.76", hooks=False, weight=4,
         files=["internal/ledger/posting.go", "internal/api/handlers.go", "cmd/ledgerd/main.go", "internal/store/pg.go",
                "internal/fx/rates.go", "pkg/money/money.go"],
         funcs=["PostEntry", "Balance", "NewServer", "ConvertAmount", "ListAccounts", "validateTransfer"],
         classes=["Ledger", "Account", "PgStore", "RateCache", "Money"],
         tests=["TestPostEntryBalanced", "TestConvertAmountRounding", "TestListAccountsPaging"],
         testfiles=["internal/ledger/posting_test.go", "pkg/money/money_test.go"],
         dirs=["internal/ledger", "internal/api", "cmd", "pkg"],
         testcmd=["go test ./...", "go test -race ./internal/...", "make test"],
         typecheck=["go vet ./...", "staticcheck ./..."], lint=["golangci-lint run"], ext=["go"],
         libs=["pgx", "chi", "zap", "testify", "sqlc", "cobra"],
         errors=["panic: runtime error: invalid memory address", "undefined: PgStore", "context deadline exceeded",
                 "pq: duplicate key value violates unique constraint"],
         cmds=["go run ./cmd/ledgerd", "make build", "go build ./..."],
         modules=["ledger", "fx", "store", "api"], tables=["accounts", "entries", "postings"],
         services=["ledgerd", "fx-sync"], components=["balance endpoint"],
         configs=["config.yaml", "Makefile", "go.mod"]),
    dict(key="ml-pipeline", lang="python", cwd="/home/dev/research/ml-pipeline", version="2.1.39", hooks=False, weight=2,
         files=["pipeline/train.py", "pipeline/data.py", "pipeline/model.py", "pipeline/eval.py", "configs/base.yaml"],
         funcs=["load_dataset", "train_epoch", "evaluate", "build_model", "collate_batch", "compute_metrics"],
         classes=["Trainer", "TextDataset", "Classifier", "EarlyStopping"],
         tests=["test_collate_pads", "test_metrics_f1", "test_dataset_len"], testfiles=["tests/test_data.py"],
         dirs=["pipeline", "notebooks", "configs"], testcmd=["pytest -q", "python -m pytest tests"],
         typecheck=["mypy pipeline"], lint=["ruff check ."], ext=["py", "ipynb"],
         libs=["torch", "pandas", "scikit-learn", "wandb", "numpy", "matplotlib", "datasets"],
         errors=["CUDA out of memory", "RuntimeError: shape mismatch", "ValueError: NaN loss", "KeyError: 'label'"],
         cmds=["python -m pipeline.train", "python pipeline/eval.py --ckpt last.pt"],
         modules=["data", "train", "eval"], tables=["runs", "metrics"], services=["trainer"],
         components=["loss curve"], configs=["configs/base.yaml", "configs/sweep.yaml"],
         notebooks=["notebooks/explore.ipynb", "notebooks/eval_report.ipynb", "notebooks/error_analysis.ipynb"]),
    dict(key="rgrep-rs", lang="rust", cwd="/Users/sam/code/rgrep-rs", version="2.1.39", hooks=False, weight=2,
         files=["src/main.rs", "src/search.rs", "src/walker.rs", "src/printer.rs", "Cargo.toml"],
         funcs=["search_file", "walk_dir", "print_match", "parse_args", "is_binary"],
         classes=["Searcher", "Walker", "Printer", "Config"],
         tests=["finds_match_in_nested_dir", "skips_binary_files", "respects_gitignore"],
         testfiles=["tests/cli.rs", "src/search.rs"], dirs=["src", "tests", "benches"],
         testcmd=["cargo test", "cargo test --release"], typecheck=["cargo check"], lint=["cargo clippy"],
         ext=["rs"], libs=["clap", "rayon", "memchr", "ignore", "anyhow", "criterion"],
         errors=["error[E0502]: cannot borrow `self` as mutable", "thread 'main' panicked at 'index out of bounds'",
                 "error[E0308]: mismatched types"],
         cmds=["cargo run -- foo .", "cargo build --release", "cargo bench"],
         modules=["search", "walker", "printer"], tables=["matches"], services=["rgrep"],
         components=["progress bar"], configs=["Cargo.toml", "rustfmt.toml"]),
    dict(key="infra", lang="terraform", cwd="/home/dev/src/infra", version="2.0.76", hooks=False, weight=3,
         files=["terraform/main.tf", "terraform/variables.tf", "k8s/api-deployment.yaml", "k8s/worker.yaml",
                "scripts/rotate-certs.sh", "ansible/site.yml"],
         funcs=["rotate_certs", "deploy_stack", "backup_db"], classes=["module.vpc", "module.rds", "aws_s3_bucket.logs"],
         tests=["test_plan_no_drift"], testfiles=["tests/plan_test.go"], dirs=["terraform", "k8s", "scripts", "ansible"],
         testcmd=["terraform validate", "make check"], typecheck=["tflint"], lint=["yamllint k8s", "shellcheck scripts/*.sh"],
         ext=["tf", "yaml"], libs=["terraform-aws-modules/vpc", "helm", "kustomize", "cert-manager"],
         errors=["Error: Unsupported argument", "ImagePullBackOff", "CrashLoopBackOff", "AccessDenied"],
         cmds=["terraform apply", "kubectl rollout status deploy/api", "./scripts/rotate-certs.sh"],
         modules=["vpc", "rds", "eks"], tables=["tfstate"], services=["api", "worker", "ingress-nginx"],
         components=["grafana dashboard"], configs=["terraform/variables.tf", "k8s/api-deployment.yaml"]),
    dict(key="docs-site", lang="typescript", cwd="/home/dev/src/docs-site", version="2.1.90", hooks=False, weight=1,
         files=["docs/getting-started.md", "src/components/Sidebar.astro", "astro.config.mjs", "docs/api/reference.md",
                "src/styles/global.css"],
         funcs=["buildSidebar", "slugify", "renderCodeBlock"], classes=["Sidebar", "SearchBox", "TocTree"],
         tests=["slugify handles unicode", "sidebar sorts sections"], testfiles=["src/lib/slugify.test.ts"],
         dirs=["docs", "src/components", "public"], testcmd=["npm test", "npm run check"],
         typecheck=["astro check"], lint=["markdownlint docs", "prettier --check ."], ext=["md", "astro"],
         libs=["astro", "starlight", "pagefind", "shiki"],
         errors=["[ERROR] [content] Could not find entry", "404 on /docs/api", "broken link: /guides/setup"],
         cmds=["npm run dev", "npm run build"], modules=["sidebar", "search"], tables=["pages"],
         services=["docs"], components=["Sidebar", "search box", "header"],
         configs=["astro.config.mjs", "package.json"]),
]

# Fillers shared by every project.
COMMON = dict(
    func2=["fetch_all", "load_config", "build_index", "handle_request", "resolve_path", "compute_total"],
    cls2=["Manager", "Registry", "Processor", "Gateway"],
    param=["timeout", "dry_run", "limit", "retries", "verbose", "locale", "page_size"],
    feature=["authentication", "the retry logic", "caching", "pagination", "error handling", "the job queue",
             "config loading", "rate limiting", "logging", "the plugin system", "session handling"],
    feature2=["dark mode", "CSV export", "two-factor login", "a search endpoint", "webhook retries",
              "multi-currency support", "an audit log", "soft deletes", "SSO with Google", "a CLI flag for JSON output",
              "bulk import", "email notifications"],
    purpose=["parse dates", "validate emails", "retry HTTP calls", "hash passwords", "paginate results",
             "format currency", "read the config"],
    purpose2=["backs up the database", "renames all the screenshots by date", "checks for broken links",
              "cleans old log files", "seeds test data", "exports the users to CSV"],
    method=["GET", "POST", "DELETE", "PATCH"],
    endpoint=["/api/v1/users/{id}", "/health", "/api/orders/export", "/v2/reports"],
    thing=["the current user", "order totals per day", "a health status", "the feature flags"],
    thing2=["ISO dates", "semantic versions", "email addresses", "UUIDs", "hex colors"],
    msg=["fix login redirect", "add retry to webhook sender", "bump deps", "wip", "refactor billing"],
    commentmsg=["this is fixed on main", "we need a repro first", "duplicate of the other one", "works for me now"],
    branch=["feature/dark-mode", "fix/login-loop", "chore/deps", "release/2.4"],
    api=["useQuery", "middleware", "connection pooling", "streaming responses", "background tasks", "select"],
    url=["https://docs.python.org/3/library/asyncio-task.html", "https://react.dev/reference/react/useEffect",
         "https://go.dev/blog/context", "https://www.postgresql.org/docs/current/indexes-partial.html",
         "https://github.com/astral-sh/ruff/releases"],
    localurl=["http://localhost:3000", "http://localhost:3000/checkout", "http://localhost:8080/admin"],
    tool=["pre-commit", "ruff", "eslint", "prettier", "renovate", "editorconfig", "dependabot"],
    ignore=["node_modules/", "*.log", ".env", "dist/", "__pycache__/", ".DS_Store"],
    col=["created_at", "email", "deleted_at", "status", "tenant_id"], col2=["updated_at", "state"],
    env=["staging", "production", "dev"], envvar=["LOG_LEVEL", "MAX_WORKERS", "CACHE_TTL", "API_TIMEOUT"],
    fmt1=["JSON", "INI"], fmt2=["YAML", "TOML"], lang2=["TypeScript", "Go", "Python"],
    langname=["German", "French", "Spanish", "Japanese"], uistring=["Add to cart", "Sign in", "Checkout"],
    color=["blue", "darker", "red on hover"], metric=["loss", "accuracy", "F1", "learning rate"],
    skill=["commit", "review", "release-notes", "changelog"], sentry=["ACME-API-3F2", "WEB-1K9", "LEDGER-77"],
    c1=["a list", "async/await", "a mutex", "REST", "rebase", "useMemo"],
    c2=["a tuple", "threads", "a channel", "GraphQL", "merge", "useCallback"],
    concept=["dependency injection", "event sourcing", "optimistic locking", "tail recursion", "CQRS"],
    sql=["SELECT * FROM orders WHERE customer_id = 42 ORDER BY created_at DESC",
         "SELECT count(*) FROM events WHERE payload->>'type' = 'click'"],
    script=["scripts/backup.sh", "scripts/cleanup.py", "tools/export_users.py"],
    newfile=["src/utils/dates.py", "src/lib/retry.ts", "internal/cache/lru.go", "src/validators.py", "src/lib/slug.ts",
             "src/cache.rs", "src/config.rs", "pipeline/augment.py", "terraform/monitoring.tf", "k8s/cronjob.yaml",
             "docs/guides/deploy.md", "src/components/Banner.astro", "pkg/retry/retry.go", "src/hooks/useToast.ts"],
)
