"""systemd notify: a real AF_UNIX datagram socket stands in for systemd."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator

import pytest

from timer_watchdog import Armed
from timer_watchdog._sdnotify import Notifier, Supervisor

PATIENCE = 60.0


class FakeSystemd:
    """A bound datagram socket that reads notify messages as systemd would."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(PATIENCE)

    def next(self) -> dict[str, str]:
        """Return the fields of the next message; fail if none comes in time."""
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"no notify message in {PATIENCE}s")
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def wait_for(self, predicate, what: str, limit: int = 500) -> dict[str, str]:
        """Return the first message for which ``predicate`` holds, reading at most ``limit``."""
        for _ in range(limit):
            message = self.next()
            if predicate(message):
                return message
        pytest.fail(f"no {what} in {limit} messages")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request) -> Iterator[FakeSystemd]:
    # A short directory: a socket path must fit in 108 bytes.
    directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    if request.param == "path":
        address = os.path.join(directory, "notify")
    else:
        address = f"@timer-watchdog-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    yield fake
    fake.close()
    shutil.rmtree(directory)


class TestNotifier:
    def test_sends_one_datagram_of_fields(self, systemd):
        notifier = Notifier(systemd.address)
        assert notifier.notify("READY=1", "STATUS=two\nlines")
        assert systemd.next() == {"READY": "1", "STATUS": "two lines"}
        notifier.close()
        assert not notifier.notify("STOPPING=1")

    @pytest.mark.parametrize("address", [None, "", "relative/path", "vsock:2:1234"])
    def test_nothing_to_notify(self, address):
        notifier = Notifier(address, 1_000_000)
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        assert not notifier.notify("READY=1")

    def test_a_socket_that_is_gone_is_not_an_error(self, tmp_path):
        notifier = Notifier(str(tmp_path / "gone"))
        assert not notifier.notify("READY=1")
        assert not notifier.notify("READY=1")
        notifier.close()

    @pytest.mark.parametrize(
        ("environ", "interval"),
        [
            ({"WATCHDOG_USEC": "3000000"}, 1.5),
            ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
            ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({}, None),
        ],
    )
    def test_watchdog_from_environment(self, systemd, environ, interval):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address, **environ})
        assert notifier.enabled
        assert notifier.watchdog_interval == interval
        notifier.close()


class TestSupervisor:
    def test_ready_pings_no_ping_while_the_loop_is_stuck_then_stopping(
        self, systemd, make_server, spawn
    ):
        harness = make_server()
        release = threading.Event()

        def stuck_subscriber(event: object) -> None:
            if isinstance(event, Armed):
                release.wait(PATIENCE * 4)

        harness.server.subscribe(stuck_subscriber)
        notifier = Notifier(systemd.address, watchdog_usec=200_000)
        supervisor = Supervisor(notifier, harness.server, lambda: "serving test")
        assert supervisor.interval == 0.1
        assert supervisor.stall_after == 0.1
        try:
            supervisor.ready()
            ready = systemd.next()
            assert ready["READY"] == "1"
            assert ready["MAINPID"] == str(os.getpid())
            ping = systemd.wait_for(lambda m: "WATCHDOG" in m, "WATCHDOG=1")
            assert ping["STATUS"].startswith("serving test: 0 timers armed, 0 workers")
            # Wedge the loop for real: it blocks in a subscriber, in the middle of a round.
            harness.put(spawn().request(after=60))
            systemd.wait_for(lambda m: "stalled" in m.get("STATUS", ""), "a stalled status")
            # One datagram a tick: the next ticks carry the status and no ping.
            for _ in range(3):
                message = systemd.next()
                assert "WATCHDOG" not in message
                assert "engine loop stalled" in message["STATUS"]
        finally:
            release.set()
        systemd.wait_for(
            lambda m: "WATCHDOG" in m and "1 timers armed, 1 workers" in m["STATUS"],
            "WATCHDOG=1 with the new counts after the loop resumed",
        )
        supervisor.stopping("SIGTERM")
        stopping = systemd.wait_for(lambda m: "STOPPING" in m, "STOPPING=1")
        assert stopping == {"STOPPING": "1", "STATUS": "serving test: stopping (SIGTERM)"}
        supervisor.stopping("again")  # only the first call says it, then the socket is closed
        assert not notifier.enabled

    def test_without_watchdog_only_the_status_is_kept_current(self, systemd, make_server):
        harness = make_server()
        notifier = Notifier(systemd.address)
        supervisor = Supervisor(notifier, harness.server, lambda: "x")
        supervisor.refresh()
        supervisor.tick()
        message = systemd.next()
        assert message == {
            "STATUS": "x: 0 timers armed, 0 workers, 0 expired, 0 reaped, 0 rejected"
        }
        harness.server.stop()
        supervisor.tick()
        assert systemd.next() == {"STATUS": "x: engine loop not running"}
        notifier.close()
