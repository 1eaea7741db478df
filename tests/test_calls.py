"""The call handle's helpers: addresses, and bursts handed over together."""

from __future__ import annotations

import queue

from redun_modal_executor import calls
from redun_modal_executor.calls import Burst, Call, CallAddress
from redun_modal_executor.config import CallOptions


def call(n: int) -> Call:
    return Call(f"Task t{n}", CallOptions(), lambda: b"")


def test_call_addresses_round_trip_through_the_ledger_form():
    assert CallAddress.parse("fc-abc:12") == CallAddress("fc-abc", 12)
    assert CallAddress.parse("fc-abc") == CallAddress("fc-abc")
    assert str(CallAddress("fc-abc", 0)) == "fc-abc:0"
    assert CallAddress("fc-abc", 3).words() == "fc-abc input 3"


def test_a_burst_goes_out_after_the_events_queued_before_it(monkeypatch):
    monkeypatch.setattr(calls, "BURST_LIMIT", 3)
    events: queue.SimpleQueue = queue.SimpleQueue()
    sent: list[list[str]] = []
    burst = Burst(events.put, lambda held: sent.append([c.label for c in held]))
    # A fan-out: redun queued the executions of five jobs; each submits when handled.
    for n in range(5):
        events.put(lambda n=n: burst.add(call(n)))
    while not events.empty():
        events.get()()
    # The first three reached the limit; the event the first one queued sent the rest.
    assert sent == [["Task t0", "Task t1", "Task t2"], ["Task t3", "Task t4"]]
    burst.add(call(9))  # A lone job: out with the next event.
    assert sent[-1] == ["Task t3", "Task t4"] and events.qsize() == 1
    events.get()()
    assert sent[-1] == ["Task t9"]
    burst.add(call(10))
    assert [c.label for c in burst.drop()] == ["Task t10"]  # A stop takes what is held.
    events.get()()
    assert sent[-1] == ["Task t9"]


def test_a_long_fan_out_goes_in_growing_bursts(monkeypatch):
    monkeypatch.setattr(calls, "BURST_LIMIT", 2)
    monkeypatch.setattr(calls, "MAX_BURST", 8)
    events: queue.SimpleQueue = queue.SimpleQueue()
    sent: list[int] = []
    burst = Burst(events.put, lambda held: sent.append(len(held)))
    for round_ in range(2):  # The second fan-out starts small again.
        for n in range(20):
            events.put(lambda n=n: burst.add(call(n)))
        while not events.empty():
            events.get()()
        assert sent == [2, 4, 8, 6] * (round_ + 1)
