"""`alto.kafka.FetchPacer`: a consumer's fetch wait doubles with each idle spell, up to a
ceiling, and drops back at the first record."""

from __future__ import annotations

from types import SimpleNamespace

from alto.config import load_config
from alto.kafka import FetchPacer, watch_fetch_wait_ms


def _consumer(wait_ms: int = 10) -> SimpleNamespace:
    # What the pacer touches of an AIOKafkaConsumer: its fetcher's wait.
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=wait_ms))


def test_the_wait_doubles_with_each_idle_spell_and_drops_at_the_first_record() -> None:
    consumer = _consumer()
    pacer = FetchPacer(consumer, busy_ms=10, idle_ms=1000, idle_after_s=10.0)
    t0 = pacer._last_record
    waits = []
    for seconds in (9.9, 10.0, 20.0, 35.0, 60.0, 70.0, 3600.0):
        pacer.saw(0, now=t0 + seconds)
        waits.append(consumer._fetcher._fetch_max_wait_ms)
    assert waits == [10, 20, 40, 80, 640, 1000, 1000]
    assert pacer.idle
    pacer.saw(3, now=t0 + 3601.0)
    assert consumer._fetcher._fetch_max_wait_ms == 10 and not pacer.idle
    # A record restarts the spell.
    pacer.saw(0, now=t0 + 3610.0)
    assert not pacer.idle
    pacer.saw(0, now=t0 + 3611.0)
    assert consumer._fetcher._fetch_max_wait_ms == 20


def test_disabled_or_not_started_consumers_are_left_alone() -> None:
    consumer = _consumer()
    off = FetchPacer(consumer, busy_ms=10, idle_ms=0, idle_after_s=1.0)
    off.saw(0, now=off._last_record + 100)
    assert consumer._fetcher._fetch_max_wait_ms == 10 and not off.enabled
    unstarted = SimpleNamespace(_fetcher=None)
    pacer = FetchPacer(lambda: unstarted, busy_ms=10, idle_ms=250, idle_after_s=1.0)
    pacer.saw(0, now=pacer._last_record + 100)  # no fetcher yet: tried again next poll
    assert not pacer.idle
    unstarted._fetcher = SimpleNamespace(_fetch_max_wait_ms=10)
    pacer.saw(0, now=pacer._last_record + 101)
    assert pacer.idle and unstarted._fetcher._fetch_max_wait_ms == 250


def test_the_defaults_pace_the_embedded_brokers_fetches() -> None:
    config = load_config(environ={})
    pacer = FetchPacer.for_config(config, _consumer())
    assert pacer.enabled and (pacer.busy_ms, pacer.idle_ms) == (250, 1000)
    env = {"ALTO_KAFKA__IDLE_FETCH_WAIT_MS": "0"}
    assert not FetchPacer.for_config(load_config(environ=env), _consumer()).enabled


def test_a_held_consumer_waits_long_until_a_record_comes() -> None:
    """A new generation before its handoff (`alto.agents.transport`): the hold stands
    whatever the spell, and the first record brings the configured wait back."""
    consumer = _consumer()
    pacer = FetchPacer(consumer, busy_ms=10, idle_ms=1000, idle_after_s=10.0)
    pacer.hold(250)
    assert consumer._fetcher._fetch_max_wait_ms == 250 and pacer.idle
    pacer.hold(5)  # never below the configured wait
    assert consumer._fetcher._fetch_max_wait_ms == 10
    pacer.hold(250)
    pacer.saw(1)
    assert consumer._fetcher._fetch_max_wait_ms == 10 and not pacer.idle


def test_watchers_wait_long_only_where_a_fetch_is_answered_as_data_arrives() -> None:
    """Status, table and results watchers (`alto.kafka.watch_fetch_wait_ms`): behind the
    long-poll front (the default) their wait is only their polling rate; on Tansu alone,
    which holds a fetch for its whole wait, it would delay what they see."""
    assert watch_fetch_wait_ms(load_config(environ={})) == 1000
    alone = {"ALTO_KAFKA__LONG_POLL": "false", "ALTO_KAFKA__FETCH_MAX_WAIT_MS": "25"}
    assert watch_fetch_wait_ms(load_config(environ=alone)) == 250
    slow = {**alone, "ALTO_KAFKA__FETCH_MAX_WAIT_MS": "500"}
    assert watch_fetch_wait_ms(load_config(environ=slow)) == 500
