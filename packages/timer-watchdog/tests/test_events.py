"""Events as JSON lines, and the stats struct."""

from __future__ import annotations

import json

import msgspec
import pytest

from timer_api import RejectReason
from timer_watchdog import (
    Armed,
    Exited,
    Expired,
    Frame,
    Reaped,
    Rejected,
    Released,
    Signalled,
    Unkillable,
    WatchdogStats,
    decode_event,
    encode_event,
)

EVENTS = [
    Armed(time=1.0, pid=10, scope_id="s", expires_in=5.0, signal=9, thread_id=77),
    Released(time=1.0, pid=10, scope_id="s"),
    Expired(time=1.0, pid=10, scope_id="s", late=0.001, expiration_time=2.0),
    Signalled(time=1.0, pid=10, scope_id="s", signal=15, late=0.002, detail="first"),
    Reaped(
        time=1.0,
        pid=10,
        scope_id="s",
        signal=9,
        late=0.5,
        stack_path="/d/worker-10-5.stack",
        frame=Frame("/w.py", 3, "spin"),
    ),
    Unkillable(time=1.0, pid=10, scope_id="s", signal=9, late=5.0, state="D"),
    Rejected(time=1.0, reason=RejectReason.PID_REUSED, detail="start differs", pid=10),
    Exited(time=1.0, pid=10, timers=2),
]


class TestCodec:
    @pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.event)
    def test_round_trip_as_one_json_line(self, event):
        line = encode_event(event)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert decode_event(line) == event
        obj = json.loads(line)
        assert obj["event"] == event.event
        assert obj["time"] == 1.0

    def test_tags_are_the_documented_names(self):
        assert [e.event for e in EVENTS] == [
            "armed",
            "released",
            "expired",
            "signalled",
            "reaped",
            "unkillable",
            "rejected",
            "exited",
        ]

    @pytest.mark.parametrize("line", [b"", b"{}", b'{"event": "nope", "time": 1}', b"[1]"])
    def test_decoding_a_non_event_raises(self, line):
        with pytest.raises(msgspec.DecodeError):
            decode_event(line)

    def test_events_are_immutable(self):
        with pytest.raises(AttributeError):
            EVENTS[0].pid = 3  # type: ignore[misc]


class TestStats:
    def test_every_counter_starts_at_zero(self):
        stats = WatchdogStats()
        assert set(msgspec.structs.asdict(stats).values()) == {0}
        assert set(WatchdogStats.__struct_fields__) >= {
            "received",
            "armed",
            "released",
            "rejected",
            "expired",
            "signalled",
            "reaped",
            "unkillable",
            "exited",
            "timers",
        }
