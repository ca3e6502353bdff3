"""Wire compatibility with torch's file timer, both ways, with real processes.

Needs torch (``nox -s interop`` installs torch 2.13); skipped when it is not importable.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch may warn at import (no numpy, ...)
    pytest.importorskip("torch.distributed.elastic.timer")

from timer_file import FileTimerServer

#: Whose client the worker uses: ours (timer_file) or torch's.
CLIENTS = {
    "ours": "import timer_api as t\nfrom timer_file import FileTimerClient",
    "torch": "import torch.distributed.elastic.timer as t\n"
    "from torch.distributed.elastic.timer import FileTimerClient",
}

WORKER = """
import sys, time, warnings
warnings.simplefilter("ignore")
{imports}
path, after, work = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
t.configure(FileTimerClient(path))
with t.expires(after=after):
    print("armed", flush=True)
    time.sleep(work)
print("done", flush=True)
"""

TORCH_SERVER = """
import sys, time, warnings
warnings.simplefilter("ignore")
from torch.distributed.elastic.timer import FileTimerServer
server = FileTimerServer(sys.argv[1], "interop", max_interval=0.1)
server.start()
print("ready", flush=True)
time.sleep(120)
"""

Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a Python process from source; kill every one left at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(source: str, *args: str, first_line: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", source, *args], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == first_line
        return process

    yield start
    for process in started:
        process.kill()
        process.communicate()


def _worker(
    spawn: Spawn, client: str, path: str, after: float, work: float
) -> subprocess.Popen[str]:
    source = WORKER.format(imports=CLIENTS[client])
    return spawn(source, path, str(after), str(work), first_line="armed\n")


class TestTorchClientOurServer:
    def test_hung_worker_reaped(self, tmp_path: object, spawn: Spawn) -> None:
        server = FileTimerServer(f"{tmp_path}/timer.pipe", "interop", max_interval=0.5)
        server.start()
        try:
            worker = _worker(spawn, "torch", server.file_path, after=0.5, work=120)
            assert worker.wait(timeout=60) == -signal.SIGKILL
            deadline = time.monotonic() + 20
            while server.stats().reaped < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = server.stats()
        finally:
            server.stop()
        assert (stats.armed, stats.reaped, stats.rejected) == (1, 1, 0)

    def test_in_time_worker_untouched(self, tmp_path: object, spawn: Spawn) -> None:
        server = FileTimerServer(f"{tmp_path}/timer.pipe", "interop", max_interval=0.5)
        server.start()
        try:
            worker = _worker(spawn, "torch", server.file_path, after=60, work=0.1)
            out, _ = worker.communicate(timeout=60)
            deadline = time.monotonic() + 20
            while server.stats().released < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = server.stats()
        finally:
            server.stop()
        assert (worker.returncode, out) == (0, "done\n")
        assert (stats.armed, stats.released, stats.signalled) == (1, 1, 0)


class TestOurClientTorchServer:
    def test_hung_worker_reaped(self, tmp_path: object, spawn: Spawn) -> None:
        path = f"{tmp_path}/timer.pipe"
        # torch's server signals its own process after a reap: it runs in a child.
        torch_server = spawn(TORCH_SERVER, path, first_line="ready\n")
        worker = _worker(spawn, "ours", path, after=0.5, work=120)
        assert worker.wait(timeout=60) == -signal.SIGKILL
        assert torch_server.wait(timeout=60) == -signal.SIGKILL  # torch's own behaviour

    def test_in_time_worker_untouched(self, tmp_path: object, spawn: Spawn) -> None:
        path = f"{tmp_path}/timer.pipe"
        torch_server = spawn(TORCH_SERVER, path, first_line="ready\n")
        worker = _worker(spawn, "ours", path, after=60, work=0.1)
        out, _ = worker.communicate(timeout=60)
        assert (worker.returncode, out) == (0, "done\n")
        assert torch_server.poll() is None
