import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolsel.eval.parse import (
    OutputsInsaneError,
    ParsedTools,
    check_outputs_sane,
    classify_names,
    output_health,
    parse_tools,
)

CANDIDATES = ["Bash", "Read", "Edit", "Grep", "TodoWrite", "mcp__github__create_issue", "LS"]
MARKERS = ["<turn|>", "<eos>", "<|turn>", "<|channel>", "<channel|>", "<pad>", "<bos>", "<|image|>", "\n", "- "]


def canonical(tools):
    """The training response format (INTERFACES.md): `- Tool` lines, `<turn|>`, `<eos>` fill."""
    return "\n".join(f"- {t}" for t in tools) + "<turn|>" + "<eos>" * 5


def test_canonical_response():
    assert parse_tools(canonical(["Bash", "Read"]), CANDIDATES) == ParsedTools(["Bash", "Read"], [], False, False)


def test_case_maps_to_candidate_spelling_and_duplicates_keep_first():
    parsed = parse_tools("- bash\n- READ\n- Bash\n- ls\n- read<turn|>", CANDIDATES)
    assert parsed.valid == ["Bash", "Read", "LS"]
    assert parsed.invalid == []


@pytest.mark.parametrize("text", [
    "* Bash\n* Read", "1. Bash\n2. Read", "1) Bash\n2) Read", "-Bash\n-Read", "  - Bash  \n\t- Read\t",
    "• Bash\n• Read", "Bash\nRead", "Bash, Read", "- Bash, Read", "- `Bash`\n- **Read**", "- Bash.\n- Read;",
    "- Bash\r\n- Read\r\n", "- Bash: run the test suite\n- Read (to inspect files)",
])
def test_list_styles(text):
    assert parse_tools(text, CANDIDATES).valid == ["Bash", "Read"]


def test_stray_text_is_ignored_not_invalid():
    text = "Sure! Here are the tools you will need:\n\n- Bash\n- Read\n\nThese cover the task."
    parsed = parse_tools(text, CANDIDATES)
    assert parsed.valid == ["Bash", "Read"] and parsed.invalid == []


def test_name_outside_candidates_is_invalid_not_a_crash():
    parsed = parse_tools("- Bash\n- WebFetch\n- Frobnicate\n- webfetch<turn|>", CANDIDATES)
    assert parsed.valid == ["Bash"]
    assert parsed.invalid == ["WebFetch", "Frobnicate"]
    assert not parsed.empty


def test_channel_block_and_reemitted_turn_header_are_dropped():
    text = "<|turn>model\n<|channel>thought\nI think Grep\n<channel|>- Read\n- Edit<turn|><eos>"
    parsed = parse_tools(text, CANDIDATES)
    assert parsed.valid == ["Read", "Edit"]
    assert parsed.invalid == []


def test_answer_ends_at_first_end_marker():
    assert parse_tools("- Bash<turn|>- Read\n- Edit", CANDIDATES).valid == ["Bash"]
    assert parse_tools("- Bash\n- Read<eos>- Edit<turn|>", CANDIDATES).valid == ["Bash", "Read"]


def test_mcp_and_unusual_candidate_names():
    cands = CANDIDATES + ["my tool", "x.y-z"]
    parsed = parse_tools("- mcp__github__create_issue\n- My Tool\n- x.y-z<turn|>", cands)
    assert parsed.valid == ["mcp__github__create_issue", "my tool", "x.y-z"]


@pytest.mark.parametrize("text,empty,marker_only", [
    ("", True, False),
    ("   \n\t", True, False),
    ("<|channel>thought\n<channel|><turn|><eos><eos>", True, True),
    ("<turn|>", True, True),
    ("<eos><eos>- Bash", True, True),
    ("I am not sure what to do here.", True, False),
    ("- Bash", False, False),
])
def test_empty_and_marker_only(text, empty, marker_only):
    parsed = parse_tools(text, CANDIDATES)
    assert (parsed.empty, parsed.marker_only) == (empty, marker_only)


def test_none_and_non_string_do_not_crash():
    assert parse_tools(None, CANDIDATES).empty
    assert parse_tools(42, CANDIDATES).empty


def test_classify_names_matches_parser():
    assert classify_names(["bash", "Bash", "Nope", "read"], CANDIDATES) == ParsedTools(["Bash", "Read"], ["Nope"],
                                                                                       False, False)


text_with_markers = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(MARKERS + CANDIDATES)), max_size=25)


@settings(max_examples=400, deadline=None)
@given(text_with_markers)
def test_never_raises_and_invariants_hold(pieces):
    parsed = parse_tools("".join(pieces), CANDIDATES)
    assert set(parsed.valid) <= set(CANDIDATES)
    assert len(set(parsed.valid)) == len(parsed.valid)
    assert len({n.casefold() for n in parsed.invalid}) == len(parsed.invalid)
    assert not {n.casefold() for n in parsed.invalid} & {c.casefold() for c in CANDIDATES}
    assert parsed.empty == (not parsed.valid and not parsed.invalid)
    assert not parsed.marker_only or parsed.empty


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CANDIDATES), unique=True, max_size=len(CANDIDATES)))
def test_canonical_format_round_trips(tools):
    parsed = parse_tools(canonical(tools), CANDIDATES)
    assert parsed.valid == tools and parsed.invalid == []
    assert parsed.marker_only == (not tools)


def test_round_trip_with_render_helpers_format_response():
    chat = pytest.importorskip("toolsel.model.chat")
    tools = ["TodoWrite", "Grep", "Bash"]
    assert parse_tools(chat.format_response(tools), CANDIDATES).valid == tools


def test_output_health_counts_each_kind():
    texts = ["- Bash<turn|>", "", "<|channel>thought\n<channel|><turn|>", "blah blah", "- Nope<turn|>"]
    assert output_health(texts, CANDIDATES) == {"total": 5, "blank": 1, "marker_only": 1, "stray_only": 1,
                                                "invalid_only": 1, "ok": 1}


def test_check_outputs_sane_fails_loudly_on_mostly_marker_output():
    texts = ["<|channel>thought\n<channel|><turn|>"] * 6 + ["- Bash<turn|>"] * 4
    with pytest.raises(OutputsInsaneError, match=r"fused: 6/10 outputs.*marker_only 6"):
        check_outputs_sane(texts, CANDIDATES, max_bad_fraction=0.5, system="fused")


def test_check_outputs_sane_passes_healthy_output_and_respects_threshold():
    texts = ["- Bash<turn|>"] * 5 + [""] * 5
    assert check_outputs_sane(texts, CANDIDATES, max_bad_fraction=0.5)["ok"] == 5
    with pytest.raises(OutputsInsaneError):
        check_outputs_sane(texts, CANDIDATES, max_bad_fraction=0.4)
    with pytest.raises(OutputsInsaneError):
        check_outputs_sane([], CANDIDATES)
