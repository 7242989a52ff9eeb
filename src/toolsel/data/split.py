"""Group-aware, hash-stable train/valid/test split with enforced zero overlap and a contamination probe.

Assignment: every example gets a group key (`session`, `project` or `template`, see `raw_group_key`). Groups
that share a normalized prompt are then merged (union-find) into one group named by its smallest key, and each
merged group goes to the split picked by sha256(seed, group name). Why merge: two sessions in which the user
typed the same task would otherwise land in different splits and put one prompt on both sides; merging is
what makes "zero normalized-prompt overlap" hold by construction instead of by luck. Hashing the group name
(not its position or the data size) means adding data never moves an existing group, unless the new data
merges it with another one (then the merged group follows its smallest key).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from functools import lru_cache
from itertools import combinations

from toolsel.data.normalize import mask_templates, normalize_prompt, tool_set_key
from toolsel.data.records import SPLITS

GROUP_KEYS = ("session", "project", "template")
_EXAMPLES_SHOWN = 3


class SplitOverlapError(ValueError):
    """Two splits share a pair, a normalized prompt or a group: the split must not be written."""


@lru_cache(maxsize=1 << 16)  # called once per record, but templates repeat (one per group)
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def raw_group_key(record: dict, mode: str, template: str) -> str:
    """`session:<id>`, `project:<cwd>` or `template:<sha256 of the masked prompt>`.

    A record without a session id (or project) falls back to its template key, so it still groups with its
    near-duplicates rather than standing alone.
    """
    if mode == "session" and record.get("session_id"):
        return f"session:{record['session_id']}"
    if mode == "project" and record.get("project"):
        return f"project:{record['project']}"
    if mode not in GROUP_KEYS:
        raise ValueError(f"unknown group key {mode!r} (expected one of {', '.join(GROUP_KEYS)})")
    return f"template:{_digest(template)}"


def merge_groups(keys: list[str], prompts: list[str]) -> list[str]:
    """Per record, the name of its merged group: keys that share a prompt are one group, named by the min key."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = key
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[key] != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    first_key_of_prompt: dict[str, str] = {}
    for key, prompt in zip(keys, prompts):
        other = first_key_of_prompt.setdefault(prompt, key)
        a, b = find(key), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the root is always the smallest key seen in the component
    return [find(key) for key in keys]


def assign_split(group: str, seed: int, fractions: dict[str, float]) -> str:
    """The split of a group: a uniform number from sha256(seed, group) against the cumulative fractions."""
    digest = hashlib.sha256(f"{seed}\x1f{group}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name in SPLITS:
        cumulative += fractions[name]
        if u < cumulative:
            return name
    return next(name for name in reversed(SPLITS) if fractions[name] > 0)


def check_fractions(fractions: dict[str, float]) -> None:
    if set(fractions) != set(SPLITS) or any(not 0 <= f <= 1 for f in fractions.values()):
        raise ValueError(f"split fractions must give train, valid and test in [0, 1]; got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must add up to 1; got {fractions} (sum {sum(fractions.values())})")


def _keyed(records: list[dict]) -> list[tuple[dict, str, str]]:
    """(record, normalized prompt, template) per record, computed once."""
    norms = [normalize_prompt(r["prompt"]) for r in records]
    return list(zip(records, norms, mask_templates(norms)))


def _overlaps(keyed: dict[str, list[tuple[dict, str, str]]]) -> dict[str, dict[str, list[str]]]:
    # A shared (exact or normalized) pair implies a shared normalized prompt, so pairs are only collected
    # among the records whose prompt is shared: exact, and nearly free when there is no overlap.
    prompts = {name: {n for _, n, _ in rows} for name, rows in keyed.items()}
    groups = {name: {r["group"] for r, _, _ in rows} for name, rows in keyed.items()}

    def pairs(name: str, shared: set[str]) -> tuple[set[str], set[str]]:
        rows = [(r, n) for r, n, _ in keyed[name] if n in shared]
        return ({f"{r['prompt']}\x1e{chr(31).join(r['tools'])}" for r, _ in rows},
                {f"{n}\x1e{tool_set_key(r['tools'])}" for r, n in rows})

    found = {}
    for a, b in combinations(keyed, 2):
        shared = prompts[a] & prompts[b]
        (exact_a, norm_a), (exact_b, norm_b) = pairs(a, shared), pairs(b, shared)
        found[f"{a}|{b}"] = {"pairs": sorted(exact_a & exact_b), "normalized_pairs": sorted(norm_a & norm_b),
                             "prompts": sorted(shared), "groups": sorted(groups[a] & groups[b])}
    return found


def overlaps(splits: dict[str, list[dict]]) -> dict[str, dict[str, list[str]]]:
    """For each pair of splits: shared exact pairs, normalized pairs, normalized prompts and groups."""
    return _overlaps({name: _keyed(records) for name, records in splits.items()})


def assert_disjoint(found: dict[str, dict[str, list[str]]]) -> None:
    """Raise SplitOverlapError describing every overlap; silent when all are empty."""
    problems = []
    for pair, kinds in found.items():
        for kind, shared in kinds.items():
            if shared:
                shown = ", ".join(repr(s[:60]) for s in shared[:_EXAMPLES_SHOWN])
                problems.append(f"{len(shared)} {kind} in both {pair.replace('|', ' and ')} (e.g. {shown})")
    if problems:
        raise SplitOverlapError("split overlap, refusing to write the split: " + "; ".join(problems))


def _probe(train: list[tuple[dict, str, str]], probe: list[tuple[dict, str, str]]) -> dict:
    train_prompts = {n for _, n, _ in train}
    train_templates = {t for _, _, t in train}
    exact = [r["id"] for r, n, _ in probe if n in train_prompts]
    near = [r["id"] for r, _, t in probe if t in train_templates]
    return {
        "probed": len(probe),
        "exact_hits": len(exact),
        "near_hits": len(near),
        "near_hit_rate": round(len(near) / len(probe), 6) if probe else 0.0,
        "near_hit_ids": sorted(near)[:_EXAMPLES_SHOWN],
    }


def contamination_probe(train: list[dict], probe: list[dict]) -> dict:
    """What a train-lookup finds for `probe` prompts: exact (normalized) hits and near (same template) hits."""
    return _probe(_keyed(train), _keyed(probe))


def split_examples(records: list[dict], group_key: str, fractions: dict[str, float], seed: int
                   ) -> tuple[dict[str, list[dict]], dict]:
    """Return ({split: records with `group`}, report). Raises SplitOverlapError if any overlap survives."""
    check_fractions(fractions)
    rows = _keyed(records)
    raw = [raw_group_key(r, group_key, t) for r, _, t in rows]
    merged = merge_groups(raw, [n for _, n, _ in rows])

    assignment = {group: assign_split(group, seed, fractions) for group in set(merged)}
    keyed: dict[str, list[tuple[dict, str, str]]] = {name: [] for name in SPLITS}
    for (record, norm, template), group in zip(rows, merged):
        keyed[assignment[group]].append(({**record, "group": group}, norm, template))
    for name in SPLITS:
        keyed[name].sort(key=lambda row: (row[0]["source_file"], row[0]["source_line"], row[0]["id"]))

    found = _overlaps(keyed)
    assert_disjoint(found)
    sizes = Counter(merged)
    report = {
        "group_key": group_key,
        "groups_before_merge": len(set(raw)),
        "groups": len(sizes),
        "largest_group_examples": max(sizes.values(), default=0),
        "overlap": {pair: {kind: len(v) for kind, v in kinds.items()} for pair, kinds in found.items()},
        "contamination": {f"{name}_vs_train": _probe(keyed["train"], keyed[name]) for name in ("valid", "test")},
    }
    return {name: [row[0] for row in keyed[name]] for name in SPLITS}, report
