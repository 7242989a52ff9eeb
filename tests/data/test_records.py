"""The compiled record check agrees with jsonschema (never accepts what jsonschema rejects)."""

import pytest
from hypothesis import given, settings, strategies as st

from toolsel.data.records import compile_check, read_validated
from toolsel.io import write_jsonl
from toolsel.schemas import SchemaError, load_schema, validator

GOOD = {"id": "0123456789abcdef", "prompt": "Fix it", "tools": ["Read", "Bash"], "format": "claude_code",
        "source_file": "f.jsonl", "source_line": 3, "session_id": None, "project": "/p", "timestamp": None}

_value = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=False, width=16),
                   st.sampled_from(["", "x", "0123456789abcdef", "claude_code", "pairs", "chat", "NOPE"]),
                   st.lists(st.sampled_from(["Read", "Bash", "", 1, True, None]), max_size=3))
_record = st.builds(lambda base, changes, drop: {k: v for k, v in {**base, **changes}.items() if k not in drop},
                    st.just(GOOD), st.dictionaries(st.sampled_from(sorted(GOOD) + ["dup_count", "group", "extra"]),
                                                   _value, max_size=3),
                    st.sets(st.sampled_from(sorted(GOOD)), max_size=1))


@pytest.mark.parametrize("name", ["example", "quarantine", "dedup_metrics", "params"])
def test_compiles_the_record_schemas(name):
    assert (compile_check(load_schema(name)) is not None) == (name != "params")  # params uses anyOf


@settings(max_examples=400, deadline=None)
@given(record=_record)
def test_fast_check_never_accepts_an_invalid_example(record):
    fast = compile_check(load_schema("example"))
    full = validator("example").is_valid(record)
    if fast(record):
        assert full
    elif not isinstance(record.get("tools"), list) or all(isinstance(t, str) for t in record["tools"]):
        assert not full  # exact, except lists it hands to jsonschema


def test_read_validated_names_file_record_and_field(tmp_path):
    path = tmp_path / "e.jsonl"
    write_jsonl(path, [GOOD, {**GOOD, "source_line": 0}])
    with pytest.raises(SchemaError, match=r"e.jsonl:2: field 'source_line'"):
        read_validated(path, "example")
    write_jsonl(path, [GOOD, {**GOOD, "source_line": 2.0}])  # 2.0 is an integer in JSON Schema
    assert len(read_validated(path, "example")) == 2
