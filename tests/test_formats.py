"""Encoders, prompt template and the tolerant parser."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttft.formats import (
    ALPHABET,
    ENCODERS,
    MARKERS,
    Encoder,
    ParseError,
    build_prompt,
    build_target,
    get_encoder,
    parse_output,
    split_tokens,
)
from ttft.tasks import Pair


@st.composite
def grids(draw, max_side: int = 30):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    rng = random.Random(draw(st.integers(0, 2**32)))
    return [[rng.randrange(10) for _ in range(w)] for _ in range(h)]


encoder_names = st.sampled_from(sorted(ENCODERS))


def _kind(text, encoder):
    out = parse_output(text, encoder)
    assert isinstance(out, ParseError), out
    return out.kind


def test_encoder_examples():
    g = [[0, 1, 2], [3, 4, 0]]
    assert ENCODERS["minimal"].encode(g) == "012\n340"
    assert ENCODERS["shape"].encode(g) == "2x3\n1 012\n2 340"
    assert all(isinstance(e, Encoder) and e.name == n for n, e in ENCODERS.items())


@given(grids(), encoder_names)
def test_encode_decode_round_trip(grid, name):
    enc = ENCODERS[name]
    text = enc.encode(grid)
    assert enc.decode(text) == grid
    assert parse_output(text, name) == grid
    assert parse_output(build_target(grid, name), name) == grid


@given(
    grids(), encoder_names, st.sampled_from(["", "\n", "\n\n", "  \n", "\n<in>\n0101\n<out>\n", "\n\nhello"])
)
def test_parse_tolerates_surroundings(grid, name, tail):
    text = "\n " + build_target(grid, name) + tail
    assert parse_output(text, name) == grid


@given(grids(), encoder_names)
def test_prompt_uses_only_alphabet_and_markers(grid, name):
    train = [Pair(grid, [[1, 2]]), Pair([[3]], grid)]
    prompt = build_prompt(train, grid, name)
    target = build_target(grid, name)
    for text in (prompt, target):
        tokens = split_tokens(text)
        assert "".join(tokens) == text
        assert set(tokens) <= set(ALPHABET) | set(MARKERS)


def test_prompt_template():
    train = [Pair([[1, 2]], [[3], [4]])]
    assert build_prompt(train, [[5]]) == "<in>\n12\n<out>\n3\n4\n<in>\n5\n<out>\n"
    assert (
        build_prompt(train, [[5]], "shape")
        == "<in>\n1x2\n1 12\n<out>\n2x1\n1 3\n2 4\n<in>\n1x1\n1 5\n<out>\n"
    )
    assert build_target([[7, 8]]) == "78\n"
    assert build_target([[7, 8]], "shape") == "1x2\n1 78\n"


def test_split_tokens_rejects_foreign_characters():
    assert split_tokens("<in>\n0x<out>") == ["<in>", "\n", "0", "x", "<out>"]
    with pytest.raises(ValueError, match="'a'"):
        split_tokens("01a")


def test_unknown_encoder():
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("base64")
    with pytest.raises(ValueError, match="unknown encoder"):
        parse_output("01", "base64")


@pytest.mark.parametrize(
    "text,kind",
    [
        ("", "empty"),
        ("   \n\n ", "empty"),
        ("<out>\n012", "empty"),
        ("012\n34\n567", "ragged"),
        ("012\n3456", "ragged"),
        ("01\n012\n012", "ragged"),
        ("012\n012\n01", "truncated"),
        ("012\n0a2", "stray_characters"),
        ("0 1 2\n3 4 5", "stray_characters"),
        ("The answer is\n012", "stray_characters"),
        ("０１", "stray_characters"),  # fullwidth digits are not ARC digits
        ("\n".join(["0" * 40] * 40), "too_large"),
        ("\n".join(["0" * 31] * 2), "too_large"),
        ("\n".join(["0"] * 31), "too_large"),
    ],
)
def test_minimal_parse_errors(text, kind):
    assert _kind(text, "minimal") == kind


@pytest.mark.parametrize(
    "text,kind",
    [
        ("", "empty"),
        ("0x3\n", "empty"),
        ("2x3\n1 012\n2 01", "truncated"),
        ("2x3\n1 012", "truncated"),
        ("2x3\n1 012\n2", "truncated"),
        ("2x", "truncated"),
        ("2x3\n1 012\n<in>", "truncated"),
        ("2x3\n1 012\n2 0123", "shape_mismatch"),
        ("2x3\n1 012\n2 01\n3 012", "shape_mismatch"),
        ("2x3\n1 012\n3 012", "shape_mismatch"),
        ("2x3\n1 0a2\n2 012", "stray_characters"),
        ("012\n345", "stray_characters"),
        ("two by three", "stray_characters"),
        ("40x40\n" + "\n".join(f"{i + 1} " + "0" * 40 for i in range(40)), "too_large"),
        ("2x31\n1 0", "too_large"),
    ],
)
def test_shape_parse_errors(text, kind):
    assert _kind(text, "shape") == kind


def test_shape_ignores_text_after_announced_rows():
    assert parse_output("1x2\n1 01\n2 99\ngarbage", "shape") == [[0, 1]]
    with pytest.raises(ParseError) as e:
        ENCODERS["shape"].decode("1x2\n1 01\n2 99")
    assert e.value.kind == "stray_characters"


def test_strict_decode_raises():
    with pytest.raises(ParseError) as e:
        ENCODERS["minimal"].decode("01\n0")
    assert e.value.kind == "truncated"
    with pytest.raises(ParseError) as e:
        ENCODERS["minimal"].decode(" 01")
    assert e.value.kind == "stray_characters"


def _check_result(out):
    if isinstance(out, ParseError):
        assert out.kind in {"empty", "ragged", "stray_characters", "too_large", "truncated", "shape_mismatch"}
    else:
        assert 1 <= len(out) <= 30 and all(1 <= len(r) == len(out[0]) <= 30 for r in out)
        assert all(type(c) is int and 0 <= c <= 9 for r in out for c in r)


@given(st.text(max_size=300), encoder_names)
def test_parse_never_raises_on_garbage(text, name):
    _check_result(parse_output(text, name))


@given(st.text(alphabet=ALPHABET + "<>inout", max_size=400), encoder_names)
def test_parse_never_raises_on_alphabet_noise(text, name):
    _check_result(parse_output(text, name))


@given(grids(), encoder_names, st.data())
def test_cut_anywhere_never_raises(grid, name, data):
    text = build_target(grid, name)
    cut = data.draw(st.integers(0, len(text)))
    out = parse_output(text[:cut], name)
    if not isinstance(out, ParseError):
        # a cut at a row boundary (or inside a one-row grid) leaves a smaller valid grid; else an error
        if len(out) == 1 and len(out[0]) < len(grid[0]):
            assert out[0] == grid[0][: len(out[0])]
        else:
            assert out == grid[: len(out)]


def test_non_text_input_is_an_error_value():
    assert _kind(None, "minimal") == "empty"


@given(
    grids(),
    encoder_names,
    st.sampled_from(["\n", "<in>\n", "<out>", "\n<in>"]),
    st.text(ALPHABET, max_size=40),
)
def test_length_stopped_complete_grid_is_accepted(grid, name, end, junk):
    """A generation cut at its token limit still counts when its text holds a whole grid and then more."""
    text = build_target(grid, name) + end + junk
    assert parse_output(text, name, length_stop=True) == grid


@given(grids(), encoder_names, st.data())
def test_length_stopped_text_never_yields_a_partial_grid(grid, name, data):
    text = build_target(grid, name)
    cut = data.draw(st.integers(0, len(text)))
    out = parse_output(text[:cut], name, length_stop=True)
    assert isinstance(out, ParseError) or out == grid  # a shape grid is complete once every row is there


def test_length_stop_examples():
    out = parse_output("012\n345\n", "minimal", length_stop=True)
    assert isinstance(out, ParseError) and out.kind == "truncated"  # more rows might have followed
    assert parse_output("012\n345\n\n678", "minimal", length_stop=True) == [[0, 1, 2], [3, 4, 5]]
    assert parse_output("012\n345\n<in>\n01", "minimal", length_stop=True) == [[0, 1, 2], [3, 4, 5]]
    assert parse_output("1x3\n1 012\n2 3", "shape", length_stop=True) == [[0, 1, 2]]
    out = parse_output("2x3\n1 012\n2 34", "shape", length_stop=True)
    assert isinstance(out, ParseError) and out.kind == "truncated"


def test_stop_strings_end_grids_where_the_parser_does():
    from ttft.formats import STOP_STRINGS

    assert "\n\n" in STOP_STRINGS and set(MARKERS) <= set(STOP_STRINGS)
    for name in ENCODERS:
        target = build_target([[1, 2], [3, 4]], name)
        assert not any(s in target for s in STOP_STRINGS)  # a real answer never contains a stop string
        for stop in STOP_STRINGS:
            assert parse_output(target + stop + "99", name, length_stop=True) == [[1, 2], [3, 4]]
