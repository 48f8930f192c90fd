"""`alto bench records`: the per-request cost of each topic from two reads of the logs."""

from __future__ import annotations

import pytest

from alto.bench.records import per_request, table
from alto.infra.logstats import PartitionLog


def test_per_request_is_what_the_run_added_per_topic_largest_batch_count_first() -> None:
    before = [PartitionLog("a", 0, 10, 20, 2048), PartitionLog("a", 1, 5, 5, 0)]
    after = [
        PartitionLog("a", 0, 14, 30, 4096),
        PartitionLog("a", 1, 9, 9, 1024),
        PartitionLog("b", 0, 12, 40, 0),  # created during the run
        PartitionLog("c", 0, 3, 3, 0),  # untouched below: left out
    ]
    rows = per_request([*before, PartitionLog("c", 0, 3, 3, 0)], after, requests=4)
    assert [r.topic for r in rows] == ["b", "a"]
    b, a = rows
    assert (b.records, b.batches) == (10.0, 3.0)
    assert (a.records, a.batches, a.kb) == (3.5, 2.0, pytest.approx(0.75))
    lines = table("streaming", rows)
    assert lines[-1] == "| **all** | **13.5** | **5.0** | **0.8** |"
