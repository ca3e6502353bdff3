"""Measure the pipe transport: client pairs/s, concurrent clients, server decode + register.

Run: ``python packages/timer-file/benchmarks/bench_pipe.py`` (timer-file installed).
Prints one JSON object per measurement. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from timer_api import LineDecoder, TimerRequest, encode_json_line, process_start_time
from timer_file import FileRequestQueue, FileTimerServer
from timer_watchdog import WatchdogServer

#: A client process: sends ``pairs`` acquire/release pairs, reports rate and errors,
#: then stays alive until stdin closes (the server refuses requests of dead processes).
CLIENT = """
import sys, time
from timer_file import FileTimerClient
client = FileTimerClient(sys.argv[1])
pairs, errors = int(sys.argv[2]), 0
if sys.argv[3] == "outer":  # hold one more timer, as inside an outer expires() block
    client.acquire("outer", time.time() + 600)
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
start = time.perf_counter()
for _ in range(pairs):
    try:
        client.acquire("bench", time.time() + 60)
        client.release("bench")
    except Exception as exc:
        errors += 1
        last = repr(exc)
elapsed = time.perf_counter() - start
sys.stdout.write(f"{elapsed} {errors}\\n"); sys.stdout.flush()
sys.stdin.read()
"""

TORCH_CLIENT = CLIENT.replace(
    "from timer_file import", "from torch.distributed.elastic.timer import"
)


def _clients(
    path: str, n: int, pairs: int, script: str = CLIENT, outer: bool = False
) -> dict[str, object]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, path, str(pairs), "outer" if outer else "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        assert p.stdout is not None
        elapsed, errors = p.stdout.readline().split()
        results.append((float(elapsed), int(errors)))
    wall = time.perf_counter() - start
    return {"procs": procs, "results": results, "wall": wall}


def _finish(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.communicate(timeout=30)


def _wait_received(server: FileTimerServer, expected: int, timeout: float = 120) -> float:
    start = time.perf_counter()
    while server.stats().received < expected and time.perf_counter() - start < timeout:
        time.sleep(0.01)
    return time.perf_counter() - start


def single_client(pairs: int = 200_000, *, outer: bool = True) -> None:
    server = FileTimerServer(None, "bench", max_interval=1)
    server.start()
    try:
        run = _clients(server.file_path, 1, pairs, outer=outer)
        ((elapsed, errors),) = run["results"]  # type: ignore[misc]
        lag = _wait_received(server, 2 * pairs + outer)
        stats = server.stats()
        _finish(run["procs"])  # type: ignore[arg-type]
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "bench": "one client, acquire+release",
                "outer_timer_held": outer,
                "pairs": pairs,
                "pairs_per_s": round(pairs / elapsed),
                "exceptions": errors,
                "server_received": stats.received,
                "server_lag_after_client_s": round(lag, 3),
                "rejected": stats.rejected,
            }
        )
    )


def concurrent_clients(n: int = 8, pairs: int = 50_000, *, outer: bool = True) -> None:
    server = FileTimerServer(None, "bench", max_interval=1)
    server.start()
    try:
        run = _clients(server.file_path, n, pairs, outer=outer)
        lag = _wait_received(server, 2 * n * pairs + n * outer)
        stats = server.stats()
        _finish(run["procs"])  # type: ignore[arg-type]
    finally:
        server.stop()
    results: list[tuple[float, int]] = run["results"]  # type: ignore[assignment]
    print(
        json.dumps(
            {
                "bench": f"{n} client processes x {pairs} pairs",
                "outer_timer_held": outer,
                "exceptions": sum(e for _, e in results),
                "sent": 2 * n * pairs + n * outer,
                "received": stats.received,
                "armed": stats.armed,
                "released": stats.released,
                "rejected": stats.rejected,
                "aggregate_pairs_per_s": round(n * pairs / (run["wall"] + lag)),  # type: ignore[operator]
            }
        )
    )


def decode_register(requests: int = 400_000, *, worker_stays_known: bool = True) -> None:
    """Decode and register arm/release pairs of one live worker.

    With ``worker_stays_known`` the worker holds one more timer throughout, as a
    worker inside an outer ``expires`` block does; otherwise each release leaves it
    with no timer and the next arm admits it again (the engine checks /proc).
    """
    victim = subprocess.Popen(["sleep", "300"])
    try:
        start_time = process_start_time(victim.pid)
        now = time.time()
        lines = [
            encode_json_line(
                TimerRequest(
                    victim.pid,
                    f"s{(i // 2) % 64}",
                    now + 600 if i % 2 == 0 else -1.0,
                    9,
                    start_time,
                )
            )
            for i in range(requests)
        ]
        if worker_stays_known:
            lines.insert(0, encode_json_line(TimerRequest(victim.pid, "outer", now + 600, 9)))
        data = b"".join(lines)
        chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        queue = FileRequestQueue()
        server = WatchdogServer(queue)
        decoder = LineDecoder()
        start = time.perf_counter()
        for chunk in chunks:
            batch = decoder.feed(chunk)
            server.register_timers(batch)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
        stats = server.stats()
        queue.close()
    finally:
        victim.kill()
        victim.wait()
    print(
        json.dumps(
            {
                "bench": "server decode + register",
                "worker_stays_known": worker_stays_known,
                "requests": requests,
                "requests_per_s": round(requests / elapsed),
                "armed": stats.armed,
                "released": stats.released,
                "rejected": stats.rejected,
            }
        )
    )


def torch_client(pairs: int = 2_000) -> None:
    try:
        import torch.distributed.elastic.timer  # noqa: F401
    except ImportError:
        print(json.dumps({"bench": "torch FileTimerClient", "skipped": "torch not importable"}))
        return
    server = FileTimerServer(None, "bench", max_interval=1)
    server.start()
    try:
        run = _clients(server.file_path, 1, pairs, TORCH_CLIENT)
        ((elapsed, errors),) = run["results"]  # type: ignore[misc]
        _wait_received(server, 2 * (pairs - errors), timeout=30)
        _finish(run["procs"])  # type: ignore[arg-type]
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "bench": "torch FileTimerClient -> our server",
                "pairs": pairs,
                "pairs_per_s": round(pairs / elapsed),
                "exceptions": errors,
            }
        )
    )


if __name__ == "__main__":
    single_client(outer=True)
    single_client(outer=False)
    concurrent_clients(outer=True)
    concurrent_clients(outer=False)
    decode_register(worker_stays_known=True)
    decode_register(worker_stays_known=False)
    torch_client()
