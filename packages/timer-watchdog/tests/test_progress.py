"""Liveness from outside the job: durations, progress lines, the output pump, the stall clock."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pty
import re
import subprocess
import sys
import threading
import time
import tty

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timer_watchdog._progress import (
    CHUNK,
    MAX_LINE,
    STALL_SCOPE,
    Liveness,
    OutputPump,
    ProgressOptions,
    ProgressScanner,
    Watch,
    _pipe,
    _Stream,
    job_processes,
    parse_duration,
    progress_options,
    stall_requests,
)
from timer_watchdog._splice import tee_function

#: Upper bound of every wait here; only reached when something is broken.
PATIENCE = 60.0


def wait_until(condition, what: str, timeout: float = PATIENCE) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.01)


class TestDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("90", 90.0),
            ("90s", 90.0),
            ("10m", 600.0),
            ("1h", 3600.0),
            ("1.5m", 90.0),
            ("0.5", 0.5),
            (".5s", 0.5),
            (" 2M ", 120.0),
        ],
    )
    def test_accepts(self, text, seconds):
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "0", "0s", "-1", "1d", "ten", "1 m s", "nan", "inf"])
    def test_refuses(self, text):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)


def lines_done(stream: bytes, start: int, end: int) -> list[bytes]:
    """Return the lines of ``stream`` whose terminator lies in ``stream[start:end]``."""
    done = []
    line_start = 0
    for terminator in re.finditer(rb"[\r\n]", stream):
        i = terminator.start()
        if start <= i < end:
            done.append(stream[line_start:i])
        line_start = i + 1
    return done


def check_against_lines(
    scanner: ProgressScanner, stream: bytes, cuts: list[int], end_window: int | None = None
) -> None:
    """Feed ``stream`` cut at ``cuts``; check each answer against matching line by line.

    With ``end_window``, each chunk is fed as the pump feeds a chunk it spliced on:
    its last ``end_window`` bytes first, to :meth:`ProgressScanner.feed_end`, with
    the rest of the buffer still zeros; all of it to ``feed`` only if that says so.
    """
    pattern = scanner._pattern
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    for start, end in itertools.pairwise(bounds):
        matching = [x for x in lines_done(stream, start, end) if pattern.search(x)]
        chunk = stream[start:end]
        if end_window is None:
            line = scanner.feed(chunk)
        else:
            lo = max(0, len(chunk) - end_window)
            line = scanner.feed_end(bytes(lo) + chunk[lo:], lo, len(chunk))
            if line is None:
                line = scanner.feed(chunk)
        assert line == (matching[-1] if matching else None)
    last = re.split(rb"[\r\n]", stream)[-1]
    assert scanner.finish() == (last if last and pattern.search(last) else None)


class TestScanner:
    def scanner(self, regex: bytes = rb"step \d+") -> ProgressScanner:
        return ProgressScanner(re.compile(regex))

    def test_reports_the_last_matching_line_of_a_chunk(self):
        scanner = self.scanner()
        assert scanner.feed(b"step 1 a\nnoise\nstep 2 b\nnoise\n") == b"step 2 b"

    def test_a_line_is_matched_once_complete(self):
        scanner = self.scanner()
        assert scanner.feed(b"noise\nste") is None
        assert scanner.feed(b"p 7") is None
        assert scanner.feed(b" loss\nnoise\n") == b"step 7 loss"

    def test_carriage_return_ends_a_line(self):
        scanner = self.scanner(rb"^\d+%")
        assert scanner.feed(b"\r10% |##  |\r20% |### |") == b"10% |##  |"
        assert scanner.finish() == b"20% |### |"

    def test_anchors_hold_at_the_ends_of_each_line(self):
        scanner = self.scanner(rb"^step \d+$")
        assert scanner.feed(b"xstep 1\nstep 2 x\nstep 3\nstep 4y\n") == b"step 3"

    def test_a_match_across_lines_is_no_match(self):
        scanner = self.scanner(rb"step\s+\d")
        assert scanner.feed(b"step\n1\n") is None

    def test_finish_matches_the_unterminated_end(self):
        scanner = self.scanner()
        assert scanner.feed(b"step 1\nstep 2 no newline") == b"step 1"
        assert scanner.finish() == b"step 2 no newline"
        assert scanner.finish() is None

    def test_a_long_line_is_matched_on_its_start(self):
        scanner = self.scanner()
        assert scanner.feed(b"step 1 " + b"x" * (3 * MAX_LINE)) is None
        assert scanner.feed(b"x\n") == b"step 1 " + b"x" * (MAX_LINE - 7)
        scanner = self.scanner()
        assert scanner.feed(b"x" * (2 * MAX_LINE) + b" step 1\n") is None

    @pytest.mark.parametrize("where", ["first", "middle", "last", "none"])
    def test_big_chunks(self, where):
        lines = [b"noise %d" % i for i in range(200_000)]
        index = {"first": 0, "middle": 100_000, "last": 199_999, "none": None}[where]
        if index is not None:
            lines[index] = b"step %d" % index
        chunk = b"\n".join(lines) + b"\n"
        expected = None if index is None else b"step %d" % index
        assert self.scanner().feed(chunk) == expected

    def test_many_matches_report_the_last(self):
        chunk = b"".join(b"step %d\n" % i for i in range(100_000))
        assert self.scanner().feed(chunk) == b"step 99999"

    def test_reads_a_reused_buffer_up_to_n(self):
        buffer = bytearray(b"step 1\nstep 2\nstep 3\n")
        assert self.scanner().feed(buffer, 14) == b"step 2"

    @settings(max_examples=300, deadline=None)
    @given(
        stream=st.binary(max_size=300).map(lambda b: bytes(b"st\n\rep 1x"[byte % 9] for byte in b)),
        cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
        regex=st.sampled_from([rb"step \d", rb"^step", rb"\d$", rb"^$", rb"p 1x"]),
    )
    def test_same_as_line_by_line(self, stream, cuts, regex):
        check_against_lines(ProgressScanner(re.compile(regex)), stream, cuts)

    @settings(max_examples=300, deadline=None)
    @given(
        stream=st.binary(max_size=300).map(lambda b: bytes(b"st\n\rep 1x"[byte % 9] for byte in b)),
        cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
        regex=st.sampled_from([rb"step \d", rb"^step", rb"\d$", rb"^$", rb"p 1x"]),
        end_window=st.integers(min_value=0, max_value=120),
    )
    def test_from_the_end_same_as_line_by_line(self, stream, cuts, regex, end_window):
        check_against_lines(ProgressScanner(re.compile(regex)), stream, cuts, end_window)

    def test_a_match_at_the_end_needs_nothing_before_it(self):
        scanner = self.scanner()
        buffer = bytearray(1000) + b"noise\nstep 5\nstep 6 no newline"
        assert scanner.feed_end(buffer, 1000, len(buffer)) == b"step 5"
        assert scanner.finish() == b"step 6 no newline"

    def test_no_match_at_the_end_changes_nothing(self):
        scanner = self.scanner()
        assert scanner.feed(b"noise\nste") is None
        chunk = b"p 1\nnoise\nnoise\n"
        assert scanner.feed_end(chunk, 4, len(chunk)) is None
        assert scanner.feed_end(chunk, 10, len(chunk)) is None  # no complete line
        assert scanner.feed(chunk) == b"step 1"

    def test_an_anchor_holds_after_a_carriage_return_that_ended_a_chunk_line(self):
        scanner = self.scanner(rb"^step")
        assert scanner.feed(b"50%") is None
        assert scanner.feed(b"\rstep 1\nnoise\n") == b"step 1"

    @settings(max_examples=60, deadline=None)
    @given(
        lines=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=40_000),
                st.sampled_from([b"", b"step 1", b"step 22 x"]),
                st.sampled_from([b"\n", b"\r"]),
            ),
            max_size=24,
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=1_000_000), max_size=6),
        regex=st.sampled_from([rb"step \d+", rb"^step", rb"\d x$", rb"^x*$"]),
    )
    @pytest.mark.parametrize("end_window", [None, 1 << 16], ids=["whole", "from-the-end"])
    def test_same_as_line_by_line_over_big_chunks(self, lines, cuts, regex, end_window):
        # Lines longer than the first search windows, in chunks of any size: the
        # windows that grow back from a chunk's end find what matching each line would.
        stream = b"".join(
            b"x" * (size // 2) + progress + b"x" * (size - size // 2) + end
            for size, progress, end in lines
        )
        check_against_lines(ProgressScanner(re.compile(regex)), stream, cuts, end_window)


def job(script: str, **kwargs) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], **kwargs)


def drain(fd: int, into: bytearray) -> threading.Thread:
    """Read ``fd`` to its end (or EIO, for a pty) into ``into``, in a thread."""

    def run() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            into.extend(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "copied"])
class TestOutputPump:
    def test_passes_both_streams_byte_exact_and_reports_progress(self, splice, tmp_path):
        data = {
            name: os.urandom(3_000_000) + b"\nstep 9 " + name.encode() + b"\r\0"
            for name in ("out", "err")
        }
        for name, content in data.items():
            (tmp_path / name).write_bytes(content)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        our_out_r, our_out_w = os.pipe()
        our_err_r, our_err_w = os.pipe()
        got_out, got_err = bytearray(), bytearray()
        readers = [drain(our_out_r, got_out), drain(our_err_r, got_err)]
        seen: list[bytes] = []
        pump = OutputPump(
            [
                _Stream(out_r, our_out_w, ProgressScanner(re.compile(rb"step \d"))),
                _Stream(err_r, our_err_w, ProgressScanner(re.compile(rb"step \d"))),
            ],
            seen.append,
            splice=splice,
        )
        proc = job(
            f"cat {tmp_path / 'out'} & cat {tmp_path / 'err'} >&2; wait", stdout=out_w, stderr=err_w
        )
        os.close(out_w)
        os.close(err_w)
        pump.start()
        assert proc.wait(PATIENCE) == 0
        pump.finish()
        os.close(our_out_w)
        os.close(our_err_w)
        for reader in readers:
            reader.join(PATIENCE)
        for fd in (our_out_r, our_err_r):
            os.close(fd)
        assert hashlib.sha256(got_out).hexdigest() == hashlib.sha256(data["out"]).hexdigest()
        assert hashlib.sha256(got_err).hexdigest() == hashlib.sha256(data["err"]).hexdigest()
        assert sorted(seen[-2:]) == [b"step 9 err", b"step 9 out"]

    def test_lines_across_reads_are_passed_exact_and_matched(self, splice):
        # Each piece is written once the one before has come through, so every piece
        # boundary is a read boundary; pieces longer than CHUNK take several reads.
        pieces = [
            b"noise\nst",
            b"ep 1 of 4\n" + b"y" * (CHUNK + 5),
            b"y" * CHUNK + b"\x00\xff",
            b"\nstep 2 of 4\r50%\rste",
            b"p 3 of 4 " + b"z" * (2 * CHUNK) + b"\nnoise\n",
            b"step 4 of 4, no newline",
        ]
        seen_after = [
            [],
            [b"step 1 of 4"],
            [b"step 1 of 4"],
            [b"step 1 of 4", b"step 2 of 4"],
            # A line is matched on its first MAX_LINE bytes.
            [b"step 1 of 4", b"step 2 of 4", (b"step 3 of 4 " + b"z" * MAX_LINE)[:MAX_LINE]],
            [b"step 1 of 4", b"step 2 of 4", (b"step 3 of 4 " + b"z" * MAX_LINE)[:MAX_LINE]],
        ]
        src_r, src_w = os.pipe()
        ours_r, ours_w = os.pipe()
        seen: list[bytes] = []
        pump = OutputPump(
            [_Stream(src_r, ours_w, ProgressScanner(re.compile(rb"step \d")))],
            seen.append,
            splice=splice,
        )
        pump.start()
        got = bytearray()
        reader = drain(ours_r, got)
        sent = 0
        for piece, expected in zip(pieces, seen_after, strict=True):
            view = memoryview(piece)
            while view:
                view = view[os.write(src_w, view) :]
            sent += len(piece)
            # A read is written on first, then scanned: wait for both.
            wait_until(
                lambda: len(got) == sent and len(seen) >= len(expected),  # noqa: B023
                f"{sent} bytes through, {len(expected)} progress lines seen",
            )
            assert seen == expected
        os.close(src_w)
        pump.finish()
        os.close(ours_w)
        reader.join(PATIENCE)
        os.close(ours_r)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert seen[-1] == b"step 4 of 4, no newline"

    def test_output_without_a_newline_is_passed_at_once(self, splice, tmp_path):
        go = tmp_path / "go"
        out_r, out_w = os.pipe()
        ours_r, ours_w = os.pipe()
        pump = OutputPump([_Stream(out_r, ours_w, None)], splice=splice)
        proc = job(
            f"printf 'ready> '; while [ ! -e {go} ]; do sleep 0.02; done; printf done", stdout=out_w
        )
        os.close(out_w)
        pump.start()
        got = bytearray()
        reader = drain(ours_r, got)
        wait_until(lambda: bytes(got) == b"ready> ", "the prompt, without its newline")
        go.touch()
        assert proc.wait(PATIENCE) == 0
        pump.finish()
        os.close(ours_w)
        reader.join(PATIENCE)
        os.close(ours_r)
        assert bytes(got) == b"ready> done"

    def test_a_closed_reader_closes_the_job_side(self, splice):
        out_r, out_w = os.pipe()
        ours_r, ours_w = os.pipe()
        pump = OutputPump([_Stream(out_r, ours_w, None)], splice=splice)
        proc = job("exec yes", stdout=out_w)
        os.close(out_w)
        pump.start()
        assert os.read(ours_r, 2) == b"y\n"
        os.close(ours_r)
        # yes dies of SIGPIPE, as it would writing to a closed pipe bare.
        assert proc.wait(PATIENCE) == -13
        pump.finish()
        os.close(ours_w)

    def test_finish_stops_waiting_for_a_background_writer(self, splice, tmp_path):
        out_r, out_w = os.pipe()
        ours_r, ours_w = os.pipe()
        pump = OutputPump([_Stream(out_r, ours_w, None)], splice=splice)
        proc = job("sleep 600 & echo $!; echo hi", stdout=out_w)
        os.close(out_w)
        pump.start()
        assert proc.wait(PATIENCE) == 0
        background = int(os.read(ours_r, 1000).split()[0])
        try:
            pump.finish(linger=0.2)
        finally:
            os.kill(background, 9)
        os.close(ours_w)
        os.close(ours_r)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def noise(size: int) -> bytes:
    """Return ``size`` bytes of log lines that never match ``step``."""
    lines = b"".join(b"INFO batch %d of the epoch\n" % i for i in range(size // 20 + 1))
    return lines[:size]


@pytest.mark.skipif(tee_function() is None, reason="no tee(2) here: nothing is spliced")
class TestSplicedPump:
    @pytest.mark.parametrize(
        ("kind", "spliced"),
        [
            ("pipe", True),
            ("non-blocking pipe", True),
            ("file", True),
            ("file opened to append", False),
        ],
    )
    def test_what_is_spliced_and_what_copied_both_streams_byte_exact(self, kind, spliced, tmp_path):
        data = {
            "out": os.urandom(2_500_000) + b"\nstep 1 out\n" + b"no newline",
            "err": b"step 2 err\r" + os.urandom(1_500_000) + b"\n\0",
        }
        sources = {name: _pipe() for name in data}
        got = {name: bytearray() for name in data}
        readers, targets, ours = [], {}, []
        for name in data:
            if kind.endswith("pipe"):
                read, write = os.pipe()
                os.set_blocking(write, kind == "pipe")
                readers.append(drain(read, got[name]))
                ours.append(read)
            else:
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "append" in kind else 0)
                write = os.open(tmp_path / name, flags)
            targets[name] = write
        streams = [
            _Stream(sources[name][0], targets[name], ProgressScanner(re.compile(rb"step \d")))
            for name in data
        ]
        seen: list[bytes] = []
        pump = OutputPump(streams, seen.append)
        pump.start()
        writers = [
            threading.Thread(target=write_all, args=(sources[name][1], data[name])) for name in data
        ]
        for writer in writers:
            writer.start()

        def through() -> bool:
            if kind.endswith("pipe"):
                return all(len(got[name]) == len(data[name]) for name in data)
            return all((tmp_path / name).stat().st_size == len(data[name]) for name in data)

        wait_until(through, "every byte passed on")
        for stream in streams:  # the way they went (each stream open still)
            assert (stream.splicer is not None) == spliced, kind
        for writer in writers:
            writer.join(PATIENCE)
        for name in data:
            os.close(sources[name][1])
        pump.finish()
        for fd in targets.values():
            os.close(fd)
        for reader in readers:
            reader.join(PATIENCE)
        for fd in ours:
            os.close(fd)
        for name in data:
            passed = got[name] if kind.endswith("pipe") else (tmp_path / name).read_bytes()
            assert hashlib.sha256(passed).hexdigest() == hashlib.sha256(data[name]).hexdigest()
        assert set(seen) == {b"step 1 out", b"step 2 err"}

    @pytest.mark.parametrize(
        ("written", "expected"),
        [
            # A chunk whose only match is at its start: its end is read, then the rest.
            (b"step 1\n" + noise(600_000) + b"\n", [b"step 1"]),
            # Its match at its end: the rest is never read.
            (noise(600_000) + b"\nstep 2\nno newline", [b"step 2"]),
            (b"step 1\n" + noise(600_000) + b"\nstep 3 last\n", [b"step 3 last"]),
            (noise(600_000).replace(b"\n", b" "), []),
            (b"step 4 " + b"y" * 600_000, [(b"step 4 " + b"y" * MAX_LINE)[:MAX_LINE]]),
        ],
        ids=["first", "last", "both", "none", "one-long-line"],
    )
    def test_a_big_chunk_is_scanned_from_its_end(self, written, expected):
        # Written before the pump starts, into a pipe that holds it all: most likely
        # one chunk (any cut gives the same answer: each has one line to report).
        source_r, source_w = _pipe()
        ours_r, ours_w = os.pipe()
        got = bytearray()
        reader = drain(ours_r, got)
        writer = threading.Thread(target=write_all, args=(source_w, written))
        writer.start()
        seen: list[bytes] = []
        pump = OutputPump(
            [_Stream(source_r, ours_w, ProgressScanner(re.compile(rb"step \d")))], seen.append
        )
        pump.start()
        writer.join(PATIENCE)
        os.close(source_w)
        pump.finish()
        os.close(ours_w)
        reader.join(PATIENCE)
        os.close(ours_r)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(written).hexdigest()
        assert seen == expected


class TestLiveness:
    def test_no_progress_since_the_start_is_a_stall(self):
        stalls: list[str] = []
        clock = Liveness(stall=60, startup=0.2, regex=r"step \d+")
        clock.start(stalls.append)
        wait_until(lambda: stalls, "the stall")
        clock.stop()
        assert stalls == [
            r"stalled: no line matching 'step \d+' for 0.2 s since the start; no progress seen"
        ]
        assert clock.stalled == stalls[0]

    def test_progress_then_silence_is_a_stall(self):
        stalls: list[str] = []
        clock = Liveness(stall=0.3, startup=60, regex=r"step \d+")
        clock.start(stalls.append)
        clock.progress(b"step 1200 loss 2.31\n")
        wait_until(lambda: stalls, "the stall")
        clock.stop()
        assert re.fullmatch(
            r"stalled: no line matching 'step \\d\+' for 0.3 s; "
            r"last progress: 'step 1200 loss 2.31' at \d\d:\d\d:\d\d",
            stalls[0],
        ), stalls

    def test_stop_before_the_limit_reports_nothing(self):
        stalls: list[str] = []
        clock = Liveness(stall=3600, regex="x")
        clock.start(stalls.append)
        clock.stop()
        assert stalls == []
        assert clock.stalled is None

    def test_heartbeat_mtime_is_progress(self, tmp_path):
        beat = tmp_path / "alive"
        beat.touch()
        os.utime(beat, ns=(0, 0))
        stalls: list[str] = []
        clock = Liveness(stall=0.3, startup=3600, heartbeat=str(beat))
        clock.start(stalls.append)
        os.utime(beat)
        # The touch ended the startup wait: the clock now runs on --stall.
        wait_until(lambda: stalls, "the stall after the heartbeat stopped")
        clock.stop()
        assert re.fullmatch(
            rf"stalled: no change of {re.escape(str(beat))}'s mtime for 0.3 s; "
            rf"last progress: {re.escape(str(beat))} touched at \d\d:\d\d:\d\d",
            stalls[0],
        ), stalls

    def test_a_file_created_later_is_progress(self, tmp_path):
        beat = tmp_path / "alive"
        stalls: list[str] = []
        clock = Liveness(stall=0.3, startup=3600, heartbeat=str(beat))
        clock.start(stalls.append)
        beat.touch()
        wait_until(lambda: stalls, "the stall after the heartbeat stopped")
        clock.stop()
        assert "touched at" in stalls[0]


class TestOptions:
    def namespace(self, **kwargs) -> argparse.Namespace:
        values = {"progress": None, "heartbeat": None, "stall": None, "startup": None}
        return argparse.Namespace(**{**values, **kwargs})

    def test_none_asked(self):
        assert progress_options(self.namespace()) is None

    def test_checked(self, tmp_path):
        options = progress_options(
            self.namespace(progress="step", heartbeat="hb", stall=5.0, startup=9.0)
        )
        assert options == ProgressOptions(
            stall=5.0, startup=9.0, regex="step", heartbeat=os.path.abspath("hb")
        )

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"progress": "x"}, "need --stall"),
            ({"heartbeat": "x"}, "need --stall"),
            ({"stall": 5.0}, "need --progress"),
            ({"startup": 5.0}, "need --progress"),
            ({"progress": "(", "stall": 5.0}, "not a regular expression"),
        ],
    )
    def test_refused(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            progress_options(self.namespace(**kwargs))


class TestJob:
    def test_job_processes_are_the_leader_and_its_descendants(self):
        leader = subprocess.Popen(
            [sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"],
            start_new_session=True,
        )
        try:
            wait_until(lambda: len(job_processes(leader.pid)) == 2, "the leader and its child")
            pids = [pid for pid, _ in job_processes(leader.pid)]
            assert leader.pid in pids
            assert os.getpid() not in pids
            requests = stall_requests(leader.pid)
            assert {r.worker_id for r in requests} == set(pids)
            assert all(r.scope_id == STALL_SCOPE and r.deadline is not None for r in requests)
            assert all(r.deadline <= time.monotonic() for r in requests)
        finally:
            os.killpg(leader.pid, 9)
            leader.wait()


class TestWatch:
    def test_a_terminal_of_ours_is_a_terminal_of_the_job(self):
        master, slave = pty.openpty()
        tty.setraw(slave)
        watch = Watch(ProgressOptions(stall=3600, regex="step"), targets=(slave, slave))
        proc = job(
            "test -t 1 && printf 'out is a tty\\n'; test -t 2 && printf 'err is a tty\\n' >&2; "
            "printf '\\033[31mred\\033[0m\\n'",
            **watch.child_streams(),
        )
        watch.start(lambda message: None)
        got = bytearray()
        reader = drain(master, got)
        assert proc.wait(PATIENCE) == 0
        watch.finish()
        os.close(slave)
        reader.join(PATIENCE)
        os.close(master)
        # One terminal for both streams: one pty, the job's writes in their order.
        assert bytes(got) == b"out is a tty\nerr is a tty\n\x1b[31mred\x1b[0m\n"

    def test_two_terminals_of_ours_are_two_of_the_job(self):
        ends = [pty.openpty() for _ in range(2)]
        for _, slave in ends:
            tty.setraw(slave)
        watch = Watch(ProgressOptions(stall=3600, regex="step"), targets=(ends[0][1], ends[1][1]))
        proc = job(
            "test -t 1 && echo out is a tty; test -t 2 && echo err is a tty >&2",
            **watch.child_streams(),
        )
        watch.start(lambda message: None)
        got = [bytearray(), bytearray()]
        readers = [drain(master, into) for (master, _), into in zip(ends, got, strict=True)]
        assert proc.wait(PATIENCE) == 0
        watch.finish()
        for (master, slave), reader in zip(ends, readers, strict=True):
            os.close(slave)
            reader.join(PATIENCE)
            os.close(master)
        assert [bytes(g) for g in got] == [b"out is a tty\n", b"err is a tty\n"]

    def test_pipes_when_ours_are_not_terminals(self):
        ours_r, ours_w = os.pipe()
        watch = Watch(ProgressOptions(stall=3600, regex="step"), targets=(ours_w, ours_w))
        proc = job("test -t 1 || echo not a tty", **watch.child_streams())
        watch.start(lambda message: None)
        assert proc.wait(PATIENCE) == 0
        watch.finish()
        os.close(ours_w)
        assert os.read(ours_r, 100) == b"not a tty\n"
        os.close(ours_r)

    def test_a_file_of_ours_is_the_jobs_own_and_followed(self, tmp_path):
        log = tmp_path / "log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stalls: list[str] = []
        watch = Watch(
            ProgressOptions(stall=0.3, startup=PATIENCE, regex=r"step \d"), targets=(fd, fd)
        )
        # Nothing to pass on: the job writes into the file itself, as bare.
        assert watch.child_streams() == {}
        proc = job(
            "readlink /proc/$$/fd/1; printf 'step 1\\nstep 2\\n'; exec sleep 600",
            stdout=fd,  # inherited, in run
            stderr=fd,
        )
        try:
            watch.start(stalls.append)
            # Seen only by reading the file: the startup limit is far.
            wait_until(lambda: stalls, "the stall after the progress in the file")
        finally:
            proc.kill()
            proc.wait()
            watch.finish()
            os.close(fd)
        # (Either line may be the last seen: a loaded machine may pause between them.)
        assert "; last progress: 'step " in stalls[0], stalls
        assert log.read_bytes() == f"{log}\nstep 1\nstep 2\n".encode()

    def test_an_appended_file_is_followed_from_its_end(self, tmp_path):
        log = tmp_path / "log"
        log.write_bytes(b"step 99 from an earlier run\n")
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        stalls: list[str] = []
        watch = Watch(
            ProgressOptions(stall=PATIENCE, startup=0.3, regex=r"step \d"), targets=(fd, fd)
        )
        proc = job("echo noise; exec sleep 600", stdout=fd, stderr=fd)
        try:
            watch.start(stalls.append)
            wait_until(lambda: stalls, "the stall at startup")
        finally:
            proc.kill()
            proc.wait()
            watch.finish()
            os.close(fd)
        assert stalls[0].endswith("since the start; no progress seen"), stalls

    def test_a_pipe_and_a_file(self, tmp_path):
        fd = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT)
        ours_r, ours_w = os.pipe()
        watch = Watch(ProgressOptions(stall=3600, regex="step"), targets=(ours_w, fd))
        assert list(watch.child_streams()) == ["stdout"]
        watch.finish()
        for end in (fd, ours_r, ours_w):
            os.close(end)

    def test_heartbeat_alone_leaves_the_output_alone(self):
        watch = Watch(ProgressOptions(stall=3600, heartbeat="/nonexistent/hb"))
        assert watch.child_streams() == {}
        watch.start(lambda message: None)
        watch.finish()

    def test_finish_without_start_closes_everything(self):
        watch = Watch(ProgressOptions(stall=3600, regex="x"), targets=(1, 2))
        fds = list(watch.child_streams().values())
        watch.finish()
        for fd in fds:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(fd)
