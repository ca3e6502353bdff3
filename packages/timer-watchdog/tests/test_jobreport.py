"""The job report's text: how the culprit and each expiry are named, with and without a rank."""

from __future__ import annotations

import pytest

from timer_watchdog._jobreport import HostExpiry, JobReport, JobView, format_report, format_view


def _report(rank: str | None) -> JobReport:
    return JobReport(
        host="host-a",
        time=0.0,
        culprit=40,
        culprit_rank=rank,
        scope_id="step",
        expiration_time=1.5,
        waiting_for=None,
        budget=3.0,
        seconds=0.5,
        groups=[],
        processes=[],
    )


@pytest.mark.parametrize(
    ("rank", "line"),
    [
        ("3", "  first to expire: pid 40 (rank 3), timer 'step'"),
        (None, "  first to expire: pid 40, timer 'step'"),
    ],
)
def test_report_names_the_culprit_by_rank_when_known(rank, line):
    assert format_report(_report(rank)).splitlines()[1] == line


@pytest.mark.parametrize(
    ("rank", "first", "row"),
    [
        (
            "3",
            "  first to expire: pid 40 (rank 3) on host-a, timer 'step' at 00:00:01.500 UTC",
            "    00:00:01.500 UTC  host-a  pid 40 (rank 3)  'step'",
        ),
        (
            None,
            "  first to expire: pid 40 (rank unknown) on host-a, timer 'step' at 00:00:01.500 UTC",
            "    00:00:01.500 UTC  host-a  pid 40  'step'",
        ),
    ],
)
def test_view_names_each_expiry_by_rank_when_known(rank, first, row):
    expiry = HostExpiry(host="host-a", pid=40, rank=rank, scope_id="step", expiration_time=1.5)
    view = JobView(hosts=["host-a"], first=expiry, expiries=[expiry], groups=[], reports=[])
    assert format_view(view).splitlines()[1:4] == [first, "  expiries in wall-clock order:", row]
