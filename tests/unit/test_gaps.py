"""`GapGuard`: a fetch that skips a record is cut at the gap and read again from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from alto.fetch_gaps import GAP_SEEKS, GapGuard

TP = ("stage", 0)
OTHER = ("stage", 1)
CHANGELOG = ("table-changelog", 0)


@dataclass(frozen=True)
class Rec:
    offset: int


def recs(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


def offsets(batch: object) -> list[int]:
    return [r.offset for r in batch]  # type: ignore[attr-defined]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard(seeks: int = GAP_SEEKS, clock: Clock | None = None, patience_s: float = 0.0) -> GapGuard:
    return GapGuard(
        lambda tp: not tp[0].endswith("-changelog"),
        seeks=seeks,
        patience_s=patience_s,
        clock=clock or Clock(),
    )


def test_contiguous_fetches_pass_whole_and_advance_the_expected_offset() -> None:
    g = guard()
    g.expect(TP, 10)
    kept, seek = g.screen({TP: recs(10, 11, 12)})
    assert offsets(kept[TP]) == [10, 11, 12] and seek == {}
    kept, seek = g.screen({TP: recs(13, 14)})
    assert offsets(kept[TP]) == [13, 14] and seek == {}
    assert g.expected(TP) == 15


def test_a_fetch_that_starts_past_the_expected_offset_is_held_back_and_read_again() -> None:
    g = guard()
    g.expect(TP, 10)
    kept, seek = g.screen({TP: recs(11, 12)})  # offset 10 not visible yet
    assert offsets(kept[TP]) == [] and seek == {TP: 10}
    kept, seek = g.screen({TP: recs(10, 11, 12)})  # the read from 10
    assert offsets(kept[TP]) == [10, 11, 12] and seek == {}


def test_a_gap_inside_a_fetch_hands_on_the_records_before_it() -> None:
    g = guard()
    g.expect(TP, 0)
    kept, seek = g.screen({TP: recs(0, 1, 3, 4), OTHER: recs(7, 8)})
    assert offsets(kept[TP]) == [0, 1] and seek == {TP: 2}
    assert offsets(kept[OTHER]) == [7, 8]  # nothing expected yet: learnt from the fetch
    assert g.expected(TP) == 2 and g.expected(OTHER) == 9


def test_a_hole_that_stays_is_passed_after_the_seek_backs(caplog: pytest.LogCaptureFixture) -> None:
    g = guard(seeks=2)
    g.expect(TP, 5)
    for _ in range(2):
        kept, seek = g.screen({TP: recs(6, 7)})
        assert offsets(kept[TP]) == [] and seek == {TP: 5}
    with caplog.at_level(logging.WARNING):
        kept, seek = g.screen({TP: recs(6, 7)})
    assert offsets(kept[TP]) == [6, 7] and seek == {}
    assert "offset 5 still missing after 2 seek-backs" in caplog.text
    # the count starts again for the next hole
    kept, seek = g.screen({TP: recs(9)})
    assert offsets(kept[TP]) == [] and seek == {TP: 8}


def test_a_hole_is_passed_only_once_it_has_lasted_the_patience_too() -> None:
    """Seek-backs answered within a millisecond (the long-poll front) must not use up the
    count while the missing record is still on its way."""
    clock = Clock()
    g = guard(seeks=2, clock=clock, patience_s=0.5)
    g.expect(TP, 5)
    for _ in range(20):  # many quick seek-backs, 10 ms apart: still within the patience
        assert g.screen({TP: recs(6, 7)})[1] == {TP: 5}
        clock.now += 0.01
    clock.now += 0.3  # 0.5 s since the first seek-back
    kept, seek = g.screen({TP: recs(6, 7)})
    assert offsets(kept[TP]) == [6, 7] and seek == {}


def test_a_filled_gap_resets_the_count() -> None:
    g = guard(seeks=1)
    g.expect(TP, 0)
    assert g.screen({TP: recs(1)})[1] == {TP: 0}
    assert offsets(g.screen({TP: recs(0, 1)})[0][TP]) == [0, 1]
    assert g.screen({TP: recs(3)})[1] == {TP: 2}  # a new gap gets its own seek-back


def test_records_below_the_expected_offset_are_handed_on() -> None:
    """Read again after a seek the guard did not see (each stage tolerates a record twice)."""
    g = guard()
    g.expect(TP, 10)
    kept, seek = g.screen({TP: recs(4, 5)})
    assert offsets(kept[TP]) == [4, 5] and seek == {}
    assert g.expected(TP) == 6


def test_unwatched_topics_and_forgotten_partitions_are_not_screened() -> None:
    g = guard()
    g.expect(CHANGELOG, 0)
    kept, seek = g.screen({CHANGELOG: recs(3, 9)})  # a compacted log has real holes
    assert offsets(kept[CHANGELOG]) == [3, 9] and seek == {}
    g.expect(TP, 0)
    g.forget([TP])
    kept, seek = g.screen({TP: recs(5)})
    assert offsets(kept[TP]) == [5] and seek == {}
