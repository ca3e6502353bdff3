from __future__ import annotations

import contextlib
import errno
import os
import pty

import pytest

from timer_watchdog._splice import Splicer, splicer_for, tee_function

SIZE = 1 << 20

tee = tee_function()
needs_tee = pytest.mark.skipif(tee is None, reason="no tee(2) here (not Linux, or no os.splice)")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_all(fd: int) -> bytes:
    """Read what ``fd`` holds now (its writer is closed)."""
    got = bytearray()
    while data := os.read(fd, 1 << 16):
        got += data
    return bytes(got)


@pytest.fixture
def source():
    """The pipe a job writes into: (read, write)."""
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):  # closed by the test
            os.close(fd)


@pytest.fixture
def splicer(source):
    assert tee is not None
    splicer = Splicer(source[0], tee, SIZE)
    yield splicer
    splicer.close()


def refused(target: int) -> None:
    raise AssertionError("never full")


@needs_tee
class TestSplicer:
    def test_moves_the_bytes_and_reads_their_copy(self, source, splicer):
        data = os.urandom(40_000) + b"\nstep 1\n"
        write_all(source[1], data)
        out_r, out_w = os.pipe()
        count = splicer.take()
        assert count == len(data)
        assert splicer.move(out_w, count, refused) == count
        copy = bytearray(count)
        splicer.read_copy(memoryview(copy))
        os.close(out_w)
        assert read_all(out_r) == data
        assert bytes(copy) == data
        os.close(out_r)

    def test_the_front_set_aside_is_read_or_dropped(self, source, splicer):
        out_r, out_w = os.pipe()
        buffer = bytearray(60_000)
        view = memoryview(buffer)
        assert splicer.can_set_aside
        for keep in (True, False):
            data = os.urandom(60_000)
            write_all(source[1], data)
            count = splicer.take()
            assert count == len(data)
            splicer.move(out_w, count, refused)
            assert read_all_now(out_r, count) == data
            splicer.set_aside(50_000)
            splicer.read_copy(view[50_000:])
            assert buffer[50_000:] == data[50_000:]
            if keep:
                splicer.read_aside(view[:50_000])
                assert bytes(buffer) == data
            else:
                splicer.drop_aside(50_000)
        # Nothing left anywhere: the next bytes are the next copy.
        write_all(source[1], b"next")
        count = splicer.take()
        splicer.move(out_w, count, refused)
        copy = bytearray(count)
        splicer.read_copy(memoryview(copy))
        assert bytes(copy) == b"next"
        for fd in (out_r, out_w):
            os.close(fd)

    def test_an_fd_that_takes_no_splice_leaves_the_bytes_in_the_source(
        self, source, splicer, tmp_path
    ):
        target = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        write_all(source[1], b"abc\ndef")
        count = splicer.take()
        assert splicer.move(target, count, refused) == 0
        rest = bytearray(count)
        splicer.copy_rest(memoryview(rest))
        copy = bytearray(count)
        splicer.read_copy(memoryview(copy))
        assert bytes(rest) == bytes(copy) == b"abc\ndef"
        os.close(target)

    def test_a_closed_reader_is_a_broken_pipe(self, source, splicer):
        out_r, out_w = os.pipe()
        os.close(out_r)
        write_all(source[1], b"x")
        with pytest.raises(BrokenPipeError):
            splicer.move(out_w, splicer.take(), refused)
        os.close(out_w)

    def test_nothing_yet_then_the_end(self, source, splicer):
        with pytest.raises(BlockingIOError):
            splicer.take()
        os.close(source[1])
        assert splicer.take() == 0

    def test_close_closes_its_own_fds(self, source):
        assert tee is not None
        before = set(os.listdir("/proc/self/fd"))
        Splicer(source[0], tee, SIZE).close()
        assert set(os.listdir("/proc/self/fd")) == before


def read_all_now(fd: int, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        got += os.read(fd, count - len(got))
    return bytes(got)


class TestSplicerFor:
    @needs_tee
    def test_a_pipe(self, source):
        splicer = splicer_for(source[0], tee, SIZE)
        assert isinstance(splicer, Splicer)
        splicer.close()

    def test_no_tee(self, source):
        assert splicer_for(source[0], None, SIZE) is None

    @needs_tee
    def test_not_a_pipe(self, tmp_path):
        master, slave = pty.openpty()
        regular = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
        try:
            assert splicer_for(master, tee, SIZE) is None
            assert splicer_for(regular, tee, SIZE) is None
        finally:
            for fd in (master, slave, regular):
                os.close(fd)


@needs_tee
def test_tee_errors_are_raised():
    assert tee is not None
    with pytest.raises(OSError, match="Bad file descriptor") as caught:
        tee(-1, -1, 1, 0)
    assert caught.value.errno == errno.EBADF
