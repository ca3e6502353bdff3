"""Ask a hung worker where it is stuck, before it is killed.

The worker registered :mod:`faulthandler` on the stack signal (see
``timer_api.install_stack_dump``): the server sends that signal, polls the dump file
until it stops growing (never blocking the loop), and reads the innermost frame of
the thread that armed the expired timer. Optionally ``py-spy dump --json`` runs in a
background thread too, and its stacks are written beside the dump as text whose thread
headers carry the same idents as faulthandler's; if py-spy is not installed, that is
logged once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading

import msgspec

from timer_api import stack_dump_path

from ._events import Frame
from ._process import Target

__all__ = ["PySpy", "StackRequest", "parse_faulthandler", "parse_py_spy"]

logger = logging.getLogger("timer_watchdog")

#: Seconds between two looks at a dump file that is being written.
POLL_STEP = 0.01

_FH_HEADER = re.compile(
    r"^(?:(Current thread|Thread) (0x[0-9a-fA-F]+)\b.*|Stack )\(most recent call first\):\s*$"
)
_FH_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.+?)\s*$')
_SPY_HEADER = re.compile(r"^Thread (0x[0-9a-fA-F]+|\d+)\b")
_SPY_FRAME = re.compile(r"^\s+(\S.*?) \((.+):(\d+)\)\s*$")


def parse_faulthandler(text: str, thread_id: int | None) -> Frame | None:
    """Return the innermost frame of thread ``thread_id`` in a faulthandler dump.

    With ``thread_id`` ``None``, the current thread's (else the first) block is used.
    Returns ``None`` when the thread or its frames are not in ``text``.
    """
    blocks: list[tuple[int | None, bool, Frame | None]] = []
    for line in text.splitlines():
        header = _FH_HEADER.match(line)
        if header is not None:
            number = header.group(2)
            blocks.append(
                (int(number, 16) if number else None, header.group(1) == "Current thread", None)
            )
            continue
        frame = _FH_FRAME.match(line)
        if frame is not None and blocks and blocks[-1][2] is None:
            ident, current, _ = blocks[-1]
            blocks[-1] = (ident, current, Frame(frame[1], int(frame[2]), frame[3]))
    return _pick(blocks, thread_id)


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

    def innermost(self) -> Frame | None:
        """Return the thread's innermost Python frame, if it has one."""
        if not self.frames:
            return None
        top = self.frames[0]
        return Frame(top.filename, top.line, top.name)


_SPY_JSON = msgspec.json.Decoder(list[_SpyThread])


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
    """Return the innermost frame of thread ``thread_id`` in a py-spy dump.

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
        return _pick([(t.thread_id, False, t.innermost()) for t in threads], thread_id)
    blocks: list[tuple[int | None, bool, Frame | None]] = []
    for line in text.splitlines():
        header = _SPY_HEADER.match(line)
        if header is not None:
            raw = header.group(1)
            blocks.append((int(raw, 16) if raw.lower().startswith("0x") else int(raw), False, None))
            continue
        frame = _SPY_FRAME.match(line)
        if frame is not None and blocks and blocks[-1][2] is None:
            ident, current, _ = blocks[-1]
            blocks[-1] = (ident, current, Frame(frame[2], int(frame[3]), frame[1]))
    return _pick(blocks, thread_id)


def _pick(
    blocks: list[tuple[int | None, bool, Frame | None]], thread_id: int | None
) -> Frame | None:
    if thread_id is not None:
        return next((frame for ident, _, frame in blocks if ident == thread_id), None)
    current = [frame for _, is_current, frame in blocks if is_current]
    if current:
        return current[0]
    return blocks[0][2] if blocks else None


class PySpy:
    """Run ``py-spy dump`` on workers, if py-spy is installed; say once when it is not."""

    def __init__(self, executable: str | None = None) -> None:
        self._executable = executable
        self._looked = executable is not None
        self._lock = threading.Lock()

    def executable(self) -> str | None:
        """Return the py-spy program, logging once (per server) that it is missing."""
        with self._lock:
            if not self._looked:
                self._looked = True
                self._executable = shutil.which("py-spy")
                if self._executable is None:
                    logger.warning("py-spy is not installed; stack dumps use faulthandler only")
            return self._executable

    def dump(self, pid: int, out_path: str, timeout: float) -> threading.Thread | None:
        """Start ``py-spy dump --json --pid`` in a background thread; None if py-spy is absent.

        When py-spy succeeds, its stacks are written to ``out_path`` (see
        :func:`_render_py_spy`), the file appearing complete; when it fails, the reason is
        logged and no file is written.
        """
        program = self.executable()
        if program is None:
            return None

        def run() -> None:
            try:
                done = subprocess.run(
                    [program, "dump", "--json", "--pid", str(pid)],
                    capture_output=True,
                    timeout=timeout,
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
                partial = out_path + ".partial"
                try:
                    with open(partial, "w", encoding="utf-8") as out:
                        out.write(text)
                    os.replace(partial, out_path)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(partial)
                    raise
            except (OSError, subprocess.SubprocessError, msgspec.DecodeError) as exc:
                logger.warning("py-spy dump of pid %d failed: %s", pid, exc)

        thread = threading.Thread(target=run, name=f"py-spy-{pid}", daemon=True)
        thread.start()
        return thread


class StackRequest:
    """One pending dump of one worker: ask, then poll until it is complete or time is up."""

    __slots__ = (
        "_deadline",
        "_offset",
        "_size",
        "_spy_thread",
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
        """Ask ``target`` for its dump; raise :class:`ProcessGone` if it is already gone."""
        self.thread_id = thread_id
        self.path: str | None = None
        self.spy_path: str | None = None
        self._offset = 0
        self._size = -1
        self._deadline = now + wait
        self._spy_thread: threading.Thread | None = None
        if stacks_dir is not None and target.catches(stack_signal):
            path = stack_dump_path(stacks_dir, target.pid, target.start_time)
            self._offset = _size(path)
            target.send(stack_signal)
            self.path = path
        if py_spy is not None:
            spy_path = (
                stack_dump_path(stacks_dir or tempfile.gettempdir(), target.pid, target.start_time)
                + ".py-spy"
            )
            self._spy_thread = py_spy.dump(target.pid, spy_path, timeout=max(wait, 1.0) + 5.0)
            if self._spy_thread is not None:
                self.spy_path = spy_path

    def poll(self, now: float) -> float | None:
        """Return ``None`` when the dump is complete (or time is up), else when to look again."""
        if now >= self._deadline:
            return None
        dump_done = True
        if self.path is not None:
            size = _size(self.path)
            dump_done = size > self._offset and size == self._size
            self._size = size
        spy_done = self._spy_thread is None or not self._spy_thread.is_alive()
        if dump_done and spy_done:
            return None
        return min(now + POLL_STEP, self._deadline)

    def result(self) -> tuple[str | None, Frame | None]:
        """Return the dump's path (if one was written) and the arming thread's innermost frame."""
        frame = None
        path = None
        if self.path is not None and _size(self.path) > self._offset:
            path = self.path
            frame = parse_faulthandler(_read_from(self.path, self._offset), self.thread_id)
        if self.spy_path is not None and _size(self.spy_path) > 0:
            if frame is None:
                frame = parse_py_spy(_read_from(self.spy_path, 0), self.thread_id)
            path = path or self.spy_path
        return path, frame


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: str, offset: int, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""
