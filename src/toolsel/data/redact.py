"""Redact secrets from text before anything is written: each hit becomes `[REDACTED:<kind>]`.

Kinds: private_key, anthropic_key, openai_key, stripe_key, aws_access_key, github_token, gitlab_token,
slack_token, slack_webhook, google_api_key, huggingface_token, npm_token, jwt, bearer_token, url_credentials,
password (a `password=`/`passwd:`/`secret=`/`api_key=`/`token=`... assignment, or "the password is X" in prose;
the key is kept, the value goes;
$VAR, <...>, {{...}}, *** and already-redacted values are left alone).

Each rule runs only when one of its literals occurs in the text (cheap `in` checks first); prefixes are anchored on word boundaries so near-misses such as
"sk-learn", "task-list", "AKIAXYZ" (too short), "password: <empty>" or "max_tokens=512" are left alone.
"""

from __future__ import annotations

import re

# Value of a key=value secret: quoted, or a bare run of >= 4 chars; env-var references and placeholders
# ($VAR, <...>, {{...}}, ***) are not secrets.
_VALUE = r"""(?:"[^"\n]{4,}"|'[^'\n]{4,}'|(?![$<{*\[])[^\s"',;]{4,})"""
# A secret named in prose: >= 6 chars with a digit or symbol, no trailing sentence punctuation.
_PROSE_VALUE = r"""(?=[^\s"',;]*[0-9!@#%^&*_+\-])(?![$<{*\[])[^\s"',;]{5,}[^\s"',;.!?)]"""
_ASSIGN_KEY = (r"(?:password|passwd|passphrase|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey"
               r"|access[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key|token)")
_B = r"(?<![A-Za-z0-9_\-])"  # left boundary: not inside a longer identifier
_E = r"(?![A-Za-z0-9_\-])"   # right boundary

# (kind, pattern, literals one of which any match contains, lowercased). Order matters: more specific kinds first
# (sk-ant- before sk-, a JWT before a bearer token, the generic key=value assignment last).
_PATTERNS: list[tuple[str, str, tuple[str, ...]]] = [
    ("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)", ("private key",)),
    ("anthropic_key", _B + r"sk-ant-[A-Za-z0-9_\-]{20,}", ("sk-ant-",)),
    ("stripe_key", _B + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}" + _E, ("_live_", "_test_")),
    ("openai_key", _B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", ("sk-",)),
    ("aws_access_key", r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
     ("akia", "asia", "abia", "acca")),
    ("github_token", _B + r"(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})" + _E,
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("gitlab_token", _B + r"glpat-[A-Za-z0-9_\-]{20,}" + _E, ("glpat-",)),
    ("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+", ("hooks.slack",)),
    ("slack_token", _B + r"xox[abposr]-[A-Za-z0-9\-]{10,}" + _E, ("xox",)),
    ("google_api_key", _B + r"AIza[0-9A-Za-z_\-]{35}" + _E, ("aiza",)),
    ("huggingface_token", _B + r"hf_[A-Za-z0-9]{30,}" + _E, ("hf_",)),
    ("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, ("npm_",)),
    ("jwt", _B + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}" + _E, ("eyj",)),
    # The rules below keep their prefix (scheme, "Bearer ", "password=") and redact only the secret.
    ("bearer_token", r"(?P<pre>\b[Bb]earer\s+)[A-Za-z0-9._~+/\-]{16,}=*", ("bearer",)),
    ("url_credentials", r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s:/@]+:[^\s@/]+(?P<post>@)", ("://",)),
    # `password: X` / `api_key=X`, and prose: "the db password is X" (X must hold a digit or symbol, so "the
    # password is wrong" stays).
    ("password", r"(?P<pre>(?i:\b" + _ASSIGN_KEY + r")\s*(?:=|:)\s*)" + _VALUE
     + r"|(?P<pre2>(?i:\b(?:password|passwd|passphrase)\s+(?:is|was)\s+))" + _PROSE_VALUE,
     ("pass", "secret", "key", "token")),
]
_RULES = [(kind, re.compile(pattern)) for kind, pattern, _ in _PATTERNS]
KINDS = tuple(kind for kind, _, _ in _PATTERNS)
# hint literal -> indices of the rules it can start; text containing no hint (the usual prompt) costs one lower()
# and one `in` check per hint.
_HINT_RULES: dict[str, list[int]] = {}
for _index, (_, _, _hints) in enumerate(_PATTERNS):
    for _hint in _hints:
        _HINT_RULES.setdefault(_hint, []).append(_index)
_PASSWORD = KINDS.index("password")


def redact(text: str) -> tuple[str, dict]:
    """Return (text with every secret replaced by `[REDACTED:<kind>]`, hits per kind)."""
    counts: dict = {}
    lowered = text.lower()
    candidates = {index for hint, rules in _HINT_RULES.items() if hint in lowered for index in rules}
    if _PASSWORD in candidates and "=" not in text and ":" not in text and " is " not in lowered \
            and " was " not in lowered:
        candidates.discard(_PASSWORD)
    for index in sorted(candidates):
        kind, regex = _RULES[index]
        tag = f"[REDACTED:{kind}]"

        def replace(match: re.Match, kind=kind, tag=tag) -> str:
            counts[kind] = counts.get(kind, 0) + 1
            groups = match.groupdict()
            return (groups.get("pre") or groups.get("pre2") or "") + tag + (groups.get("post") or "")

        text = regex.sub(replace, text)
    return text, counts
