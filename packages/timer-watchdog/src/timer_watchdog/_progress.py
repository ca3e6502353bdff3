"""Liveness of a job from outside: its output lines and a heartbeat file, and stall detection.

``timer-watchdog run --progress REGEX --stall DURATION`` passes the job's stdout and
stderr through to ours unchanged while it looks for lines matching REGEX;
``--heartbeat FILE`` takes a change of FILE's mtime as progress. No progress for the
stall duration (or for ``--startup`` before the first) is a stall: the command then
arms an already-expired ``stall`` timer for every process of the job, so the engine
reaps the job exactly as it reaps a hung worker.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import math
import os
import re
import selectors
import stat
import termios
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from timer_api import TimerRequest

from ._splice import Splicer, splicer_for, tee_function

__all__ = [
    "STALL_SCOPE",
    "FileFollower",
    "Liveness",
    "OutputPump",
    "ProgressOptions",
    "ProgressScanner",
    "Watch",
    "add_options",
    "job_processes",
    "parse_duration",
    "progress_options",
    "stall_requests",
]

#: The scope of the timers that a stall arms for the job's processes.
STALL_SCOPE = "stall"

#: Bytes read from a stream at once (pipes are enlarged to this size where allowed).
CHUNK = 1 << 20
#: Longest line kept for matching; the rest of a longer line is not matched.
MAX_LINE = 1 << 16
#: Bytes at the end of a chunk spliced on that are read first: when a line there
#: matches, the bytes before it are not read at all.
END_WINDOW = 1 << 16
#: Seconds between two looks at the heartbeat file's mtime (at most).
HEARTBEAT_POLL = 0.1
#: Seconds between two reads of what the job appended to an output file of ours.
FOLLOW_POLL = 0.05
#: Seconds the output is still passed on after the job's main process exited, while
#: its background processes hold the streams open and write nothing.
LINGER = 2.0
#: Longest progress text quoted in the summary.
QUOTE_MAX = 200

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", re.IGNORECASE)
_TERMINATOR = re.compile(rb"[\r\n]")
_FIRST_WINDOW = 8192
#: What passing a stream's bytes on returns instead of their count: its end, our side
#: closed (``EPIPE``), nothing there.
_ENDED, _BROKEN, _NOTHING = 0, -1, -2


def parse_duration(text: str) -> float:
    """Turn ``90``, ``90s``, ``10m``, ``1.5h`` into seconds (> 0); raise ``ValueError`` if not."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a duration like 90, 90s, 10m or 1h, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 0 < seconds < math.inf:
        raise ValueError(f"expected a duration > 0, got {text!r}")
    return seconds


# -- matching lines -----------------------------------------------------------------


class ProgressScanner:
    """Find the last line matching a pattern in a stream fed in chunks.

    A line ends at ``\\n`` or ``\\r`` (a progress bar redraws its line with ``\\r``);
    a line is matched when its end arrives, or at :meth:`finish`. ``pattern`` is
    searched in each line alone (``re.MULTILINE``: ``^`` and ``$`` anchor at the
    line's ends). Only the first :data:`MAX_LINE` bytes of a line are matched.
    """

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self._pattern = re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
        self._search = self._pattern.search
        self._tail = bytearray()

    def feed(self, data: bytes | bytearray, n: int | None = None) -> bytes | None:
        """Scan ``data[:n]``; return the last matching line it completes, or ``None``.

        Only the ends of ``data`` are looked at, as a rule: its last line end, its
        first (when a line was left over), and windows that grow back from the end
        until one holds a match. A chunk with progress near its end costs a few
        kilobytes of searching, whatever its size.
        """
        if n is None:
            n = len(data)
        newline = data.rfind(b"\n", 0, n)
        end = max(newline, data.rfind(b"\r", newline + 1, n)) + 1
        if end == 0:
            self._keep(data, 0, n)
            return None
        start = 0
        found = None
        if self._tail:
            start = _first_end(data, end) + 1
            self._keep(data, 0, start - 1)
            line = bytes(self._tail)
            self._tail.clear()
            if self._search(line):
                found = line
        last = self._last_line(data, start, end)
        self._keep(data, end, n)
        return last if last is not None else found

    def feed_end(self, data: bytes | bytearray, lo: int, n: int) -> bytes | None:
        """Scan ``data[:n]`` from its end ``data[lo:n]`` alone, if that end holds a match.

        Return the last matching line, as :meth:`feed` would, when a complete line of
        ``data[lo:n]`` matches: what comes before it does not count then. Return
        ``None``, and change nothing, when it does not: ``data[:lo]`` is needed, and
        :meth:`feed` must be called once it is there.
        """
        newline = data.rfind(b"\n", lo, n)
        end = max(newline, data.rfind(b"\r", newline + 1, n)) + 1
        if end <= lo:
            return None
        start = _first_end(data, end, lo) + 1
        last = self._last_line(data, start, end) if start < end else None
        if last is not None:
            self._tail.clear()
            self._keep(data, end, n)
        return last

    def finish(self) -> bytes | None:
        """Match the unterminated line left at the end of the stream, if any."""
        line = bytes(self._tail)
        self._tail.clear()
        return line if line and self._search(line) else None

    def _keep(self, data: bytes | bytearray, lo: int, hi: int) -> None:
        room = MAX_LINE - len(self._tail)
        if room > 0 and hi > lo:
            self._tail += data[lo : min(hi, lo + room)]

    def _last_line(self, data: bytes | bytearray, lo: int, hi: int) -> bytes | None:
        """Return the last matching line of ``data[lo:hi]``, complete lines ending in ``hi``."""
        size = _FIRST_WINDOW
        upper = hi
        while upper > lo:
            lower = upper - size
            if lower <= lo:
                lower = lo
            else:  # back to the start of the line that holds ``lower``
                newline = data.rfind(b"\n", lo, lower)
                carriage = data.rfind(b"\r", max(lo, newline + 1), lower)
                lower = max(lo, newline + 1, carriage + 1)
            # "^" holds after "\n" only: a window that follows a "\r" is split too.
            if data.find(b"\r", max(lower - 1, 0), upper) >= 0:
                best = self._last_split(data, lower, upper)
            else:
                best = self._last_searched(data, lower, upper)
            if best is not None:
                return best
            upper = lower
            size *= 4
        return None

    def _last_split(self, data: bytes | bytearray, lo: int, hi: int) -> bytes | None:
        """Return the last matching line of ``data[lo:hi]``, each line searched alone."""
        for line in reversed(_TERMINATOR.split(bytes(data[lo : hi - 1]))):
            if self._search(line[:MAX_LINE]):
                return line
        return None

    def _last_searched(self, data: bytes | bytearray, lo: int, hi: int) -> bytes | None:
        """Return the last matching line of ``data[lo:hi]``, whose lines end in ``\\n`` only.

        The pattern is searched in the whole window (``^`` and ``$`` hold at each
        ``\\n``), and each line it finds is searched again alone, so that a match
        across lines is none.
        """
        search = self._search
        best = None
        pos = lo
        while pos < hi:
            match = search(data, pos, hi)
            if match is None:
                break
            at = match.start()
            if at >= hi:  # an empty match at the window's end
                break
            line_start = max(lo, data.rfind(b"\n", lo, at) + 1)
            line_end = data.find(b"\n", at, hi)
            line = bytes(data[line_start : min(line_end, line_start + MAX_LINE)])
            if search(line):
                best = line
            pos = line_end + 1
        return best


def _first_end(data: bytes | bytearray, end: int, start: int = 0) -> int:
    """Return where the first line of ``data[start:]`` ends (``data[start:end]`` holds a line end)."""
    newline = data.find(b"\n", start, end)
    carriage = data.find(b"\r", start, end if newline < 0 else newline)
    return newline if carriage < 0 else carriage


# -- passing output through -----------------------------------------------------------


@dataclass
class _Stream:
    """One of the job's output streams: where we read it, where it goes, what looks at it."""

    source: int
    target: int
    scanner: ProgressScanner | None
    #: Moves the bytes on in the kernel (``source`` is a pipe); ``None``: copied.
    splicer: Splicer | None = None


def _wait_writable(fd: int) -> None:
    """Wait (up to a second) until non-blocking ``fd`` may take more."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_WRITE)
        selector.select(1.0)


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd``, waiting when ``fd`` is non-blocking and full."""
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        data = data[written:]


class OutputPump:
    """Copy each job stream to our matching fd as it comes; report the progress lines.

    Bytes are passed on as soon as they are read (nothing waits for a line's end),
    one reader thread serves every stream. The bytes of a pipe are moved on inside
    the kernel (``splice(2)``, no copy on their way) and a duplicate of them is read
    to be scanned (``tee(2)``); where that cannot be done (no ``tee``, not a pipe,
    an fd of ours that takes no splice, or ``splice=False``) each read is written on.
    ``on_progress(line)`` is called from the reader thread with the last matching
    line of what was just passed. When our side of a stream is closed (``EPIPE``),
    the job's side is closed too, so the job sees what it would see bare.
    """

    def __init__(
        self,
        streams: list[_Stream],
        on_progress: Callable[[bytes], None] | None = None,
        *,
        splice: bool = True,
    ) -> None:
        self._streams = streams
        self._on_progress = on_progress
        self._splice = splice
        self._wake_r, self._wake_w = os.pipe()
        self._ending: float | None = None
        self._thread = threading.Thread(target=self._run, name="timer-watchdog-output", daemon=True)

    def start(self) -> None:
        """Start passing the output on."""
        self._thread.start()

    def finish(self, linger: float = LINGER) -> None:
        """Pass on what is left: until every stream ends, or ``linger`` seconds pass with no output."""
        self._ending = linger
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")
        if self._thread.ident is not None:
            self._thread.join()
        else:
            for stream in self._streams:
                os.close(stream.source)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _run(self) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        tee = tee_function() if self._splice else None
        for stream in self._streams:
            stream.splicer = splicer_for(stream.source, tee, CHUNK)
            selector.register(stream.source, selectors.EVENT_READ, stream)
        open_streams = len(self._streams)
        quiet_since = None
        try:
            while open_streams:
                timeout = None
                if self._ending is not None:
                    now = time.monotonic()
                    quiet_since = now if quiet_since is None else quiet_since
                    timeout = quiet_since + self._ending - now
                    if timeout <= 0:
                        break
                ready = selector.select(timeout)
                for key, _ in ready:
                    stream = key.data
                    if stream is None:
                        os.read(self._wake_r, 64)
                        continue
                    quiet_since = None
                    if stream.splicer is not None:
                        n = self._splice_on(stream, buffer, view)
                    else:
                        n = self._copy_on(stream, buffer, view)
                    if n == _ENDED:
                        self._report(stream.scanner.finish() if stream.scanner else None)
                    if n in (_ENDED, _BROKEN):
                        # Closed at once: a job still writing there sees EPIPE, as bare.
                        selector.unregister(stream.source)
                        self._close(stream)
                        open_streams -= 1
        finally:
            selector.close()
            for stream in self._streams:
                if stream.source >= 0:
                    self._close(stream)

    @staticmethod
    def _close(stream: _Stream) -> None:
        os.close(stream.source)
        stream.source = -1
        if stream.splicer is not None:
            stream.splicer.close()
            stream.splicer = None

    def _copy_on(self, stream: _Stream, buffer: bytearray, view: memoryview) -> int:
        """Read ``stream``, write it on, scan it; return the count, or :data:`_ENDED` etc."""
        try:
            n = os.readv(stream.source, [view])
        except OSError as exc:
            if exc.errno != errno.EIO:  # a pty whose every slave is closed
                raise
            n = 0
        if n == 0:
            return _ENDED
        try:
            _write_all(stream.target, view[:n])
        except BrokenPipeError:
            return _BROKEN
        if stream.scanner is not None:
            self._report(stream.scanner.feed(buffer, n))
        return n

    def _splice_on(self, stream: _Stream, buffer: bytearray, view: memoryview) -> int:
        """Splice what pipe ``stream`` holds on, then scan its copy; return as :meth:`_copy_on`."""
        splicer = stream.splicer
        assert splicer is not None
        try:
            n = splicer.take()
        except BlockingIOError:
            return _NOTHING  # (not seen: the pump is the pipe's only reader)
        if n == 0:
            return _ENDED
        try:
            moved = splicer.move(stream.target, n, _wait_writable)
            if moved < n:
                # Our fd takes no splice: the rest of these bytes, and all after, are copied.
                rest = view[moved:n]
                splicer.copy_rest(rest)
                _write_all(stream.target, rest)
        except BrokenPipeError:
            return _BROKEN
        self._scan_copy(stream.scanner, splicer, buffer, n)
        if moved < n:
            splicer.close()
            stream.splicer = None
        return n

    def _scan_copy(
        self, scanner: ProgressScanner | None, splicer: Splicer, buffer: bytearray, n: int
    ) -> None:
        """Scan the copy of ``n`` bytes spliced on: its end alone when that end holds a match."""
        view = memoryview(buffer)
        front = n - END_WINDOW
        if scanner is None or front < END_WINDOW or not splicer.can_set_aside:
            splicer.read_copy(view[:n])
            if scanner is not None:
                self._report(scanner.feed(buffer, n))
            return
        splicer.set_aside(front)
        splicer.read_copy(view[front:n])
        line = scanner.feed_end(buffer, front, n)
        if line is not None:
            splicer.drop_aside(front)
        else:
            splicer.read_aside(view[:front])
            line = scanner.feed(buffer, n)
        self._report(line)

    def _report(self, line: bytes | None) -> None:
        if line is not None and self._on_progress is not None:
            self._on_progress(line)


class FileFollower:
    """Read what the job writes into a regular file of ours, as it comes; report the progress lines.

    The job is given the file itself (it writes there as it would bare: nothing is
    copied on its way, ``cat`` may even hand the copy to the kernel). A thread reads
    the file through a descriptor of its own, from where the job starts writing, every
    :data:`FOLLOW_POLL` seconds, and calls ``on_progress(line)`` with the last
    matching line of what it read. A file cut shorter (rotated by copy and truncate)
    is read again from its start.
    """

    def __init__(
        self, target: int, scanner: ProgressScanner, on_progress: Callable[[bytes], None]
    ) -> None:
        self._fd = os.open(f"/proc/self/fd/{target}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            appending = fcntl.fcntl(target, fcntl.F_GETFL) & os.O_APPEND
            self._offset = (
                os.fstat(target).st_size if appending else os.lseek(target, 0, os.SEEK_CUR)
            )
        except BaseException:
            os.close(self._fd)
            raise
        self._scanner = scanner
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timer-watchdog-follow", daemon=True)

    def start(self) -> None:
        """Start following the file."""
        self._thread.start()

    def finish(self) -> None:
        """Read what is left, to the file's end, then stop and close."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        buffer = bytearray(CHUNK)
        while True:
            ending = self._stop.wait(FOLLOW_POLL)
            self._read_new(buffer)
            if ending:
                break
        line = self._scanner.finish()
        if line is not None:
            self._on_progress(line)

    def _read_new(self, buffer: bytearray) -> None:
        """Read and scan the file from where the last read ended to its size now."""
        size = os.fstat(self._fd).st_size
        if size < self._offset:
            self._offset = 0
        view = memoryview(buffer)
        while self._offset < size:
            n = os.preadv(self._fd, [view[: min(len(buffer), size - self._offset)]], self._offset)
            if n == 0:
                return
            self._offset += n
            line = self._scanner.feed(buffer, n)
            if line is not None:
                self._on_progress(line)


def _regular_file(fd: int) -> bool:
    """Tell whether ``fd`` is a regular file (not a terminal, pipe, socket or device)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _pipe() -> tuple[int, int]:
    """Return a pipe ``(read, write)``, enlarged to :data:`CHUNK` bytes where allowed."""
    read, write = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, CHUNK)  # type: ignore[attr-defined,unused-ignore]
    return read, write


def _pty(like: int) -> tuple[int, int]:
    """Return a pty ``(master, slave)`` sized like terminal ``like``, output unprocessed."""
    master, slave = os.openpty()
    with contextlib.suppress(OSError):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(like, termios.TIOCGWINSZ, b"\0" * 8))
    # Pass the job's bytes as written: no "\n" -> "\r\n"; our own terminal does that.
    attributes = termios.tcgetattr(slave)
    attributes[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attributes)
    return master, slave


def _same_terminal(first: int, second: int) -> bool:
    """Tell whether fds ``first`` and ``second`` are both the same terminal."""
    try:
        return (
            os.isatty(first)
            and os.isatty(second)
            and os.path.samestat(os.fstat(first), os.fstat(second))
        )
    except OSError:
        return False


# -- progress and stalls -------------------------------------------------------------


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _quote(line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip("\r\n")
    if len(text) > QUOTE_MAX:
        text = text[: QUOTE_MAX - 3] + "..."
    return f"'{text}'"


class Liveness:
    """Call ``on_stall(message)`` once when no progress came for ``stall`` seconds.

    Before the first progress the limit is ``startup`` seconds after :meth:`start`,
    which is given ``on_stall``.
    :meth:`progress` may be called from any thread; the clock runs in its own.
    A change of ``heartbeat``'s mtime is progress too.
    """

    def __init__(
        self,
        *,
        stall: float,
        startup: float | None = None,
        regex: str | None = None,
        heartbeat: str | None = None,
    ) -> None:
        self._stall = stall
        self._startup = stall if startup is None else startup
        self._regex = regex
        self._heartbeat = heartbeat
        self._on_stall: Callable[[str], None] = lambda message: None
        self._stopping = False
        #: Set to wake the clock: on stop, and on the first progress (which may bring
        #: the deadline forward, from ``startup`` to ``stall``).
        self._wake = threading.Event()
        self._started = 0.0
        #: (monotonic, wall-clock, what) of the last progress.
        self._last: tuple[float, float, str] | None = None
        self._mtime = self._read_mtime()
        self.stalled: str | None = None
        self._thread = threading.Thread(target=self._run, name="timer-watchdog-stall", daemon=True)

    def start(self, on_stall: Callable[[str], None]) -> None:
        """Start the clock (the job has just started); call ``on_stall`` on a stall."""
        self._on_stall = on_stall
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop the clock (the job has ended); no stall is reported after this returns."""
        self._stopping = True
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join()

    def progress(self, line: bytes) -> None:
        """Record a progress line, seen now."""
        first = self._last is None
        self._last = (time.monotonic(), time.time(), _quote(line))
        if first:
            self._wake.set()

    def _read_mtime(self) -> int | None:
        if self._heartbeat is None:
            return None
        try:
            return os.stat(self._heartbeat).st_mtime_ns
        except OSError:
            return None

    def _look_at_heartbeat(self) -> None:
        mtime = self._read_mtime()
        if mtime is None or mtime == self._mtime:
            return
        self._mtime = mtime
        mono, wall = time.monotonic(), time.time()
        # Date the progress by the mtime itself (never in the future, nor before the last).
        ago = min(max(wall - mtime / 1e9, 0.0), mono - self._started)
        last = self._last
        when = mono - ago if last is None else max(last[0], mono - ago)
        self._last = (when, wall - (mono - when), f"{self._heartbeat} touched")

    def _deadline(self) -> float:
        last = self._last
        return self._started + self._startup if last is None else last[0] + self._stall

    def _run(self) -> None:
        poll = math.inf if self._heartbeat is None else HEARTBEAT_POLL
        while True:
            self._look_at_heartbeat()
            wait = self._deadline() - time.monotonic()
            if wait <= 0:
                break
            self._wake.wait(min(wait, poll))
            self._wake.clear()
            if self._stopping:
                return
        if self._stopping:
            return
        self.stalled = self.describe()
        self._on_stall(self.stalled)

    def describe(self) -> str:
        """Say what stalled: ``stalled: no line matching 'step \\d+' for 600 s; last progress: ...``."""
        missing = []
        if self._regex is not None:
            missing.append(f"no line matching '{self._regex}'")
        if self._heartbeat is not None:
            missing.append(f"no change of {self._heartbeat}'s mtime")
        last = self._last
        if last is None:
            return (
                f"stalled: {' and '.join(missing)} for {self._startup:g} s "
                f"since the start; no progress seen"
            )
        return (
            f"stalled: {' and '.join(missing)} for {self._stall:g} s; "
            f"last progress: {last[2]} at {_clock(last[1])}"
        )


# -- the command's side --------------------------------------------------------------


@dataclass(frozen=True)
class ProgressOptions:
    """What ``run --progress/--heartbeat`` watches, checked."""

    stall: float
    startup: float | None = None
    regex: str | None = None
    heartbeat: str | None = None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--progress``, ``--heartbeat``, ``--stall`` and ``--startup`` to ``parser``."""
    group = parser.add_argument_group("liveness options (jobs that arm no timers)")
    group.add_argument(
        "--progress",
        metavar="REGEX",
        help="a line of the job's stdout or stderr that REGEX matches is progress; "
        "needs --stall; e.g. --progress 'step \\d+' --stall 10m",
    )
    group.add_argument(
        "--heartbeat",
        metavar="FILE",
        help="a change of FILE's mtime is progress (the job touches it); needs --stall; "
        "e.g. --heartbeat /tmp/train.alive --stall 5m",
    )
    group.add_argument(
        "--stall",
        type=_duration,
        metavar="DURATION",
        help="no progress for DURATION stops the job like an expired timer "
        "(--signal, --grace apply); DURATION is 90, 90s, 10m or 1h",
    )
    group.add_argument(
        "--startup",
        type=_duration,
        metavar="DURATION",
        help="how long the job may take to its first progress (default: --stall)",
    )


def progress_options(args: argparse.Namespace) -> ProgressOptions | None:
    """Check the liveness arguments; return them (``None``: not asked for) or raise ``ValueError``."""
    regex: str | None = getattr(args, "progress", None)
    heartbeat: str | None = getattr(args, "heartbeat", None)
    stall: float | None = getattr(args, "stall", None)
    startup: float | None = getattr(args, "startup", None)
    if regex is None and heartbeat is None:
        if stall is not None or startup is not None:
            raise ValueError("--stall and --startup need --progress REGEX or --heartbeat FILE")
        return None
    if stall is None:
        raise ValueError("--progress and --heartbeat need --stall DURATION")
    if regex is not None:
        try:
            re.compile(os.fsencode(regex))
        except re.error as exc:
            raise ValueError(f"--progress {regex!r} is not a regular expression: {exc}") from None
    if heartbeat is not None:
        heartbeat = os.path.abspath(heartbeat)
    return ProgressOptions(stall=stall, startup=startup, regex=regex, heartbeat=heartbeat)


class Watch:
    """Own a job's output streams and its liveness clock, for ``run``.

    Use: :meth:`child_streams` for the job's ``Popen``, :meth:`start` once it runs,
    :meth:`finish` once it has exited (or could not be started). A stream of ours that
    is a terminal is given to the job as a pty of its own (so it line-buffers and
    colours as it would bare), one pty for both when both are the same terminal (so
    that their order is kept); a regular file is given to the job as it is, and
    followed (:class:`FileFollower`); the others as pipes, passed on by an
    :class:`OutputPump`. Without ``regex`` the output is not touched at all.
    """

    def __init__(
        self,
        options: ProgressOptions,
        *,
        targets: tuple[int, int] = (1, 2),
    ) -> None:
        self.options = options
        self.liveness = Liveness(
            stall=options.stall,
            startup=options.startup,
            regex=options.regex,
            heartbeat=options.heartbeat,
        )
        self._child_ends: dict[str, int] = {}
        self._pump: OutputPump | None = None
        self._followers: list[FileFollower] = []
        if options.regex is None:
            return
        pattern = re.compile(os.fsencode(options.regex))
        streams = []
        try:
            if _same_terminal(*targets):
                # One pty for both: the job's writes keep their order, as on the terminal bare.
                ours, theirs = _pty(targets[0])
                self._child_ends = {"stdout": theirs, "stderr": theirs}
                streams.append(_Stream(ours, targets[0], ProgressScanner(pattern)))
            else:
                followed: list[os.stat_result] = []
                for name, target in zip(("stdout", "stderr"), targets, strict=True):
                    if not os.isatty(target) and self._follow(target, pattern, followed):
                        continue
                    ours, theirs = _pty(target) if os.isatty(target) else _pipe()
                    self._child_ends[name] = theirs
                    streams.append(_Stream(ours, target, ProgressScanner(pattern)))
        except BaseException:
            self._close_child_ends()
            for stream in streams:
                os.close(stream.source)
            for follower in self._followers:
                follower.finish()
            raise
        if streams:
            self._pump = OutputPump(streams, self._progress)

    def _follow(
        self, target: int, pattern: re.Pattern[bytes], followed: list[os.stat_result]
    ) -> bool:
        """Follow ``target`` if it is a regular file we can read again; tell whether it is."""
        if not _regular_file(target):
            return False
        status = os.fstat(target)
        if any(os.path.samestat(status, other) for other in followed):
            return True  # stdout and stderr are one file (2>&1): followed once
        try:
            follower = FileFollower(target, ProgressScanner(pattern), self._progress)
        except OSError:
            return False  # not readable by us: passed through a pipe instead
        self._followers.append(follower)
        followed.append(status)
        return True

    @property
    def stalled(self) -> str | None:
        """The stall's description, once one was detected."""
        return self.liveness.stalled

    def _progress(self, line: bytes) -> None:
        self.liveness.progress(line)

    def child_streams(self) -> Mapping[str, int]:
        """Return ``stdout=`` and ``stderr=`` for the job's ``Popen`` (empty: inherit ours)."""
        return dict(self._child_ends)

    def _close_child_ends(self) -> None:
        for fd in set(self._child_ends.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._child_ends.clear()

    def start(self, on_stall: Callable[[str], None]) -> None:
        """Start the output pump and the clock, which calls ``on_stall(message)`` on a stall."""
        self._close_child_ends()
        if self._pump is not None:
            self._pump.start()
        for follower in self._followers:
            follower.start()
        self.liveness.start(on_stall)

    def stop_clock(self) -> None:
        """Stop the clock: no stall is reported once this returns (the job has ended)."""
        self.liveness.stop()

    def finish(self, linger: float = LINGER) -> None:
        """Stop the clock and pass on the rest of the output (see :meth:`OutputPump.finish`)."""
        self.liveness.stop()
        self._close_child_ends()
        if self._pump is not None:
            self._pump.finish(linger)
        for follower in self._followers:
            follower.finish()


def job_processes(leader: int) -> list[tuple[int, int]]:
    """Return ``(pid, start_time)`` of every live process of ``leader``'s job.

    The job is ``leader``, its descendants and every process of its process group;
    zombies are left out (they cannot be signalled usefully).
    """
    found: dict[int, tuple[int, int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) <= 19:
            continue
        state = fields[0].decode("ascii", "replace")
        found[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]), state)
    job = set()
    for pid, (_, pgrp, _, _) in found.items():
        if pgrp == leader:
            job.add(pid)
            continue
        seen = set()
        parent = pid
        while parent in found and parent not in seen:
            if parent == leader:
                job.add(pid)
                break
            seen.add(parent)
            parent = found[parent][0]
    me = os.getpid()
    return sorted(
        (pid, found[pid][2]) for pid in job if pid != me and found[pid][3] not in ("Z", "X", "x")
    )


def stall_requests(leader: int) -> list[TimerRequest]:
    """Return an already-expired :data:`STALL_SCOPE` timer for each process of the job."""
    wall, mono = time.time(), time.monotonic()
    return [
        TimerRequest(pid, STALL_SCOPE, wall, start_time=start, deadline=mono)
        for pid, start in job_processes(leader)
    ]
