"""Prometheus metrics: the text format checked by a real parser, a real reap, /healthz, the file."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from timer_api import InvalidRequestError, RejectReason, TimerRequest
from timer_watchdog import Armed, Reaped
from timer_watchdog._export import Exporter, MetricsError
from timer_watchdog._files import write_atomically
from timer_watchdog._metrics import (
    CONTENT_TYPE,
    Histogram,
    Metrics,
    escape_label,
    format_value,
    parse_address,
)
from timer_watchdog._metrics_http import MetricsHTTP

PATIENCE = 60.0

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def check_format(text: str) -> dict[str, str]:
    """Check the exposition format's rules that a lenient parser lets pass; return name -> type."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    current: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in types, f"family {name} appears twice"
            assert lines[i + 1].startswith(f"# TYPE {name} "), "TYPE follows HELP"
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current
            types[name] = kind
            if kind == "counter":
                assert name.endswith("_total"), name
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        assert current is not None
        suffixes = ("_bucket", "_sum", "_count") if types[current] == "histogram" else ("",)
        assert match[1] in {current + suffix for suffix in suffixes}, line
    return types


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse with prometheus_client's parser; return sample name -> labels -> value."""
    check_format(text)
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def http() -> Iterator[list[MetricsHTTP]]:
    started: list[MetricsHTTP] = []
    yield started
    for one in started:
        one.close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=PATIENCE) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


class TestFormat:
    @pytest.mark.parametrize(
        "raw", ["plain", 'a "quoted" word', "back\\slash", "two\nlines", '\\"\n\\n']
    )
    def test_label_values_survive_a_real_parser(self, raw):
        text = f'# HELP x_total h\n# TYPE x_total counter\nx_total{{v="{escape_label(raw)}"}} 1\n'
        [family] = text_string_to_metric_families(text)
        assert family.samples[0].labels == {"v": raw}

    @pytest.mark.parametrize(
        ("number", "text"),
        [(3, "3"), (0.25, "0.25"), (2.0, "2"), (math.inf, "+Inf"), (-math.inf, "-Inf")],
    )
    def test_values(self, number, text):
        assert format_value(number) == text

    def test_nan(self):
        assert format_value(math.nan) == "NaN"

    def test_histogram_is_cumulative_with_inf_sum_and_count(self):
        from timer_watchdog._metrics import _Family

        histogram = Histogram([0.1, 1.0, 10.0])
        for observed in (0.05, 0.1, 0.5, 20.0):
            histogram.observe(observed)
        family = _Family("h_seconds", "histogram", "help")
        histogram.render(family)
        samples = parse("".join(line + "\n" for line in family.lines))
        buckets = samples["h_seconds_bucket"]
        assert [buckets[(("le", le),)] for le in ("0.1", "1.0", "10.0", "+Inf")] == [2, 3, 3, 4]
        assert value(samples, "h_seconds_count") == 4
        assert value(samples, "h_seconds_sum") == pytest.approx(20.65)

    @pytest.mark.parametrize(
        ("text", "address"),
        [
            ("127.0.0.1:9464", ("127.0.0.1", 9464)),
            (":0", ("", 0)),
            ("[::1]:80", ("::1", 80)),
            ("localhost:65535", ("localhost", 65535)),
        ],
    )
    def test_addresses(self, text, address):
        assert parse_address(text) == address

    @pytest.mark.parametrize("text", ["9464", "host:", "host:65536", "::1:80", "h:x"])
    def test_bad_addresses(self, text):
        with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
            parse_address(text)


class TestMetrics:
    def test_every_family_follows_the_format_before_any_request(self, make_server):
        harness = make_server()
        metrics = Metrics(harness.server)
        types = check_format(metrics.render())
        assert types["timer_watchdog_reap_lateness_seconds"] == "histogram"
        assert types["timer_watchdog_armed_timers"] == "gauge"
        samples = parse(metrics.render())
        for reason in RejectReason:
            assert (
                value(samples, "timer_watchdog_requests_rejected_total", reason=reason.value) == 0
            )
        assert value(samples, "timer_watchdog_signals_sent_total", signal="SIGKILL") == 0
        assert value(samples, "timer_watchdog_loop_running") == 1
        assert value(samples, "timer_watchdog_clock_skew_total") == 0

    def test_counters_move_after_a_real_reap(self, make_server, spawn):
        harness = make_server()
        metrics = Metrics(harness.server)
        before = parse(metrics.render())
        child = spawn()
        harness.put(
            child.request(after=0.05, signal=9), InvalidRequestError(RejectReason.MALFORMED, "x")
        )
        harness.events.wait_for(Reaped, child.pid)
        assert child.wait() == -9
        after = parse(metrics.render())
        for name in ("timer_watchdog_reaped_workers_total", "timer_watchdog_expired_timers_total"):
            assert value(before, name) == 0
            assert value(after, name) == 1
        assert value(after, "timer_watchdog_requests_total", outcome="armed") == 1
        assert value(after, "timer_watchdog_requests_received_total") == 2
        assert value(after, "timer_watchdog_signals_sent_total", signal="SIGKILL") == 1
        assert value(after, "timer_watchdog_requests_rejected_total", reason="malformed") == 1
        assert value(after, "timer_watchdog_reap_lateness_seconds_count") == 1
        assert value(after, "timer_watchdog_reap_lateness_seconds_bucket", le="+Inf") == 1
        assert value(after, "timer_watchdog_loop_iterations_total") >= 1

    def test_signals_by_name_and_rejections_by_reason(self, make_server, spawn):
        harness = make_server()
        metrics = Metrics(harness.server)
        child = spawn("term_exiter")
        harness.put(child.request(after=0.05, signal=15), TimerRequest(-5, "s", 1.0))
        harness.events.wait_for(Reaped, child.pid)
        samples = parse(metrics.render())
        assert value(samples, "timer_watchdog_signals_sent_total", signal="SIGTERM") == 1
        assert value(samples, "timer_watchdog_signals_sent_total", signal="SIGKILL") == 0
        assert value(samples, "timer_watchdog_requests_rejected_total", reason="bad_pid") == 1


class TestHTTP:
    def test_metrics_healthz_and_404(self, make_server, http):
        harness = make_server()
        served = MetricsHTTP(Metrics(harness.server), ("127.0.0.1", 0))
        http.append(served)
        served.start()
        status, content_type, body = get(served.url)
        assert (status, content_type) == (200, CONTENT_TYPE)
        assert "timer_watchdog_loop_iterations_total" in parse(body)
        assert get(served.url.replace("/metrics", "/healthz"))[0] == 200
        assert get(served.url.replace("/metrics", "/nothing"))[0] == 404

    def test_healthz_is_503_while_the_loop_is_stuck_and_once_it_stopped(
        self, make_server, spawn, http, wait_until
    ):
        harness = make_server()
        release = threading.Event()

        def stuck_subscriber(event: object) -> None:
            if isinstance(event, Armed):
                release.wait(PATIENCE * 4)

        harness.server.subscribe(stuck_subscriber)
        served = MetricsHTTP(Metrics(harness.server, stall_after=0.2), ("127.0.0.1", 0))
        http.append(served)
        served.start()
        healthz = served.url.replace("/metrics", "/healthz")
        wait_until(lambda: get(healthz)[0] == 200)
        harness.put(spawn().request(after=60))  # the loop emits its event, and blocks there
        try:
            wait_until(lambda: get(healthz)[0] == 503)
            assert "stalled" in get(healthz)[2]
        finally:
            release.set()
        wait_until(lambda: get(healthz)[0] == 200)
        harness.server.stop()
        status, _, body = get(healthz)
        assert (status, body) == (503, "engine loop not running\n")


class TestFile:
    def test_written_atomically_readable_and_replaced(self, make_server, tmp_path):
        path = tmp_path / "timer.prom"
        exporter = Exporter(make_server().server, path=str(path))
        first = os.stat(path)
        assert first.st_mode & 0o777 == 0o644
        assert "timer_watchdog_armed_timers" in parse(path.read_text())
        exporter.start(lambda _: None)
        exporter.close()
        assert os.stat(path).st_ino != first.st_ino
        assert os.listdir(tmp_path) == ["timer.prom"]

    def test_write_atomically_leaves_nothing_when_it_fails(self, tmp_path):
        (tmp_path / "dir.prom").mkdir()
        with pytest.raises(IsADirectoryError):
            write_atomically(str(tmp_path / "dir.prom"), "x\n")
        assert os.listdir(tmp_path) == ["dir.prom"]

    def test_missing_directory_is_a_clear_error(self, make_server, tmp_path):
        with pytest.raises(MetricsError, match=r"cannot write --metrics-file .*No such file"):
            Exporter(make_server().server, path=str(tmp_path / "missing" / "timer.prom"))

    def test_port_in_use_is_a_clear_error(self, make_server, http):
        harness = make_server()
        served = MetricsHTTP(Metrics(harness.server), ("127.0.0.1", 0))
        http.append(served)
        port = int(served.url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(MetricsError, match=f"cannot serve --metrics 127.0.0.1:{port}"):
            Exporter(harness.server, address=("127.0.0.1", port))


def test_the_commands_never_import_prometheus_client():
    code = (
        "import sys, timer_watchdog._cli, timer_watchdog._serve, timer_watchdog._run; "
        "assert 'prometheus_client' not in sys.modules, 'imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_command_imports_http_server_only_to_serve_metrics():
    code = (
        "import sys\n"
        "import timer_watchdog._cli, timer_watchdog._session\n"
        "assert 'http.server' not in sys.modules, 'imported without --metrics'\n"
        "import timer_watchdog._metrics_http\n"
        "assert 'http.server' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=PATIENCE)
