"""Run every Python and shell example of the READMEs and docs/ as a reader would paste it.

Each fenced block tagged ``python``, ``sh``, ``bash`` or ``console`` in README.md,
packages/*/README.md and docs/*.md is run in a fresh directory: a Python block as a
script, a ``sh``/``bash`` block with ``bash -e``, and the ``$ `` lines of a ``console``
block (its other lines are output) with ``bash -e``. ``python`` on PATH is the
interpreter running the tests, and ``timer-watchdog`` its installed command. Each must
exit 0 within :data:`EXAMPLE_TIMEOUT` seconds.

An HTML comment on the line before a fence says how to run that block, as
space-separated ``key`` or ``key=value`` words (values may be quoted)::

    <!-- example: skip reason="needs torch" -->    not run; the reason is required
    <!-- example: server -->                       run in the background, ready once it
                                                   prints (or prints ready="TEXT"); the
                                                   ``after=server`` blocks that follow run
                                                   while it does, then it gets SIGINT
    <!-- example: after=server -->                 run while the server above runs
    <!-- example: file=train.py -->                not run: written as train.py into the
                                                   directory of the next block run
    <!-- example: wrap="timer-watchdog run --" --> run the block under this command
    <!-- example: exit=-9 expect="step done" -->   the exit status expected (a negative
                                                   one: killed by that signal), and text
                                                   its output (stdout and stderr) holds

Examples name ``/tmp/...`` paths; each case gets a private directory in their place, so
that runs of this test on one machine (and anything else using ``/tmp/timer.pipe``)
never meet.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", *ROOT.glob("packages/*/README.md"), *ROOT.glob("docs/*.md")]
)
#: The languages run; other blocks (ini, dockerfile, output) are text.
LANGUAGES = {"python", "sh", "bash", "console"}
#: Seconds one example may take (a server: until it is stopped).
EXAMPLE_TIMEOUT = 60.0
#: Seconds a server example gets to print that it is ready.
READY_TIMEOUT = 30.0
#: What a skipped example may do (its reason says which): what a test must not or cannot.
SKIPPABLE = ("installs ", "runs a nox", "runs nox", "needs torch", "needs docker", "publishes ")
KEYS = {"skip", "reason", "server", "ready", "after", "file", "wrap", "exit", "expect"}

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*example:(?P<words>.*?)-->\s*$")
TMP = re.compile(r"(?<![\w./-])/tmp/")


@dataclass
class Block:
    """One fenced block of a document and how to run it."""

    document: Path
    line: int
    lang: str
    text: str
    options: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


@dataclass
class Case:
    """What one test runs: a block, or a server and the blocks run while it serves."""

    blocks: list[Block]
    files: list[Block] = field(default_factory=list)

    @property
    def skip_reason(self) -> str | None:
        return self.blocks[0].options.get("reason") if "skip" in self.blocks[0].options else None


def parse_options(words: str, where: str) -> dict[str, str]:
    """Return the ``key=value`` words of a directive; fail on an unknown key."""
    options = {}
    for word in shlex.split(words):
        key, _, value = word.partition("=")
        if key not in KEYS:
            raise ValueError(f"{where}: unknown example option {key!r}")
        options[key] = value
    if "skip" in options and not options.get("reason"):
        raise ValueError(f"{where}: a skipped example needs reason=...")
    return options


def blocks_of(document: Path) -> Iterator[Block]:
    """Yield the fenced blocks of ``document`` in the languages run, with their options."""
    lines = document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent, start = len(fence["indent"]), index
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:])
            index += 1
        index += 1
        lang = fence["lang"]
        if lang not in LANGUAGES:
            continue
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        directive = DIRECTIVE.match(before)
        where = f"{document.relative_to(ROOT)}:{start + 1}"
        options = parse_options(directive["words"], where) if directive else {}
        yield Block(document, start + 1, lang, "\n".join(body) + "\n", options)


def cases() -> list[Case]:
    """Group every document's blocks into the cases that run them."""
    found: list[Case] = []
    for document in DOCUMENTS:
        files: list[Block] = []
        server: Case | None = None
        for block in blocks_of(document):
            if "file" in block.options:
                files.append(block)
            elif "after" in block.options:
                if server is None:
                    raise ValueError(f"{block.where}: after=server, but no server before it")
                server.blocks.append(block)
            else:
                case = Case([block])
                if "skip" not in block.options:
                    case.files, files = files, []
                found.append(case)
                server = case if "server" in block.options else None
    return found


CASES = cases()


def script_of(block: Block) -> str:
    """Return what ``block`` runs: its text, or the commands of a console session."""
    if block.lang != "console":
        return block.text
    commands: list[str] = []
    continued = False
    for line in block.text.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def environment() -> dict[str, str]:
    """Return the examples' environment: this interpreter first on PATH, no job variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TORCHELASTIC_", "TIMER_WATCHDOG_", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Run:
    """One example running in its own session, its output collected by a thread."""

    def __init__(self, block: Block, workdir: Path) -> None:
        self.block = block
        self.output = ""
        self._lock = threading.Lock()
        text = TMP.sub(f"{workdir}/", script_of(block))
        if block.lang == "python":
            path = workdir / f"example_{block.line}.py"
            argv = [sys.executable, path.name]
        else:
            path = workdir / f"example_{block.line}.sh"
            argv = ["bash", "-e", path.name]
        path.write_text(text, encoding="utf-8")
        wrap = shlex.split(block.options.get("wrap", ""))
        self.process = subprocess.Popen(
            [*wrap, *argv],
            cwd=workdir,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            with self._lock:
                self.output += chunk.decode(errors="replace")

    def text(self) -> str:
        with self._lock:
            return self.output

    def wait_ready(self) -> None:
        """Wait until a server example prints its ready text (or anything)."""
        ready = self.block.options.get("ready", "")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            output = self.text()
            if output and ready in output:
                return
            if self.process.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"{self.block.where}: the server exited early:\n{self.text()}")
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"{self.block.where}: not ready after {READY_TIMEOUT:g}s:\n{self.text()}")

    def finish(self, interrupt: bool = False) -> None:
        """Wait for the example (after SIGINT if asked) and check its status and output."""
        if interrupt and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            status = self.process.wait(EXAMPLE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.block.where}: still running after {EXAMPLE_TIMEOUT:g}s")
        self._reader.join(10)
        output = self.text()
        expected = int(self.block.options.get("exit", "0"))
        assert status == expected, f"{self.block.where}: exit {status}, not {expected}:\n{output}"
        expect = self.block.options.get("expect")
        assert expect is None or expect in output, f"{self.block.where}: no {expect!r}:\n{output}"

    def close(self) -> None:
        """Kill the example's whole session if it still runs, and close its output."""
        self.kill()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        """Kill every process of the example's session (a job under ``run`` has its own group)."""
        for pid in session_members(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def session_members(session: int) -> list[int]:
    """Return the pids of the processes of ``session``, its leader first."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[3]) == session:
                members.append(int(entry.name))
    return sorted(members, key=lambda pid: pid != session)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            id=case.blocks[0].where,
            marks=[pytest.mark.skip(reason=case.skip_reason)] if case.skip_reason else [],
        )
        for case in CASES
    ],
)
def test_example_runs_as_pasted(case: Case, tmp_path: Path) -> None:
    for file in case.files:
        (tmp_path / file.options["file"]).write_text(
            TMP.sub(f"{tmp_path}/", file.text), encoding="utf-8"
        )
    first, *rest = case.blocks
    runs: list[Run] = []
    try:
        if "server" not in first.options:
            runs.append(Run(first, tmp_path))
            runs[0].finish()
            return
        server = Run(first, tmp_path)
        runs.append(server)
        server.wait_ready()
        for block in rest:
            runs.append(Run(block, tmp_path))
            runs[-1].finish()
        server.finish(interrupt=True)
    finally:
        for run in runs:
            run.close()


def test_examples_are_found_and_skipped_only_for_what_a_test_cannot_do() -> None:
    runnable = [block for case in CASES if case.skip_reason is None for block in case.blocks]
    assert len(runnable) >= 15, [block.where for block in runnable]
    for case in CASES:
        reason = case.skip_reason
        assert reason is None or reason.startswith(SKIPPABLE), f"{case.blocks[0].where}: {reason}"
