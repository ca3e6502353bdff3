"""Signal names and numbers: signal_name and parse_signal, the one place every package uses."""

from __future__ import annotations

import signal

import pytest

import timer_api
from timer_api import DEFAULT_STACK_SIGNAL, parse_signal, signal_name

RTMIN, RTMAX = int(signal.SIGRTMIN), int(signal.SIGRTMAX)


class TestSignalName:
    @pytest.mark.parametrize(
        ("signum", "name"),
        [
            (9, "SIGKILL"),
            (15, "SIGTERM"),
            (int(signal.SIGUSR1), "SIGUSR1"),
            (6, "SIGABRT"),  # not its alias SIGIOT
            (RTMIN, "SIGRTMIN"),
            (RTMIN + 4, "SIGRTMIN+4"),
            (RTMAX - 1, f"SIGRTMIN+{RTMAX - 1 - RTMIN}"),
            (RTMAX, "SIGRTMAX"),
            (DEFAULT_STACK_SIGNAL, "SIGRTMIN+4"),
            (signal.SIGTERM, "SIGTERM"),  # a Signals member
        ],
    )
    def test_names(self, signum, name):
        assert signal_name(signum) == name

    @pytest.mark.parametrize("signum", [0, RTMIN - 1, signal.NSIG, 200, -1])
    def test_a_number_without_a_name(self, signum):
        assert signal_name(signum) == f"signal {signum}"

    def test_every_name_reads_back(self):
        for signum in range(1, signal.NSIG):
            name = signal_name(signum)
            if not name.startswith("signal "):
                assert parse_signal(name) == signum, name


class TestParseSignal:
    @pytest.mark.parametrize(
        ("text", "number"),
        [
            ("SIGKILL", 9),
            ("KILL", 9),
            ("kill", 9),
            ("SigTerm", 15),
            ("9", 9),
            (" 15 ", 15),
            ("SIGUSR1", int(signal.SIGUSR1)),
            ("IOT", 6),  # an alias
            ("RTMIN", RTMIN),
            ("SIGRTMIN", RTMIN),
            ("RTMIN+4", RTMIN + 4),
            ("sigrtmin+4", RTMIN + 4),
            ("SIGRTMIN+0", RTMIN),
            ("RTMAX", RTMAX),
            ("SIGRTMAX-2", RTMAX - 2),
            (str(RTMIN + 4), RTMIN + 4),
            (str(signal.NSIG - 1), signal.NSIG - 1),
        ],
    )
    def test_names_and_numbers(self, text, number):
        assert parse_signal(text) == number

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "   ",
            "SIG",
            "SIGNOPE",
            "NOPE",
            "0",
            "-1",
            "+9",
            "9.0",
            str(signal.NSIG),
            "999",
            f"RTMIN+{RTMAX - RTMIN + 1}",
            f"RTMAX-{RTMAX - RTMIN + 1}",
            "RTMIN+",
            "RTMIN-1",
            "RTMIN+x",
            "SIGKILL SIGTERM",
        ],
    )
    def test_bad_input_is_a_clear_error(self, text):
        with pytest.raises(ValueError, match="not a signal name or number") as caught:
            parse_signal(text)
        assert repr(text) in str(caught.value)
        assert "SIGRTMIN+4" in str(caught.value)  # says what would do


def test_exported_from_the_facade():
    assert {"parse_signal", "signal_name"} <= set(timer_api.__all__)
