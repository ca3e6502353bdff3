"""Worker-side stack dumps: install_stack_dump and install_stack_dump_from_env."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import timer_api
from timer_api import (
    DEFAULT_STACK_SIGNAL,
    STACK_SIGNAL_ENV,
    STACKS_DIR_ENV,
    install_stack_dump,
    install_stack_dump_from_env,
    process_start_time,
    stack_dump_path,
)

BOUND = 60.0


def run_worker(body: str, tmp_path, env: dict[str, str] | None = None) -> str:
    """Run ``body`` in a fresh Python process; return its stdout, failing on a non-zero exit."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time, timer_api
        from timer_api import install_stack_dump, DEFAULT_STACK_SIGNAL
        """
    ) + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class TestInstall:
    def test_returns_this_process_file_and_creates_it(self, tmp_path):
        path = install_stack_dump(str(tmp_path / "stacks"))
        pid = os.getpid()
        start_time = process_start_time(pid)
        assert start_time is not None
        assert path == stack_dump_path(str(tmp_path / "stacks"), pid, start_time)
        assert os.path.isfile(path)

    def test_is_idempotent(self, tmp_path):
        first = install_stack_dump(str(tmp_path))
        assert install_stack_dump(str(tmp_path)) == first

    def test_relative_directory_is_made_absolute(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        path = install_stack_dump("rel")
        assert os.path.isabs(path)
        assert path.startswith(str(tmp_path / "rel"))

    @pytest.mark.parametrize("signum", [int(signal.SIGKILL), int(signal.SIGSTOP), 0, 999])
    def test_uncatchable_signal_is_refused(self, tmp_path, signum):
        with pytest.raises(ValueError, match="cannot carry"):
            install_stack_dump(str(tmp_path), signum)

    def test_unwritable_directory_raises(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(NotADirectoryError):
            install_stack_dump(str(blocker / "sub"))


class TestDump:
    def test_signal_dumps_the_stack_and_the_worker_goes_on(self, tmp_path):
        out = run_worker(
            """
            path = install_stack_dump("stacks")

            def recognizable_hang_function():
                os.kill(os.getpid(), DEFAULT_STACK_SIGNAL)
                time.sleep(0.2)

            recognizable_hang_function()
            print(path)
            """,
            tmp_path,
        )
        text = Path(out.strip()).read_text()
        assert "recognizable_hang_function" in text
        assert "most recent call first" in text

    def test_previous_handler_still_runs(self, tmp_path):
        out = run_worker(
            """
            seen = []
            signal.signal(DEFAULT_STACK_SIGNAL, lambda s, f: seen.append(s))
            path = install_stack_dump("stacks")
            os.kill(os.getpid(), DEFAULT_STACK_SIGNAL)
            end = time.monotonic() + 10
            while not seen and time.monotonic() < end:
                time.sleep(0.01)
            print(len(seen), os.path.getsize(path) > 0)
            """,
            tmp_path,
        )
        assert out.split() == ["1", "True"]

    def test_forked_child_dumps_into_its_own_file(self, tmp_path):
        out = run_worker(
            """
            parent_path = install_stack_dump("stacks")
            pid = os.fork()
            if pid == 0:
                def child_function():
                    os.kill(os.getpid(), DEFAULT_STACK_SIGNAL)
                    time.sleep(0.2)
                child_function()
                os._exit(0)
            os.waitpid(pid, 0)
            print(parent_path)
            print(os.path.getsize(parent_path))
            print(os.listdir("stacks"))
            """,
            tmp_path,
        )
        parent_path, parent_size, _ = out.splitlines()
        assert parent_size == "0"
        others = [p for p in (tmp_path / "stacks").iterdir() if str(p) != parent_path]
        assert len(others) == 1
        assert "child_function" in others[0].read_text()


class TestFromEnv:
    def test_does_nothing_when_unset(self, monkeypatch):
        monkeypatch.delenv(STACKS_DIR_ENV, raising=False)
        assert install_stack_dump_from_env() is None

    @pytest.mark.parametrize(
        "value", ["", str(DEFAULT_STACK_SIGNAL), "SIGUSR2", "usr2", str(int(signal.SIGUSR1))]
    )
    def test_installs_for_the_directory_and_signal(self, tmp_path, value):
        out = run_worker(
            """
            path = timer_api.install_stack_dump_from_env()
            print(path)
            """,
            tmp_path,
            env={STACKS_DIR_ENV: str(tmp_path / "d"), STACK_SIGNAL_ENV: value},
        )
        assert out.strip().startswith(str(tmp_path / "d" / "worker-"))

    @pytest.mark.parametrize("value", ["SIGNOPE", "-3", "9"])
    def test_bad_signal_is_a_warning_not_a_crash(self, tmp_path, monkeypatch, caplog, value):
        monkeypatch.setenv(STACKS_DIR_ENV, str(tmp_path))
        monkeypatch.setenv(STACK_SIGNAL_ENV, value)
        with caplog.at_level(logging.WARNING, logger="timer_api"):
            assert install_stack_dump_from_env() is None
        assert "no stack dump on request" in caplog.text

    def test_exported_from_the_facade(self):
        assert "install_stack_dump" in timer_api.__all__
        assert "install_stack_dump_from_env" in timer_api.__all__
