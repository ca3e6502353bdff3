"""End to end: metrics and systemd notify of the real ``timer-watchdog`` command in a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from timer_watchdog._cli import build_parser

BOUND = 60.0
ROOT = Path(__file__).resolve().parents[1]

HUNG_WORKER = """
    import time
    from timer_api import expires
    from timer_file import configure_from_env

    configure_from_env()
    with expires(after=0.3):
        while True:
            time.sleep(0.05)
"""

#: Arms and releases timers as fast as it can: every one is two events in the events file.
BUSY_WORKER = """
    from timer_api import expires
    from timer_file import configure_from_env

    configure_from_env()
    for _ in range(100_000):
        with expires(after=600):
            pass
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Parse the exposition format with prometheus_client's parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=BOUND) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not in {BOUND}s")
        time.sleep(0.05)


def start_worker(tmp_path: Path, pipe: Path, body: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    env = {**os.environ, "TORCHELASTIC_TIMER_FILE": str(pipe)}
    return subprocess.Popen([sys.executable, str(path)], env=env)


class Serve:
    """A ``timer-watchdog serve`` process; its stderr is read into ``lines`` as it comes."""

    def __init__(self, tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.pipe = tmp_path / "timer.pipe"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timer_watchdog", "serve", "--path", str(self.pipe), *options],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_line("serving ")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        end = time.monotonic() + BOUND
        while time.monotonic() < end:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"serve exited {self.proc.returncode}: {''.join(self.lines)}")
            time.sleep(0.05)
        pytest.fail(f"no line matching {pattern!r}: {''.join(self.lines)}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(BOUND)
        self._reader.join(BOUND)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(BOUND)
        self._reader.join(BOUND)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def serving() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for one in started:
        one.kill()


class TestServeMetrics:
    def test_scrape_parse_and_a_counter_moves_after_a_real_reap(self, tmp_path, serving):
        prom = tmp_path / "timer.prom"
        events = tmp_path / "events.jsonl"
        options = ["--metrics", "127.0.0.1:0", "--metrics-file", str(prom), "--events", str(events)]
        serve = Serve(tmp_path, *options)
        serving.append(serve)
        url = serve.wait_for_line(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")[1]
        before = parse(get(url)[1])
        assert sample(before, "timer_watchdog_reaped_workers_total") == 0
        assert sample(parse(prom.read_text()), "timer_watchdog_reaped_workers_total") == 0
        assert get(url.replace("/metrics", "/healthz"))[0] == 200

        worker = start_worker(tmp_path, serve.pipe, HUNG_WORKER)
        assert worker.wait(BOUND) == -signal.SIGKILL
        wait_until(
            lambda: sample(parse(get(url)[1]), "timer_watchdog_reaped_workers_total") == 1,
            "reaped_workers_total to reach 1",
        )
        after = parse(get(url)[1])
        assert sample(after, "timer_watchdog_signals_sent_total", signal="SIGKILL") == 1
        assert sample(after, "timer_watchdog_expired_timers_total") == 1
        assert sample(after, "timer_watchdog_requests_total", outcome="armed") == 1
        assert sample(after, "timer_watchdog_reap_lateness_seconds_count") == 1
        assert sample(after, "timer_watchdog_loop_iterations_total") > 0
        assert get(url.replace("/metrics", "/healthz"))[0] == 200

        assert serve.stop() == 0
        final = parse(prom.read_text())  # written again at exit
        assert sample(final, "timer_watchdog_reaped_workers_total") == 1
        assert sample(final, "timer_watchdog_loop_running") == 0
        assert sorted(os.listdir(tmp_path)) == ["events.jsonl", "timer.prom", "worker.py"]

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (["--metrics", "9464"], "expected HOST:PORT"),
            (["--metrics", "::1:9464"], "brackets"),
            (["--metrics-file", "/nonexistent/dir/t.prom"], "cannot write --metrics-file"),
        ],
    )
    def test_bad_options_exit_2_with_one_line(self, tmp_path, options, message):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "timer_watchdog",
                "serve",
                "--path",
                str(tmp_path / "p"),
                *options,
            ],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode == 2
        assert message in done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert not (tmp_path / "p").exists()

    def test_port_in_use_exits_2(self, tmp_path):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "timer_watchdog", "serve"),
                    *("--path", str(tmp_path / "p"), "--metrics", f"127.0.0.1:{port}"),
                ],
                capture_output=True,
                text=True,
                timeout=BOUND,
                check=False,
            )
        assert done.returncode == 2
        assert f"cannot serve --metrics 127.0.0.1:{port}" in done.stderr


class TestRunMetricsFile:
    def test_a_batch_job_leaves_its_metrics(self, tmp_path):
        prom = tmp_path / "job.prom"
        (tmp_path / "worker.py").write_text(textwrap.dedent(HUNG_WORKER))
        done = subprocess.run(
            [
                *(sys.executable, "-m", "timer_watchdog", "run", "--metrics-file", str(prom)),
                *("--", sys.executable, str(tmp_path / "worker.py")),
            ],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode == 128 + signal.SIGKILL, done.stderr
        samples = parse(prom.read_text())
        assert sample(samples, "timer_watchdog_reaped_workers_total") == 1
        assert sample(samples, "timer_watchdog_signals_sent_total", signal="SIGKILL") == 1
        assert sorted(os.listdir(tmp_path)) == ["job.prom", "worker.py"]


class FakeSystemd:
    """A bound AF_UNIX datagram socket that reads notify messages as systemd would."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")  # paths fit in 108 bytes
        self.address = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(BOUND)

    def next(self) -> dict[str, str]:
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"no notify message in {BOUND}s")
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def wait_for(
        self, key: str, text: str = "", limit: int = 500, busy_for: float = 0.0
    ) -> dict[str, str]:
        """Return the first message with ``key`` holding ``text`` (and a round busy that long)."""
        for _ in range(limit):
            message = self.next()
            if key in message and text in message[key]:
                busy = re.search(r"busy for ([0-9.]+)s", message[key])
                if busy_for == 0.0 or (busy and float(busy[1]) >= busy_for):
                    return message
        pytest.fail(f"no {key} with {text!r} in {limit} messages")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory)


class Drain:
    """Read a pipe's read end until EOF, from a thread, once started."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            select.select([self.fd], [], [], 1.0)
            try:
                if os.read(self.fd, 65536) == b"":
                    return
            except BlockingIOError:
                continue


def unread(fd: int) -> int:
    """Return how many bytes wait in the pipe ``fd`` reads."""
    buffer = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder)


class TestSystemd:
    @pytest.mark.slow
    def test_ready_pings_none_while_the_loop_is_stuck_then_stopping(self, tmp_path, serving):
        """The events file is a FIFO nobody reads: the engine loop blocks writing an event."""
        systemd = FakeSystemd()
        events = tmp_path / "events.fifo"
        os.mkfifo(events)
        reader = os.open(events, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        worker = None
        try:
            serve = Serve(
                tmp_path,
                *("--events", str(events)),
                env={"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"},
            )
            serving.append(serve)
            ready = systemd.next()
            assert ready["READY"] == "1"
            assert ready["MAINPID"] == str(serve.proc.pid)
            assert ready["STATUS"] == f"serving {serve.pipe}: ready"
            ping = systemd.wait_for("WATCHDOG")
            assert ping["STATUS"].startswith(f"serving {serve.pipe}: 0 timers armed")

            worker = start_worker(tmp_path, serve.pipe, BUSY_WORKER)
            # Once the FIFO is full the next event blocks the loop for good; then a
            # round busy for twice the stall threshold is that one, not a slow round.
            wait_until(lambda: unread(reader) >= 4096 - 512, "the events FIFO to fill")
            systemd.wait_for("STATUS", "engine loop stalled", busy_for=1.0)
            for _ in range(3):  # one datagram a tick, and while stuck none is a ping
                message = systemd.next()
                assert "WATCHDOG" not in message, message
                assert "engine loop stalled" in message["STATUS"]

            worker.kill()
            worker.wait(BOUND)
            Drain(reader).thread.start()  # the loop can write its events again
            systemd.wait_for("WATCHDOG")
            assert serve.stop() == 0, "".join(serve.lines)
            assert (
                systemd.wait_for("STOPPING")["STATUS"]
                == f"serving {serve.pipe}: stopping (SIGTERM)"
            )
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(BOUND)
            systemd.close()
            for one in serving:
                one.kill()
            os.close(reader)

    def test_without_notify_socket_nothing_is_sent_and_it_serves(self, tmp_path, serving):
        serve = Serve(tmp_path, env={"NOTIFY_SOCKET": ""})
        serving.append(serve)
        assert serve.stop() == 0


def _docs_block(language: str, needle: str) -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [block for block in blocks if needle in block]
    assert len(found) == 1, f"one ```{language} block with {needle!r} in docs/operations.md"
    return found[0]


def _unit() -> dict[str, dict[str, str]]:
    """Parse the systemd unit of docs/operations.md: sections of ``Key=value`` lines."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in _docs_block("ini", "Type=notify").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=value: {line!r}"
        current[key] = value
    return sections


class TestDocs:
    def test_the_unit_file_asks_for_notify_watchdog_and_restart(self):
        service = _unit()["Service"]
        assert service["Type"] == "notify"
        assert service["Restart"] == "on-failure"
        assert float(service["WatchdogSec"]) > 0

    def test_the_unit_file_command_is_accepted_by_the_parser(self):
        argv = shlex.split(_unit()["Service"]["ExecStart"])
        assert Path(argv[0]).name == "timer-watchdog"
        args = build_parser().parse_args(argv[1:])
        assert args.command_name == "serve"
        assert args.metrics is not None

    @pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
    )
    def test_systemd_accepts_the_unit_file(self, tmp_path):
        text = _docs_block("ini", "Type=notify")
        program = shutil.which("timer-watchdog") or str(
            Path(sys.executable).parent / "timer-watchdog"
        )
        assert os.access(program, os.X_OK), "the timer-watchdog script is installed"
        documented = shlex.split(_unit()["Service"]["ExecStart"])[0]
        unit = tmp_path / "timer-watchdog.service"
        unit.write_text(text.replace(documented, program))
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert str(unit) not in done.stderr, done.stderr  # no warning about our file

    def test_the_container_command_is_accepted_by_the_parser(self):
        dockerfile = _docs_block("dockerfile", "ENTRYPOINT")
        entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, flags=re.M)
        assert entrypoint, "an exec-form ENTRYPOINT"
        argv = json.loads(entrypoint[1])
        assert argv[0] == "timer-watchdog"
        args = build_parser().parse_args(argv[1:])
        assert args.command_name == "serve"
        assert args.metrics is not None
