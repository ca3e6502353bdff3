"""End to end: the real ``timer-watchdog run`` command in a subprocess, with real workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timer_watchdog import Armed, Expired, Reaped, Released, Signalled, decode_event

#: Bound on any one command; only reached when something is broken.
BOUND = 60.0

HUNG_JOB = """
    import os, subprocess, sys, time

    # The job starts a child, which starts the worker: the worker is a grandchild.
    if len(sys.argv) == 1:
        child = subprocess.run([sys.executable, __file__, "child"])
        sys.exit(0 if child.returncode == 0 else 10)
    if sys.argv[1] == "child":
        worker = subprocess.run([sys.executable, __file__, "worker"])
        # One write(2): print() makes several under PYTHONUNBUFFERED, and events
        # written to the same stdout by `run --events -` could land between them.
        os.write(1, f"worker returncode {worker.returncode}\\n".encode())
        sys.exit(0 if worker.returncode == -9 else 11)

    from timer_api import expires
    from timer_file import configure_from_env

    def recognizable_hung_function():
        while True:
            time.sleep(0.05)

    configure_from_env()
    with expires(after=0.5):
        pass
    with expires(after=0.5):
        recognizable_hung_function()
"""


def script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def watchdog(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``timer-watchdog ARGS`` to the end and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "timer_watchdog", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
        **kwargs,
    )


def events_of(path: Path) -> list:
    return [decode_event(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def hung_run(tmp_path_factory):
    """Run, once for this module, a job whose grandchild hangs, with every option of interest."""
    tmp_path = tmp_path_factory.mktemp("hung")
    body = "os.write(1, f\"pipe {os.environ['TORCHELASTIC_TIMER_FILE']}\\n\".encode())\n"
    job = script(
        tmp_path,
        textwrap.dedent(HUNG_JOB).replace(
            "configure_from_env()\n", f"configure_from_env()\n{body}"
        ),
    )
    result = watchdog(
        "run",
        "--stacks",
        str(tmp_path / "stacks"),
        "--events",
        str(tmp_path / "events.jsonl"),
        "--",
        sys.executable,
        job,
    )
    return tmp_path, result


class TestExitStatus:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ("import sys; sys.exit(0)", 0),
            ("import sys; sys.exit(3)", 3),
            ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
            ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
        ],
    )
    def test_is_the_command_status(self, tmp_path, body, expected):
        result = watchdog("run", "--", sys.executable, "-c", body)
        assert result.returncode == expected, result.stderr
        assert "timer-watchdog summary: command exited" in result.stderr

    def test_missing_command_is_127(self, tmp_path):
        program = tmp_path / "no-such-program"
        result = watchdog("run", "--", str(program))
        assert result.returncode == 127
        assert result.stderr == f"timer-watchdog run: error: {program}: command not found\n"

    def test_missing_command_with_json_is_a_json_object(self, tmp_path):
        program = tmp_path / "no-such-program"
        result = watchdog("run", "--json", "--", str(program))
        assert result.returncode == 127
        assert json.loads(result.stderr) == {
            "log": "error",
            "command": "timer-watchdog run",
            "message": f"{program}: command not found",
            "exit_status": 127,
        }


class TestEnvironment:
    def test_command_gets_the_pipe_in_its_own_process_group(self, tmp_path):
        job = script(
            tmp_path,
            """
            import json, os, stat
            path = os.environ["TORCHELASTIC_TIMER_FILE"]
            print(json.dumps({
                "path": path,
                "ours": os.environ["TIMER_WATCHDOG_PIPE"],
                "fifo": stat.S_ISFIFO(os.stat(path).st_mode),
                "leader": os.getpgid(0) == os.getpid(),
            }))
            """,
        )
        result = watchdog("run", "--", sys.executable, job)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["path"] == seen["ours"]
        assert seen["fifo"] is True
        assert seen["leader"] is True
        # Removed at the end, with its private directory.
        assert not os.path.exists(seen["path"])
        assert not os.path.exists(os.path.dirname(seen["path"]))

    def test_stack_variables_only_with_stacks(self, tmp_path):
        body = "import os; print(os.environ.get('TIMER_WATCHDOG_STACKS'))"
        plain = watchdog("run", "--", sys.executable, "-c", body)
        with_stacks = watchdog(
            "run", "--stacks", str(tmp_path / "s"), "--", sys.executable, "-c", body
        )
        assert plain.stdout.strip() == "None"
        # The job's own directory inside DIR, removed at the end since no dump was written.
        job_dir = Path(with_stacks.stdout.strip())
        assert job_dir.parent == tmp_path / "s"
        assert job_dir.name.startswith("run-")
        assert list((tmp_path / "s").iterdir()) == []


class TestSignals:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_forwarded_to_the_command(self, tmp_path, signum):
        ready = tmp_path / "ready"
        job = script(
            tmp_path,
            f"""
            import signal, sys, time
            def stop(signum, frame):
                print(f"got {signum}", flush=True)
                sys.exit(5)
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            open({str(ready)!r}, "w").close()
            end = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(0.05)
            """,
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "timer_watchdog", "run", "--", sys.executable, job],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            end = time.monotonic() + BOUND
            while not ready.exists() and time.monotonic() < end:
                time.sleep(0.05)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=BOUND)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 5, err
        assert out.split() == ["got", str(int(signum))]


class TestHungWorker:
    def test_grandchild_is_killed_and_the_job_goes_on(self, hung_run):
        _, result = hung_run
        assert result.returncode == 0, result.stderr
        assert "worker returncode -9" in result.stdout

    def test_events_file_has_one_json_object_per_line(self, hung_run):
        tmp_path, _ = hung_run
        events = events_of(tmp_path / "events.jsonl")
        kinds = [type(e) for e in events]
        assert kinds.count(Armed) == 2
        assert kinds.count(Released) == 1
        assert kinds.count(Expired) == 1
        assert kinds.count(Signalled) == 1
        assert kinds.count(Reaped) == 1
        (reaped,) = [e for e in events if isinstance(e, Reaped)]
        assert reaped.signal == signal.SIGKILL
        assert reaped.late >= 0

    def test_stack_dump_names_the_hung_function(self, hung_run):
        tmp_path, _ = hung_run
        (reaped,) = [e for e in events_of(tmp_path / "events.jsonl") if isinstance(e, Reaped)]
        assert reaped.stack_path is not None
        assert "recognizable_hung_function" in Path(reaped.stack_path).read_text()
        assert reaped.frame is not None
        assert reaped.frame.function == "recognizable_hung_function"

    def test_only_the_used_dump_is_left(self, hung_run):
        tmp_path, _ = hung_run
        (reaped,) = [e for e in events_of(tmp_path / "events.jsonl") if isinstance(e, Reaped)]
        (job_dir,) = (tmp_path / "stacks").iterdir()
        # The job report (job-report.txt, of the job snapshot) stays beside it.
        left = [str(p) for p in job_dir.iterdir() if p.name != "job-report.txt"]
        assert left == [reaped.stack_path]

    def test_summary_says_who_was_killed_where(self, hung_run):
        tmp_path, result = hung_run
        (reaped,) = [e for e in events_of(tmp_path / "events.jsonl") if isinstance(e, Reaped)]
        summary = result.stderr[result.stderr.index("timer-watchdog summary") :]
        assert "workers seen: 1, timers armed: 2, expired: 1" in summary
        assert f"pid {reaped.pid}: killed with SIGKILL" in summary
        assert "stuck in recognizable_hung_function()" in summary
        assert f"stack dump: {reaped.stack_path}" in summary

    def test_pipe_is_removed(self, hung_run):
        _, result = hung_run
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("pipe ")]
        assert not os.path.exists(line.split(" ", 1)[1])


class TestOutput:
    def test_events_to_stdout_and_json_summary(self, tmp_path):
        job = script(tmp_path, HUNG_JOB)
        result = watchdog("run", "--events", "-", "--json", "--", sys.executable, job)
        assert result.returncode == 0, result.stderr
        events = [decode_event(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert any(isinstance(e, Reaped) for e in events), result.stdout + result.stderr
        lines = [json.loads(line) for line in result.stderr.splitlines()]
        summary = lines[-1]
        assert summary["exit_status"] == 0
        assert summary["workers"] == 1
        assert summary["expiries"][0]["outcome"] == "reaped"
        assert summary["expiries"][0]["signal"] == "SIGKILL"

    def test_observe_only_signals_nothing(self, tmp_path):
        job = script(
            tmp_path,
            """
            import time
            from timer_api import expires
            from timer_file import configure_from_env
            configure_from_env()
            with expires(after=0.2):
                time.sleep(1.5)
            print("survived", flush=True)
            """,
        )
        events = tmp_path / "events.jsonl"
        result = watchdog(
            "run", "--observe-only", "--events", str(events), "--", sys.executable, job
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "survived"
        kinds = {type(e) for e in events_of(events)}
        assert Expired in kinds
        assert Signalled not in kinds
        assert Reaped not in kinds


class TestForceSignal:
    @pytest.mark.parametrize("force", [False, True])
    def test_operator_signal_beats_the_requests_only_when_forced(self, tmp_path, force):
        # The worker asks for SIGKILL itself; the operator wants SIGTERM so that it
        # can checkpoint. Only --force-signal gives the operator the last word.
        checkpoint = tmp_path / "checkpoint"
        job = script(
            tmp_path,
            f"""
            import os, signal, time
            from timer_api import expires
            from timer_file import configure_from_env

            def on_term(signum, frame):
                with open({str(checkpoint)!r}, "w") as file:
                    file.write("saved")
                os._exit(3)

            signal.signal(signal.SIGTERM, on_term)
            configure_from_env(signal=signal.SIGKILL)
            with expires(after=0.3):
                for _ in range(600):
                    time.sleep(0.1)
            """,
        )
        events = tmp_path / "events.jsonl"
        force_args = ["--force-signal"] if force else []
        result = watchdog(
            "run", "--signal", "TERM", *force_args, "--events", str(events),
            "--", sys.executable, job,
        )  # fmt: skip
        sent = [e.signal for e in events_of(events) if isinstance(e, Signalled)]
        if force:
            assert sent == [signal.SIGTERM], result.stderr
            assert checkpoint.read_text() == "saved"
            assert result.returncode == 3, result.stderr
        else:
            assert sent == [signal.SIGKILL], result.stderr
            assert not checkpoint.exists()
            assert result.returncode == 128 + signal.SIGKILL, result.stderr


class TestSoftTimeout:
    def test_worker_cleans_up_and_finishes(self, tmp_path):
        job = script(
            tmp_path,
            """
            import time
            from timer_api import TimerExpired, expires
            from timer_file import configure_from_env
            configure_from_env()
            try:
                with expires(after=0.3, soft=True, grace=30):
                    time.sleep(30)
            except TimerExpired as exc:
                print(f"cleaned up after {type(exc).__name__}", flush=True)
            """,
        )
        events = tmp_path / "events.jsonl"
        result = watchdog("run", "--events", str(events), "--", sys.executable, job)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "cleaned up after TimerExpired"
        kinds = [type(e) for e in events_of(events)]
        assert kinds == [Armed, Released]
        assert "no timer expired" in result.stderr


class TestPySpy:
    @staticmethod
    def hung_run_with_py_spy(
        tmp_path: Path, path: str | None = None
    ) -> tuple[subprocess.CompletedProcess[str], Reaped]:
        """Run the hung job with ``--py-spy --stacks``, ``PATH`` set to ``path`` if given."""
        job = script(tmp_path, HUNG_JOB)
        env = {**os.environ, "PATH": path} if path is not None else None
        events = tmp_path / "events.jsonl"
        result = watchdog(
            "run",
            "--py-spy",
            "--stacks",
            str(tmp_path / "stacks"),
            "--events",
            str(events),
            "--",
            sys.executable,
            job,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        (reaped,) = [e for e in events_of(events) if isinstance(e, Reaped)]
        assert reaped.frame is not None
        assert reaped.frame.function == "recognizable_hung_function"
        return result, reaped

    def test_absent_py_spy_is_reported_once_and_the_kill_goes_on(self, tmp_path):
        (tmp_path / "empty").mkdir()
        result, _ = self.hung_run_with_py_spy(tmp_path, path=str(tmp_path / "empty"))
        assert result.stderr.count("py-spy is not installed") == 1

    @pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed")
    def test_py_spy_stacks_are_kept_beside_the_faulthandler_dump(self, tmp_path):
        result, reaped = self.hung_run_with_py_spy(tmp_path)
        assert "py-spy" not in result.stderr
        assert reaped.stack_path is not None
        spy_text = Path(reaped.stack_path + ".py-spy").read_text()
        assert "recognizable_hung_function (" in spy_text


class TestBadArguments:
    @pytest.mark.parametrize(
        "args",
        [
            ["run"],
            ["run", "--"],
            ["run", "--grace", "-1", "--", "true"],
            ["run", "--grace", "soon", "--", "true"],
            ["run", "--max-interval", "0", "--", "true"],
            ["run", "--signal", "SIGNOPE", "--", "true"],
            ["run", "--transport", "carrier-pigeon", "--", "true"],
            ["run", "--events", "/nonexistent-dir/events.jsonl", "--", "true"],
            ["run", "--stacks", "/dev/null/stacks", "--", "true"],
            ["serve"],
            ["serve", "--path", "/nonexistent-dir/timer.pipe"],
            ["--bogus"],
            [],
        ],
    )
    def test_one_line_and_status_2(self, args):
        result = watchdog(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        # Spelled one way: the command's name, the subcommand's if there is one.
        prog = f"timer-watchdog {args[0]}" if args[:1] in (["run"], ["serve"]) else "timer-watchdog"
        assert result.stderr.startswith(f"{prog}: error: "), result.stderr

    @pytest.mark.parametrize(
        "args",
        [
            ["run", "--json"],
            ["run", "--json", "--grace", "soon", "--", "true"],
            ["run", "--json", "--transport", "carrier-pigeon", "--", "true"],
            ["run", "--json", "--stacks", "/dev/null/stacks", "--", "true"],
            ["serve", "--json"],
            ["--json", "--bogus"],
        ],
    )
    def test_with_json_one_json_object_and_status_2(self, args):
        result = watchdog(*args)
        assert result.returncode == 2, result.stderr
        error = json.loads(result.stderr)
        assert error["log"] == "error"
        assert error["exit_status"] == 2
        assert error["message"]

    def test_serve_refuses_a_regular_file(self, tmp_path):
        path = tmp_path / "not-a-pipe"
        path.write_text("keep me")
        result = watchdog("serve", "--path", str(path))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert path.read_text() == "keep me"


class TestHelp:
    @pytest.mark.parametrize("command", ["run", "serve"])
    def test_every_option_has_an_example(self, command):
        result = watchdog(command, "--help")
        assert result.returncode == 0
        for option in ("--max-interval", "--grace", "--signal", "--events", "--stacks"):
            assert option in result.stdout
        assert "e.g. --grace 10" in result.stdout
        assert "examples:" in result.stdout

    def test_console_script_is_installed(self):
        program = shutil.which("timer-watchdog", path=os.path.dirname(sys.executable))
        if program is None:
            pytest.skip("console scripts are not next to this Python")
        result = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=BOUND, check=False
        )
        assert result.returncode == 0
        assert result.stdout.startswith("timer-watchdog ")
