"""Ask a hung worker where it is stuck, before it is killed.

The worker registered :mod:`faulthandler` on the stack signal (see
``timer_api.install_stack_dump``): the server sends that signal, polls the dump file
until it stops growing (never blocking the loop), and reads the innermost frame of
the thread that armed the expired timer that is the worker's own code (outside the
standard library and installed packages; the whole stack stays in the dump). Optionally
``py-spy dump --json`` runs in a background thread too, and its stacks are written
beside the dump as text whose thread headers carry the same idents as faulthandler's
(without a stacks directory they are only read, never written); if py-spy is not
installed, that is logged once. Dump files are never followed through a symlink.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import threading

import msgspec

from timer_api import stack_dump_path

from ._events import Frame, ThreadStack
from ._files import write_atomically
from ._process import Target

__all__ = [
    "PySpy",
    "SpyDump",
    "StackRequest",
    "is_library_file",
    "own_frame",
    "faulthandler_threads",
    "parse_faulthandler",
    "parse_py_spy",
    "py_spy_threads",
]

logger = logging.getLogger("timer_watchdog")

#: Seconds between two looks at a dump file that is being written.
POLL_STEP = 0.01

_FH_HEADER = re.compile(
    r"^(?:(Current thread|Thread) (0x[0-9a-fA-F]+)\b.*|Stack )\(most recent call first\):\s*$"
)
_FH_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.+?)\s*$')
_SPY_HEADER = re.compile(r"^Thread (0x[0-9a-fA-F]+|\d+)\b")
_SPY_FRAME = re.compile(r"^\s+(\S.*?) \((.+):(\d+)\)\s*$")
#: A file of the standard library or of an installed package, as its path shows
#: (the worker's Python may not be the watchdog's, so its paths are not known here).
_LIBRARY = re.compile(
    r"[/\\](?:site|dist)-packages[/\\]"
    r"|[/\\]lib(?:64)?[/\\](?:python\d+(?:\.\d+)?t?|pypy\d*(?:\.\d+)?)[/\\]"
    r"|^<frozen "
)

#: One thread of a dump: its ident (if shown), whether it is the current thread, its
#: frames innermost first.
_Block = tuple[int | None, bool, list[Frame]]


def is_library_file(path: str) -> bool:
    """Tell whether ``path`` is in the standard library or an installed package (site-packages)."""
    return _LIBRARY.search(path) is not None


def own_frame(frames: list[Frame]) -> Frame | None:
    """Return the innermost of ``frames`` (innermost first) that is outside the libraries.

    A thread waiting in ``threading.py`` is reported where the worker's own code
    called it; when every frame is in a library, the innermost is returned.
    """
    for frame in frames:
        if not is_library_file(frame.file):
            return frame
    return frames[0] if frames else None


def parse_faulthandler(text: str, thread_id: int | None) -> Frame | None:
    """Return where thread ``thread_id`` is stuck in a faulthandler dump (see :func:`own_frame`).

    With ``thread_id`` ``None``, the current thread's (else the first) block is used.
    Returns ``None`` when the thread or its frames are not in ``text``.
    """
    return _pick(_faulthandler_blocks(text), thread_id)


def faulthandler_threads(text: str) -> list[ThreadStack]:
    """Return every thread of a faulthandler dump, in the dump's order."""
    return [
        ThreadStack(ident=ident, frames=frames) for ident, _, frames in _faulthandler_blocks(text)
    ]


def _faulthandler_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    for line in text.splitlines():
        header = _FH_HEADER.match(line)
        if header is not None:
            number = header.group(2)
            blocks.append(
                (int(number, 16) if number else None, header.group(1) == "Current thread", [])
            )
            continue
        frame = _FH_FRAME.match(line)
        if frame is not None and blocks:
            blocks[-1][2].append(Frame(frame[1], int(frame[2]), frame[3]))
    return blocks


class _SpyFrame(msgspec.Struct):
    name: str
    filename: str
    line: int


class _SpyThread(msgspec.Struct):
    thread_id: int
    thread_name: str | None = None
    os_thread_id: int | None = None
    active: bool = False
    owns_gil: bool = False
    frames: list[_SpyFrame] = []

    def stack(self) -> list[Frame]:
        """Return the thread's Python frames, innermost first."""
        return [Frame(f.filename, f.line, f.name) for f in self.frames]


_SPY_JSON = msgspec.json.Decoder(list[_SpyThread])


def py_spy_threads(output: bytes | str) -> list[ThreadStack]:
    """Return every thread of ``py-spy dump --json`` output; raise ``msgspec.DecodeError`` if it is not."""
    return [
        ThreadStack(ident=t.thread_id, name=t.thread_name, frames=t.stack())
        for t in _SPY_JSON.decode(output)
    ]


def _render_py_spy(threads: list[_SpyThread]) -> str:
    """Return ``py-spy dump --json`` threads as text, one block per thread, innermost frame first.

    A block's header names the thread by its Python ident (``threading.get_ident()``),
    written as faulthandler writes it, then its native id, state and name.
    """
    lines: list[str] = []
    for thread in threads:
        native = f"native {thread.os_thread_id}, " if thread.os_thread_id is not None else ""
        state = ("active" if thread.active else "idle") + (
            ", holds the GIL" if thread.owns_gil else ""
        )
        lines.append(
            f'Thread 0x{thread.thread_id:016x} ({native}{state}): "{thread.thread_name or ""}"'
        )
        lines.extend(f"    {f.name} ({f.filename}:{f.line})" for f in thread.frames)
    return "".join(line + "\n" for line in lines)


def parse_py_spy(text: str, thread_id: int | None) -> Frame | None:
    """Return where thread ``thread_id`` is stuck in a py-spy dump (see :func:`own_frame`).

    ``text`` is the output of ``py-spy dump --json``, or the ``.py-spy`` file the
    watchdog writes from it, whose thread headers carry Python idents as faulthandler's
    do. ``thread_id`` is a Python ident (``threading.get_ident()``); py-spy's plain text
    output (0.4) names threads by native id instead, so there only ``None`` (the first
    thread) finds a frame.
    """
    if text.lstrip().startswith("["):
        try:
            threads = _SPY_JSON.decode(text)
        except msgspec.DecodeError:
            return None
        return _pick([(t.thread_id, False, t.stack()) for t in threads], thread_id)
    blocks: list[_Block] = []
    for line in text.splitlines():
        header = _SPY_HEADER.match(line)
        if header is not None:
            raw = header.group(1)
            blocks.append((int(raw, 16) if raw.lower().startswith("0x") else int(raw), False, []))
            continue
        frame = _SPY_FRAME.match(line)
        if frame is not None and blocks:
            blocks[-1][2].append(Frame(frame[2], int(frame[3]), frame[1]))
    return _pick(blocks, thread_id)


def _pick(blocks: list[_Block], thread_id: int | None) -> Frame | None:
    if thread_id is not None:
        return next((own_frame(frames) for ident, _, frames in blocks if ident == thread_id), None)
    current = [frames for _, is_current, frames in blocks if is_current]
    if current:
        return own_frame(current[0])
    return own_frame(blocks[0][2]) if blocks else None


class SpyDump(threading.Thread):
    """Run ``py-spy dump --json`` on one worker in the background; keep the stacks as text.

    ``text`` is set when py-spy succeeded (see :func:`_render_py_spy`); it is also
    written to ``out_path`` (if given), the file appearing complete, created afresh
    with mode 0600 (never through a symlink). A failure is logged; no file is written.
    """

    def __init__(self, program: str, pid: int, out_path: str | None, timeout: float) -> None:
        super().__init__(name=f"py-spy-{pid}", daemon=True)
        self.program = program
        self.pid = pid
        self.out_path = out_path
        self.timeout = timeout
        self.text: str | None = None

    def run(self) -> None:
        pid = self.pid
        try:
            done = subprocess.run(
                [self.program, "dump", "--json", "--pid", str(pid)],
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
            if done.returncode != 0:
                reason = next(
                    (
                        line
                        for line in done.stderr.decode("utf-8", "replace").splitlines()
                        if line.strip()
                    ),
                    f"exit status {done.returncode}",
                )
                logger.warning("py-spy dump of pid %d failed: %s", pid, reason)
                return
            text = _render_py_spy(_SPY_JSON.decode(done.stdout))
            if self.out_path is not None:
                write_atomically(self.out_path, text, mode=0o600)
            self.text = text
        except (OSError, subprocess.SubprocessError, msgspec.DecodeError) as exc:
            logger.warning("py-spy dump of pid %d failed: %s", pid, exc)


class PySpy:
    """Run ``py-spy dump`` on workers, if py-spy is installed; say once when it is not.

    With ``quiet``, a missing py-spy is not logged (for a caller that reports it itself).
    """

    def __init__(self, executable: str | None = None, *, quiet: bool = False) -> None:
        self._executable = executable
        self._looked = executable is not None
        self._quiet = quiet
        self._lock = threading.Lock()

    def executable(self) -> str | None:
        """Return the py-spy program, logging once (per server) that it is missing."""
        with self._lock:
            if not self._looked:
                self._looked = True
                self._executable = shutil.which("py-spy")
                if self._executable is None and not self._quiet:
                    logger.warning("py-spy is not installed; stack dumps use faulthandler only")
            return self._executable

    def dump(self, pid: int, out_path: str | None, timeout: float) -> SpyDump | None:
        """Start ``py-spy dump --json --pid`` in a background thread; None if py-spy is absent.

        With ``out_path``, the stacks are also written there (see :class:`SpyDump`).
        """
        program = self.executable()
        if program is None:
            return None
        spy = SpyDump(program, pid, out_path, timeout)
        spy.start()
        return spy


class StackRequest:
    """One pending dump of one worker: ask, then poll until it is complete or time is up."""

    __slots__ = (
        "_deadline",
        "_offset",
        "_size",
        "_spy",
        "path",
        "spy_path",
        "thread_id",
    )

    def __init__(
        self,
        target: Target,
        *,
        stacks_dir: str | None,
        stack_signal: int,
        wait: float,
        thread_id: int | None,
        py_spy: PySpy | None,
        now: float,
    ) -> None:
        """Ask ``target`` for its dump; raise :class:`ProcessGone` if it is already gone.

        Without ``stacks_dir``, py-spy's stacks are read but written nowhere.
        """
        self.thread_id = thread_id
        self.path: str | None = None
        self.spy_path: str | None = None
        self._offset = 0
        self._size = -1
        self._deadline = now + wait
        self._spy: SpyDump | None = None
        if stacks_dir is not None and target.catches(stack_signal):
            path = stack_dump_path(stacks_dir, target.pid, target.start_time)
            self._offset = file_size(path)
            target.send(stack_signal)
            self.path = path
        if py_spy is not None:
            spy_path = None
            if stacks_dir is not None:
                spy_path = stack_dump_path(stacks_dir, target.pid, target.start_time) + ".py-spy"
            self._spy = py_spy.dump(target.pid, spy_path, timeout=max(wait, 1.0) + 5.0)
            if self._spy is not None:
                self.spy_path = spy_path

    def poll(self, now: float) -> float | None:
        """Return ``None`` when the dump is complete (or time is up), else when to look again."""
        if now >= self._deadline:
            return None
        dump_done = True
        if self.path is not None:
            size = file_size(self.path)
            dump_done = size > self._offset and size == self._size
            self._size = size
        spy_done = self._spy is None or not self._spy.is_alive()
        if dump_done and spy_done:
            return None
        return min(now + POLL_STEP, self._deadline)

    def result(self) -> tuple[str | None, Frame | None]:
        """Return the dump's path (if one was written) and the arming thread's own frame."""
        frame = None
        path = None
        if self.path is not None and file_size(self.path) > self._offset:
            path = self.path
            frame = parse_faulthandler(read_from(self.path, self._offset), self.thread_id)
        spy = self._spy
        if spy is not None and not spy.is_alive() and spy.text is not None:
            if frame is None:
                frame = parse_py_spy(spy.text, self.thread_id)
            if self.spy_path is not None and file_size(self.spy_path) > 0:
                path = path or self.spy_path
        return path, frame


def file_size(path: str) -> int:
    """Return the size of the file at ``path`` itself (0 if absent or not a regular file)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def read_from(path: str, offset: int, limit: int = 1 << 20) -> str:
    """Read up to ``limit`` bytes of ``path`` from ``offset``, never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ""
    with open(fd, "rb") as file:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            file.seek(offset)
            return file.read(limit).decode("utf-8", "replace")
        except OSError:
            return ""
