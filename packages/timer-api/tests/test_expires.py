"""configure() and expires(): client choice, default scopes, release and exception rules."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from timer_api import TimerClient, _expires, configure, expires

THIS_FILE = sys._getframe().f_code.co_filename


class RecordingClient(TimerClient):
    """A real client that keeps what it was asked instead of sending it anywhere."""

    def __init__(self, release_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, float | None]] = []
        self.release_error = release_error
        self._lock = threading.Lock()

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        with self._lock:
            self.calls.append(("acquire", scope_id, expiration_time))

    def release(self, scope_id: str) -> None:
        with self._lock:
            self.calls.append(("release", scope_id, None))
        if self.release_error is not None:
            raise self.release_error

    def scopes(self, kind: str = "acquire") -> list[str]:
        return [scope for call, scope, _ in self.calls if call == kind]


def line() -> int:
    """Return the line number of the caller."""
    return sys._getframe(1).f_lineno


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> RecordingClient:
    """Configure a fresh recording client; the previous default comes back afterwards."""
    monkeypatch.setattr(_expires, "_default_client", None)
    recording = RecordingClient()
    configure(recording)
    return recording


class TestClientChoice:
    def test_no_client_raises_runtime_error_and_skips_the_block(self, monkeypatch):
        monkeypatch.setattr(_expires, "_default_client", None)
        ran = []
        with pytest.raises(RuntimeError, match="configure"), expires(after=1):
            ran.append(True)
        assert ran == []

    def test_no_client_raises_for_a_decorated_call(self, monkeypatch):
        monkeypatch.setattr(_expires, "_default_client", None)

        @expires(after=1)
        def work() -> int:
            return 1

        with pytest.raises(RuntimeError):
            work()

    def test_configured_client_is_used(self, client):
        with expires(after=5, scope="s"):
            pass
        assert [(kind, scope) for kind, scope, _ in client.calls] == [
            ("acquire", "s"),
            ("release", "s"),
        ]

    def test_client_argument_overrides_configure(self, client):
        other = RecordingClient()
        with expires(after=5, scope="s", client=other):
            pass
        assert client.calls == []
        assert other.scopes() == ["s"]
        assert other.scopes("release") == ["s"]

    def test_client_argument_works_without_configure(self, monkeypatch):
        monkeypatch.setattr(_expires, "_default_client", None)
        other = RecordingClient()
        with expires(after=5, scope="s", client=other):
            pass
        assert other.scopes() == ["s"]

    def test_configure_replaces_the_previous_client(self, client):
        second = RecordingClient()
        configure(second)
        with expires(after=5, scope="s"):
            pass
        assert client.calls == []
        assert second.scopes() == ["s"]

    @pytest.mark.parametrize("after", [0.0, 0.5, 60.0, 86400.0])
    def test_expiration_is_wall_clock_now_plus_after(self, client, after):
        before = time.time()
        with expires(after=after, scope="s"):
            pass
        [expiration] = [t for kind, _, t in client.calls if kind == "acquire"]
        assert expiration is not None
        assert before + after <= expiration <= time.time() + after

    def test_a_falsy_client_argument_is_still_used(self, client):
        class EmptyClient(RecordingClient):
            def __len__(self) -> int:
                return 0

        empty = EmptyClient()
        with expires(after=5, client=empty):
            pass
        assert [call for call, _, _ in empty.calls] == ["acquire", "release"]
        assert client.calls == []

    @pytest.mark.parametrize("after", [float("nan"), float("inf"), -1.0, -2e9])
    def test_after_must_be_a_finite_non_negative_number(self, client, after):
        with pytest.raises(ValueError, match="after"):
            expires(after=after)
        assert client.calls == []


class TestDefaultScope:
    def test_names_the_callers_file_and_with_line(self, client):
        with_line = line() + 1
        with expires(after=5):
            pass
        [scope] = client.scopes()
        assert scope == f"{THIS_FILE}#{with_line}"
        assert "contextlib" not in scope
        assert client.scopes("release") == [scope]

    def test_entering_again_from_another_frame_keeps_the_construction_line(self, client):
        guard_line = line() + 1
        guard = expires(after=5)

        def use() -> None:
            with guard:
                pass

        use()
        assert client.scopes() == [f"{THIS_FILE}#{guard_line}"]

    def test_two_lines_give_two_scopes(self, client):
        with expires(after=5):  # noqa: SIM117 - two lines on purpose
            with expires(after=5):
                pass
        outer, inner = client.scopes()
        assert outer != inner
        assert outer.rsplit("#", 1)[0] == inner.rsplit("#", 1)[0] == THIS_FILE
        assert int(inner.rsplit("#", 1)[1]) == int(outer.rsplit("#", 1)[1]) + 1
        # the inner release names the inner timer only
        assert client.scopes("release") == [inner, outer]

    def test_nesting_on_one_line_rearms_one_timer(self, client):
        with expires(after=5), expires(after=10):
            pass
        first, second = client.scopes()
        assert first == second
        assert client.scopes("release") == [first, first]

    def test_recursion_rearms_one_timer(self, client):
        def recurse(depth: int) -> None:
            with expires(after=5):
                if depth:
                    recurse(depth - 1)

        recurse(3)
        assert len(set(client.scopes())) == 1
        assert len(client.scopes()) == len(client.scopes("release")) == 4

    @pytest.mark.parametrize("depth", [0, 10, 100])
    def test_scope_does_not_depend_on_stack_depth(self, client, depth):
        def nest(level: int) -> None:
            if level:
                nest(level - 1)
                return
            with expires(after=5):
                pass

        nest(depth)
        [scope] = client.scopes()
        assert scope.startswith(f"{THIS_FILE}#")

    def test_explicit_scope_is_used_unchanged(self, client):
        with expires(after=5, scope="checkpoint"):
            pass
        assert client.scopes() == ["checkpoint"]


def in_threads(count: int, target) -> None:
    """Run ``target`` in ``count`` threads that all enter it together, and join them."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=20)
            target()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


class TestThreads:
    @pytest.mark.parametrize("count", [2, 4])
    def test_threads_on_one_line_hold_separate_timers(self, client, count):
        inside = threading.Barrier(count)

        def work() -> None:
            with expires(after=5):
                inside.wait(timeout=20)  # every thread holds its timer at once

        in_threads(count, work)
        scopes = client.scopes()
        assert len(scopes) == len(set(scopes)) == count
        assert sorted(client.scopes("release")) == sorted(scopes)
        assert all(scope.startswith(THIS_FILE + "#") for scope in scopes)

    def test_main_thread_scope_has_no_thread_suffix(self, client):
        with_line = line() + 1
        with expires(after=5):
            pass
        assert client.scopes() == [f"{THIS_FILE}#{with_line}"]

    def test_explicit_scope_is_shared_by_threads(self, client):
        def work() -> None:
            with expires(after=5, scope="shared"):
                pass

        in_threads(3, work)
        assert client.scopes() == ["shared"] * 3

    def test_threads_calling_a_decorated_function_hold_separate_timers(self, client):
        inside = threading.Barrier(3)

        @expires(after=5)
        def work() -> None:
            inside.wait(timeout=20)

        in_threads(3, work)
        assert len(set(client.scopes())) == 3


class BlockError(Exception):
    pass


class TestRelease:
    def test_release_after_a_normal_block(self, client):
        with expires(after=5, scope="s"):
            assert client.scopes("release") == []
        assert client.scopes("release") == ["s"]

    @pytest.mark.parametrize("error", [BlockError("x"), KeyboardInterrupt(), SystemExit(3)])
    def test_block_exception_propagates_and_release_happens(self, client, error):
        with pytest.raises(type(error)) as info, expires(after=5, scope="s"):
            raise error
        assert info.value is error
        assert client.scopes("release") == ["s"]

    def test_block_exception_wins_over_a_failing_release(self, client, caplog):
        client.release_error = OSError("pipe closed")
        with (
            caplog.at_level(logging.WARNING, logger="timer_api"),
            pytest.raises(BlockError, match="the block's own"),
            expires(after=5, scope="s"),
        ):
            raise BlockError("the block's own")
        assert client.scopes("release") == ["s"]
        assert "could not release" in caplog.text
        assert "pipe closed" in caplog.text

    def test_failing_release_after_a_normal_block_propagates(self, client):
        client.release_error = OSError("pipe closed")
        with pytest.raises(OSError, match="pipe closed"), expires(after=5, scope="s"):
            pass

    def test_failing_acquire_skips_the_block_and_the_release(self):
        class Refusing(RecordingClient):
            def acquire(self, scope_id: str, expiration_time: float) -> None:
                raise BrokenPipeError("no server")

        refusing = Refusing()
        ran = []
        with pytest.raises(BrokenPipeError), expires(after=5, scope="s", client=refusing):
            ran.append(True)
        assert ran == []
        assert refusing.calls == []

    def test_return_value_of_with_is_none(self, client):
        with expires(after=5, scope="s") as value:
            pass
        assert value is None


class TestDecorator:
    def test_scope_names_the_function(self, client):
        @expires(after=5)
        def load_shard() -> None:
            pass

        load_shard()
        assert client.scopes() == [f"{load_shard.__module__}.{load_shard.__qualname__}"]
        assert client.scopes()[0].endswith("test_scope_names_the_function.<locals>.load_shard")

    def test_each_call_arms_and_releases(self, client):
        @expires(after=5)
        def work(x: int, *, y: int = 1) -> int:
            return x + y

        assert [work(1), work(2, y=5), work(3)] == [2, 7, 4]
        assert len(client.scopes()) == len(client.scopes("release")) == 3
        assert len(set(client.scopes())) == 1

    def test_wraps_keeps_name_and_doc(self, client):
        def work() -> None:
            """Do the work."""

        wrapped = expires(after=5)(work)
        assert (wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__) == (
            "work",
            "Do the work.",
            work,
        )

    def test_explicit_scope(self, client):
        @expires(after=5, scope="load")
        def work() -> None:
            pass

        work()
        assert client.scopes() == ["load"]

    def test_exception_propagates_and_release_happens(self, client):
        @expires(after=5)
        def work() -> None:
            raise BlockError("inside")

        with pytest.raises(BlockError, match="inside"):
            work()
        assert len(client.scopes("release")) == 1

    def test_client_chosen_at_call_time(self, client):
        @expires(after=5)
        def work() -> None:
            pass

        later = RecordingClient()
        configure(later)
        work()
        assert client.calls == []
        assert len(later.scopes()) == 1

    def test_decorator_client_argument(self, client):
        other = RecordingClient()

        @expires(after=5, client=other)
        def work() -> None:
            pass

        work()
        assert client.calls == []
        assert len(other.scopes()) == 1
