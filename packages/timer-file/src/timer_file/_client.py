"""``FileTimerClient``: send timer requests to a server through its named pipe."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
import weakref

from timer_api import (
    RequestBuilder,
    TimerClient,
    configure,
    encode_json_line,
    install_stack_dump_from_env,
)

__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "TIMER_FILE_ENV",
    "FileTimerClient",
    "PipeFullError",
    "ServerUnavailableError",
    "configure_from_env",
]

#: Environment variable in which torchrun's agent passes the pipe's path to workers.
TIMER_FILE_ENV = "TORCHELASTIC_TIMER_FILE"

#: Default bound, in seconds, on waiting for room in a full pipe.
DEFAULT_SEND_TIMEOUT = 10.0

#: How often (seconds) a client that keeps the pipe open checks that the path still
#: names the pipe it writes to, to notice a server that was replaced.
_RECHECK_INTERVAL = 0.1

#: How often (seconds) a background thread checks, while timers are armed, that the
#: pipe written to still has its reader behind the path; if not, it replays the armed
#: timers into the new pipe, so a restarted server learns them even from a worker
#: that hangs and never sends again.
WATCH_INTERVAL = 0.5

#: The kernel's default pipe buffer; a larger pipe was enlarged by a server that
#: serves writers which keep it open (``timer_file.FileTimerServer`` does).
_DEFAULT_PIPE_SIZE = 16 * os.sysconf("SC_PAGE_SIZE")


class ServerUnavailableError(BrokenPipeError):
    """Raise when no timer server is reading the pipe (it is missing, or has no reader)."""


class PipeFullError(TimeoutError):
    """Raise when the pipe stayed full for the whole ``send_timeout``: the server is not reading."""


class FileTimerClient(TimerClient):
    """Send timer requests through the named pipe ``file_path`` to a timer server.

    Each request is one JSON line written with one ``write()``, so lines from many
    processes never interleave. The client keeps the pipe open between requests
    when the server is known to allow it (``keep_open=None``: the pipe was enlarged
    by a ``timer_file`` server); otherwise it opens and closes the pipe for each
    request, which torch's ``FileTimerServer`` needs in order to make progress.

    ``signal`` is sent to this worker when a timer expires: ``None`` (the default)
    lets the server choose, 0 or less asks it to report the expiry and send nothing; a
    request the server would refuse raises :class:`timer_api.InvalidRequestError`
    before anything is sent. When the pipe is full, a request waits up to ``send_timeout`` seconds
    for room, then raises :class:`PipeFullError`. With no server reading,
    :class:`ServerUnavailableError` (a ``BrokenPipeError``) is raised at once.

    The client remembers the timers it has armed and not released (the blocks it is
    inside); whenever it finds a different pipe behind the path, the pipe lost its
    reader, or a request failed, it replays them before the next request, and a
    background thread does the same while timers are armed, so a restarted server
    knows them. It holds an ``O_PATH`` descriptor on the pipe it wrote to, so that
    a pipe re-created at the path can never get the same inode number. A release
    that fails is never replayed as an arm; it is sent again with the next request or
    by that thread (a server that was only slow still learns it; a new one ignores it). After
    ``fork()`` the child starts with no pipe and no armed timers of its own.
    """

    def __init__(
        self,
        file_path: str,
        signal: int | None = None,
        *,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        keep_open: bool | None = None,
    ) -> None:
        # torch's server needs a number: an arm leaving the choice to the server
        # carries FALLBACK_SIGNAL, flagged so that our server still chooses.
        builder = RequestBuilder(signal, fallback=True)
        if not send_timeout >= 0:
            raise ValueError(f"send_timeout must be >= 0, got {send_timeout}")
        self._file_path = os.fspath(file_path)
        self._signal = builder.signal
        self._arm = builder.arm
        self._release = builder.release
        self._send_timeout = float(send_timeout)
        self._keep_open = keep_open
        self._reset()
        install_stack_dump_from_env()  # under `timer-watchdog run --stacks DIR`

    def _reset(self) -> None:
        """Forget the pipe and the armed timers: for a new client or a forked child."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fd = -1
        #: An ``O_PATH`` descriptor on the pipe last written to: while it is held, no
        #: new file can get that pipe's inode number, so ``_pipe_id`` stays unique.
        self._pin = -1
        self._keep = False
        self._pipe_id: tuple[int, int] | None = None
        self._replay_due = False
        self._next_check = 0.0
        #: scope_id -> the encoded arm request, replayed into a new server.
        self._armed: dict[str, bytes] = {}
        #: scope_id -> an encoded release that could not be sent; sent before the next request.
        self._unsent: dict[str, bytes] = {}
        #: The thread that replays the armed timers into a restarted server.
        self._watcher: threading.Thread | None = None

    @property
    def signal(self) -> int | None:
        """Return the signal asked for on expiry (``None``: the server's choice)."""
        return self._signal

    @property
    def file_path(self) -> str:
        """Return the path of the pipe."""
        return self._file_path

    @property
    def armed(self) -> frozenset[str]:
        """Return the scopes of this process that the client has armed and not released."""
        return frozenset(self._armed) if self._pid == os.getpid() else frozenset()

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm (or re-arm) timer ``scope_id`` to expire at ``expiration_time`` (``time.time()``)."""
        if self._pid != os.getpid():
            self._after_fork()
        line = encode_json_line(self._arm(scope_id, expiration_time))
        with self._lock:
            previous = self._armed.get(scope_id)
            self._armed[scope_id] = line
            # This arm supersedes a release of the scope still waiting to be sent.
            unsent = self._unsent.pop(scope_id, None)
            try:
                self._send(line)
            except BaseException:
                if previous is None:
                    del self._armed[scope_id]
                else:
                    self._armed[scope_id] = previous
                if unsent is not None:
                    self._unsent[scope_id] = unsent
                raise
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=_watch, args=(weakref.ref(self),), name="timer-file-replay", daemon=True
                )
                self._watcher.start()

    def release(self, scope_id: str) -> None:
        """Release timer ``scope_id``."""
        if self._pid != os.getpid():
            self._after_fork()
        line = encode_json_line(self._release(scope_id))
        with self._lock:
            # The block has exited: whatever happens below, this scope is never replayed.
            self._armed.pop(scope_id, None)
            self._unsent.pop(scope_id, None)
            try:
                self._send(line)
            except BaseException:
                # A server that is only slow still holds the timer: tell it later. (A
                # server that went away took the timer with it; a new one ignores this.)
                self._unsent[scope_id] = line
                raise

    def close(self) -> None:
        """Close the pipe; the client reopens it (and replays its armed timers) on the next request."""
        with self._lock:
            self._close_fd()
            self._unpin()

    def _after_fork(self) -> None:
        # The parent's descriptors are shared with the parent: close our copies only.
        fds = (self._fd, self._pin)
        self._reset()
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _unpin(self) -> None:
        """Forget which pipe was written to: the next pipe opened counts as a new server."""
        pin, self._pin = self._pin, -1
        if pin >= 0:
            os.close(pin)
        self._pipe_id = None

    # -- sending (the lock is held) -------------------------------------------------

    def _send(self, line: bytes) -> None:
        fd = self._fd
        if fd >= 0:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + _RECHECK_INTERVAL
                if not self._path_names_pipe():
                    self._close_fd()
                    fd = -1
        for retry in (False, True):
            if fd < 0:
                fd = self._connect(line)
            try:
                self._write_unsent(fd)
                self._write(fd, line)
                break
            except BrokenPipeError:
                # The reader went away: a server restart. Find the new pipe, replay, retry once.
                self._close_fd()
                self._replay_due = True
                fd = -1
                if retry:
                    raise ServerUnavailableError(
                        errno.EPIPE, f"the timer server reading {self._file_path!r} went away"
                    ) from None
        if not self._keep:
            self._close_fd()

    def _write_unsent(self, fd: int) -> None:
        """Send the releases that failed before, oldest first."""
        while self._unsent:
            scope_id, line = next(iter(self._unsent.items()))
            self._write(fd, line)
            del self._unsent[scope_id]

    def _replay_if_server_changed(self) -> None:
        """Replay the armed timers (and send failed releases) if the server may have changed."""
        with self._lock:
            if not (self._armed or self._unsent) or self._pid != os.getpid():
                return
            changed = (
                self._replay_due
                or self._pipe_id is None
                or not self._path_names_pipe()
                or self._reader_gone()
            )
            if not changed and not self._unsent:
                return
            if changed:
                self._close_fd()
                self._replay_due = True
            with contextlib.suppress(OSError):  # no server yet: try again next time
                fd = self._fd if self._fd >= 0 else self._connect(b"")
                self._write_unsent(fd)
                if not self._keep:
                    self._close_fd()

    def _reader_gone(self) -> bool:
        """Tell whether the pipe held open has lost its reader (a stopped server)."""
        if self._fd < 0:
            return False
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))

    def _path_names_pipe(self) -> bool:
        try:
            st = os.stat(self._file_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._pipe_id

    def _connect(self, line: bytes) -> int:
        """Open the pipe; replay the armed timers if it is not the pipe last written to.

        ``line``, the request about to be sent, is left out of the replay.
        """
        try:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if self._pipe_id is not None:
                self._replay_due = True
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                reason = "has no reader" if exc.errno == errno.ENXIO else "does not exist"
                raise ServerUnavailableError(
                    exc.errno, f"no timer server is reading {self._file_path!r}: the pipe {reason}"
                ) from None
            raise
        try:
            st = os.fstat(fd)
            pipe_id = (st.st_dev, st.st_ino)
            if self._keep_open is None:
                self._keep = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) > _DEFAULT_PIPE_SIZE
            else:
                self._keep = self._keep_open
            if self._replay_due or pipe_id != self._pipe_id:
                for armed in list(self._armed.values()):
                    if armed is not line:
                        self._write(fd, armed)
            if pipe_id != self._pipe_id:
                self._unpin()
                # Without /proc the inode goes unpinned; failed requests still replay.
                with contextlib.suppress(OSError):
                    self._pin = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._pipe_id = pipe_id
        self._replay_due = False
        self._next_check = time.monotonic() + _RECHECK_INTERVAL
        return fd

    def _write(self, fd: int, line: bytes) -> None:
        """Write ``line`` at once, waiting up to ``send_timeout`` for room in the pipe."""
        try:
            os.write(fd, line)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self._send_timeout
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PipeFullError(
                    errno.EAGAIN,
                    f"the timer server has not read {self._file_path!r} for "
                    f"{self._send_timeout:g}s (send_timeout): the pipe is still full",
                )
            poller.poll(remaining * 1000.0)
            try:
                os.write(fd, line)
                return
            except BlockingIOError:
                continue


def _watch(client_ref: weakref.ReferenceType[FileTimerClient]) -> None:
    """Check the client's pipe every :data:`WATCH_INTERVAL` seconds while the client lives."""
    while True:
        time.sleep(WATCH_INTERVAL)
        client = client_ref()
        if client is None:
            return
        client._replay_if_server_changed()
        del client


def configure_from_env(
    signal: int | None = None,
    *,
    required: bool = True,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    keep_open: bool | None = None,
) -> FileTimerClient | None:
    """Make a client for the pipe named by ``TORCHELASTIC_TIMER_FILE`` the default one.

    Calls :func:`timer_api.configure` with it and returns it. If the variable is
    unset or empty, raises ``RuntimeError``, or with ``required=False`` returns
    ``None`` and configures nothing. The other arguments go to :class:`FileTimerClient`.
    """
    path = os.environ.get(TIMER_FILE_ENV, "")
    if not path:
        if required:
            raise RuntimeError(
                f"{TIMER_FILE_ENV} is not set: this worker was not started under a timer server"
            )
        return None
    client = FileTimerClient(path, signal, send_timeout=send_timeout, keep_open=keep_open)
    configure(client)
    return client
