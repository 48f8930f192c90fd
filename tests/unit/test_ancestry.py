"""Key derivation: quanta of one aggregation node share a key; other nodes' keys differ."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alto.schemas.messages import PathEntry
from alto.streams.ancestry import (
    key_at_level,
    node_key,
    path_str,
    relative_indices,
    request_id_of_key,
)

STAGES = ("claims", "queries", "tokens", "words")
request_ids = st.text(min_size=1, max_size=12)
paths = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(
    lambda idx: tuple(PathEntry(STAGES[i], n) for i, n in enumerate(idx))
)


@given(request_ids, paths, paths, st.integers(0, 4))
def test_same_node_same_key_other_node_other_key(rid: str, a: tuple, b: tuple, level: int) -> None:
    if len(a) < level or len(b) < level:
        return
    same_node = a[:level] == b[:level]
    assert (key_at_level(rid, a, level) == key_at_level(rid, b, level)) == same_node


@given(request_ids, request_ids, paths, st.integers(0, 4) | st.none())
def test_keys_of_different_requests_differ(
    r1: str, r2: str, path: tuple, level: int | None
) -> None:
    if r1 != r2:
        assert key_at_level(r1, path, level) != key_at_level(r2, path, level)


@given(request_ids, paths, st.integers(0, 4) | st.none())
def test_request_id_is_recoverable_from_every_key(rid: str, path: tuple, level: int | None) -> None:
    key = key_at_level(rid, path, level)
    assert request_id_of_key(key) == rid
    assert request_id_of_key(key.encode()) == rid


@given(request_ids, paths)
def test_stateless_consumers_get_the_full_path(rid: str, path: tuple) -> None:
    assert key_at_level(rid, path, None) == node_key(rid, path)


def test_forms() -> None:
    path = (PathEntry("sentences", 2), PathEntry("words", 7))
    assert path_str(path) == "sentences:2/words:7"
    assert relative_indices(path, 1) == (7,)
    assert key_at_level("r", path, 1) == "r|sentences:2"
    assert key_at_level("r", (), 1) == "r|"
