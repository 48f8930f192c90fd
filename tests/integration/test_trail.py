"""The lost-request trail (`alto.infra.client.trail`) against a real broker: each record of
the request with its place (`topic[partition]@offset`), and a count of offsets the broker
did not serve (none on a healthy topic)."""

from __future__ import annotations

from alto.config import AltoConfig
from alto.infra.client import Submitter, _Whole, new_request, trail
from alto.kafka import ensure_topics


def test_the_trail_places_each_record_of_a_request(alto_config: AltoConfig) -> None:
    config = alto_config
    topics = (config.requests_topic, config.lm_requests_topic, config.lm_work_topic)
    ensure_topics(config, {**dict.fromkeys(topics, 1), config.sink_topic: 1})
    submitter = Submitter(config)
    ours = new_request("example", "One sentence. Two.", request_id="trail-me")
    for i in range(3):
        submitter.submit(new_request("example", "noise", request_id=f"other-{i}"))
    submitter.submit(ours)
    submitter.flush()

    lines = trail(config, [], ["trail-me"]).splitlines()

    assert lines == [
        f"{config.requests_topic}[0]@3: trail-me example None",
        "offsets not served: 0",
    ]


def test_offsets_a_partition_skipped_are_named() -> None:
    whole = _Whole.__new__(_Whole)
    whole.topic, whole.offsets = "t", {0: [0, 1, 2, 6, 7], 1: [4, 5]}
    assert whole.gaps() == ["t[0]: offsets 3-5 not served (read 0..7)"]
