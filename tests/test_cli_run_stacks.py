"""End to end: stack dumps under ``timer-watchdog run``: whose files, where, and which frame.

Real jobs, real dumps, and (as root) a real second user planting symlinks.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from timer_api import process_start_time, stack_dump_path
from timer_watchdog import Reaped, decode_event

BOUND = 60.0
WATCHDOG = [sys.executable, "-m", "timer_watchdog"]
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: another user (nobody) plants the symlink"
)
NEEDS_RUNUSER = pytest.mark.skipif(
    shutil.which("runuser") is None, reason="runuser (util-linux) is not installed"
)
NEEDS_PY_SPY = pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed")


def script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def wait_for(what: str, condition: Callable[[], object]) -> None:
    end = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"within {BOUND:.0f}s: {what}")
        time.sleep(0.02)


def events_of(path: Path) -> list:
    return [decode_event(line) for line in path.read_bytes().splitlines()]


def watchdog(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WATCHDOG, *args], capture_output=True, text=True, timeout=BOUND, check=False, **kwargs
    )


# -- item 11: jobs sharing a --stacks directory ----------------------------------------

WAITING_WORKER = """
    import os, sys, time
    from pathlib import Path
    from timer_file import configure_from_env

    out = Path(sys.argv[1])
    configure_from_env()
    (out / "dump-dir.tmp").write_text(os.environ["TIMER_WATCHDOG_STACKS"])
    os.replace(out / "dump-dir.tmp", out / "dump-dir")
    end = time.monotonic() + 60
    while not (out / "go").exists() and time.monotonic() < end:
        time.sleep(0.02)
"""


def test_jobs_sharing_a_stacks_directory_remove_only_their_own_files(tmp_path):
    stacks = tmp_path / "stacks"
    first_out = tmp_path / "first"
    first_out.mkdir()
    job = script(tmp_path, WAITING_WORKER)
    first = subprocess.Popen(
        [*WATCHDOG, "run", "--stacks", str(stacks), "--", sys.executable, job, str(first_out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the first job's worker to install its dump file", (first_out / "dump-dir").exists)
        first_dir = Path((first_out / "dump-dir").read_text())
        wait_for("the dump file", lambda: any(first_dir.glob("worker-*.stack")))
        (first_file,) = first_dir.glob("worker-*.stack")
        # A second job with the same --stacks starts, installs its own file and ends.
        second_out = tmp_path / "second"
        second_out.mkdir()
        (second_out / "go").touch()
        second = watchdog(
            "run", "--stacks", str(stacks), "--", sys.executable, job, str(second_out)
        )
        assert second.returncode == 0, second.stderr
        second_dir = Path((second_out / "dump-dir").read_text())
        assert first_file.exists(), "the second job removed the first job's dump file"
        assert not second_dir.exists()  # its own empty file, and its directory, are gone
        (first_out / "go").touch()
        _, err = first.communicate(timeout=BOUND)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert list(stacks.iterdir()) == []


# -- item 12: dump files and other users ---------------------------------------------

INSTALLING_WORKER = """
    import sys
    from timer_api import install_stack_dump
    sys.stdin.readline()
    try:
        print("installed", install_stack_dump(sys.argv[1]), flush=True)
    except OSError as exc:
        print("refused", exc, flush=True)
"""


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory under /tmp that every user can enter (pytest's own are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="timer-stacks-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@ROOT_ONLY
@NEEDS_RUNUSER
@pytest.mark.parametrize(
    ("mode", "refusal"),
    [(0o777, "is not safe: everyone may write to it"), (0o1777, "already exists")],
    ids=["world-writable", "sticky"],
)
def test_planted_symlink_is_never_followed(shared_base, mode, refusal):
    shared = shared_base / "stacks"
    shared.mkdir()
    shared.chmod(mode)
    precious = shared_base / "root-owned"
    precious.write_text("precious\n")
    worker_script = shared_base / "worker.py"
    worker_script.write_text(textwrap.dedent(INSTALLING_WORKER))
    worker = subprocess.Popen(
        [sys.executable, str(worker_script), str(shared)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start_time = process_start_time(worker.pid)
        assert start_time is not None
        link = stack_dump_path(str(shared), worker.pid, start_time)
        planted = subprocess.run(
            ["runuser", "-u", "nobody", "--", "ln", "-s", str(precious), link],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert planted.returncode == 0, planted.stderr
        out, err = worker.communicate("go\n", timeout=BOUND)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert precious.read_text() == "precious\n", "the worker wrote through the planted symlink"
    assert out.startswith("refused "), out + err
    assert refusal in out


def test_dump_file_is_private(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir(mode=0o755)
    worker = script(tmp_path, INSTALLING_WORKER)
    result = subprocess.run(
        [sys.executable, worker, str(stacks)],
        input="go\n",
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert result.stdout.startswith("installed "), result.stdout + result.stderr
    path = result.stdout.split(" ", 1)[1].strip()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_run_refuses_a_stacks_directory_others_can_write_to(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    stacks.chmod(0o777)
    result = watchdog("run", "--stacks", str(stacks), "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert result.stderr.startswith(f"timer-watchdog run: error: cannot use --stacks {stacks}")
    assert "not sticky" in result.stderr
    assert list(stacks.iterdir()) == []


# -- item 13: which frame "stuck in" names; py-spy without --stacks; the demo ----------

WAITING_IN_THE_STDLIB = """
    import threading
    from timer_api import expires
    from timer_file import configure_from_env

    def my_own_waiting_function():
        threading.Event().wait()

    configure_from_env()
    with expires(after=0.3):
        my_own_waiting_function()
"""


def test_stuck_in_names_the_workers_own_frame_and_the_dump_keeps_the_stack(tmp_path):
    job = script(tmp_path, WAITING_IN_THE_STDLIB)
    events = tmp_path / "events.jsonl"
    result = watchdog(
        "run",
        "--stacks",
        str(tmp_path / "stacks"),
        "--events",
        str(events),
        "--",
        sys.executable,
        job,
    )
    assert result.returncode == 128 + 9, result.stderr
    (reaped,) = [e for e in events_of(events) if isinstance(e, Reaped)]
    assert reaped.frame is not None
    assert reaped.frame.function == "my_own_waiting_function"
    assert reaped.frame.file == job
    assert "stuck in my_own_waiting_function()" in result.stderr
    assert reaped.stack_path is not None
    dump = Path(reaped.stack_path).read_text()
    assert re.search(r'threading\.py", line \d+ in wait', dump), dump


HUNG = """
    import time
    from timer_api import expires
    from timer_file import configure_from_env

    def recognizable_hung_function():
        while True:
            time.sleep(0.05)

    configure_from_env()
    with expires(after=0.3):
        recognizable_hung_function()
"""


@NEEDS_PY_SPY
def test_py_spy_without_stacks_leaves_no_file_in_the_temporary_directory(tmp_path):
    job = script(tmp_path, HUNG)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    events = tmp_path / "events.jsonl"
    result = watchdog(
        "run",
        "--py-spy",
        "--events",
        str(events),
        "--",
        sys.executable,
        job,
        env={**os.environ, "TMPDIR": str(private_tmp)},
    )
    assert result.returncode == 128 + 9, result.stderr
    (reaped,) = [e for e in events_of(events) if isinstance(e, Reaped)]
    assert reaped.frame is not None, result.stderr
    assert reaped.frame.function == "recognizable_hung_function"
    assert reaped.stack_path is None
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_demo_prints_only_paths_that_it_keeps(tmp_path):
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    result = subprocess.run(
        [sys.executable, str(demo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = re.findall(r"stack dump: (\S+)", result.stdout + result.stderr)
    assert printed, result.stdout + result.stderr
    for path in printed:
        assert os.path.exists(path), f"the demo printed {path}, then removed it"
