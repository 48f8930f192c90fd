"""Quantum splitting on token streams with awkward boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alto.lm_service.quanta import RULES, LineWords, Splitter, split_all

TEXT = "Claims:\n1. The Moon orbits Earth.\n2) It is 384,400 km away!\n\n- Tides follow it. Really?\n* No trailing newline"


def _chop(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(
    st.lists(st.integers(0, 500), max_size=40), st.sampled_from([r for r in RULES if r != "token"])
)
def test_result_does_not_depend_on_where_the_stream_is_cut(cuts: list[int], rule: str) -> None:
    assert split_all(_chop(TEXT, cuts), rule) == split_all([TEXT], rule)  # type: ignore[arg-type]


def test_rules_on_a_numbered_list_with_blank_lines_and_no_trailing_newline() -> None:
    assert split_all([TEXT], "line") == [
        "Claims:",
        "1. The Moon orbits Earth.",
        "2) It is 384,400 km away!",
        "- Tides follow it. Really?",
        "* No trailing newline",
    ]
    assert split_all([TEXT], "item") == [
        "Claims:",
        "The Moon orbits Earth.",
        "It is 384,400 km away!",
        "Tides follow it. Really?",
        "No trailing newline",
    ]
    assert split_all([TEXT], "sentence") == [
        "Claims:",
        "The Moon orbits Earth.",  # "1." alone is a bullet, not a sentence
        "2) It is 384,400 km away!",
        "- Tides follow it.",
        "Really?",
        "* No trailing newline",
    ]
    assert split_all([TEXT], "word")[:4] == ["Claims:", "1.", "The", "Moon"]
    assert split_all([TEXT], "word")[-1] == "newline"
    assert split_all([TEXT], "whole") == [TEXT.strip()]


ABBREVIATED = (
    "The B.E.R.S. is a society in the U.S. with Dr. Smith. John F. Kennedy climbed Mt. "
    "Washington, approx. 1.9 km high! So did I. a. A bullet.\nb. Another one."
)


def test_initialisms_and_abbreviations_do_not_end_sentences() -> None:
    assert split_all([ABBREVIATED], "sentence") == [
        "The B.E.R.S. is a society in the U.S. with Dr. Smith.",
        "John F. Kennedy climbed Mt. Washington, approx. 1.9 km high!",
        "So did I.",
        "A bullet.",  # a letter and period that start a sentence are a bullet, dropped
        "Another one.",
    ]


@given(st.lists(st.integers(0, 500), max_size=40))
def test_abbreviations_do_not_depend_on_where_the_stream_is_cut(cuts: list[int]) -> None:
    assert split_all(_chop(ABBREVIATED, cuts), "sentence") == split_all([ABBREVIATED], "sentence")


def test_quanta_are_emitted_as_soon_as_complete() -> None:
    s = Splitter("line")
    assert s.feed("first li") == []
    assert s.feed("ne\nsecond") == ["first line"]
    assert s.feed(" line") == []
    assert s.finish() == ["second line"]
    w = Splitter("word")
    assert w.feed("alpha be") == ["alpha"]
    assert w.feed("ta ") == ["beta"]
    assert w.finish() == []


@given(
    st.lists(st.integers(0, 200), max_size=30),
    st.sampled_from(["word", "line", "sentence", "whole"]),
)
def test_multibyte_utf8_split_across_tokens(cuts: list[int], rule: str) -> None:
    text = "Zürich’s café — naïve 東京 🌙 moon.\nΣελήνη ok."
    data = text.encode()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces: list[str | bytes] = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert split_all(pieces, rule) == split_all([text], rule)  # type: ignore[arg-type]
    assert "\ufffd" not in "".join(split_all(pieces, rule))  # type: ignore[arg-type]


def test_token_rule_passes_pieces_through_and_skips_blank_ones() -> None:
    assert split_all(["The", " Moon", " ", "\n", "."], "token") == ["The", " Moon", "."]


def test_blank_output_yields_nothing() -> None:
    for rule in RULES:
        assert split_all(["", "  \n\n ", "\n"], rule) == []


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError):
        Splitter("paragraph")  # type: ignore[arg-type]


_LIST_TEXT = st.lists(
    st.sampled_from(
        ["1.", "2)", "-", "*", "a)", "(3)", "Paris", "is", "big.", " ", "  ", "\n", "é"]
    ),
    max_size=40,
).map(" ".join)


def _line_words(pieces: list[str | bytes], rule: str) -> list[list[str]]:
    words = LineWords(rule)  # type: ignore[arg-type]
    events = [e for p in pieces for e in words.feed(p)] + words.finish()
    lines: list[list[str]] = [[]]
    for line, word in events:
        assert line == len(lines) - 1, "words arrive line by line"
        if word is None:
            lines.append([])
        else:
            lines[-1].append(word)
    assert lines[-1] == [], "every line's words end with its END"
    return lines[:-1]


@given(_LIST_TEXT, st.lists(st.integers(0, 200), max_size=12), st.sampled_from(["line", "item"]))
def test_line_words_are_exactly_the_words_of_each_quantum(
    text: str, cuts: list[int], rule: str
) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces: list[str | bytes] = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    quanta = split_all(pieces, rule)  # type: ignore[arg-type]
    assert _line_words(pieces, rule) == [q.split() for q in quanta]


def test_line_words_stream_before_their_line_is_complete() -> None:
    words = LineWords("item")
    assert words.feed("1. ") == []  # may be a bullet
    assert words.feed("Paris is") == [(0, "Paris")]  # "is" may go on
    assert words.feed(" big\n- x") == [(0, "is"), (0, "big"), (0, None)]
    assert words.finish() == [(1, "x"), (1, None)]
