"""WatchdogPolicy validation and the classification of signals."""

from __future__ import annotations

import math
import signal

import msgspec
import pytest

from timer_watchdog import TERMINATING_SIGNALS, WatchdogPolicy
from timer_watchdog._policy import is_terminating


class TestPolicy:
    def test_defaults(self):
        policy = WatchdogPolicy()
        assert (policy.signal, policy.grace, policy.observe_only, policy.exit_on_reap) == (
            signal.SIGKILL,
            0.0,
            False,
            False,
        )
        assert not policy.allow_other_users
        assert policy.stacks_dir is None
        assert (policy.force_signal, policy.max_timers_per_worker, policy.descendants_of) == (
            False,
            10_000,
            None,
        )

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("signal", 0),
            ("signal", 65),
            ("signal", True),
            ("stack_signal", signal.SIGKILL),
            ("stack_signal", signal.SIGSTOP),
            ("grace", -1.0),
            ("grace", math.nan),
            ("grace", math.inf),
            ("kill_timeout", 0.0),
            ("stack_wait", -0.5),
            ("stacks_dir", 5),
            ("max_timers_per_worker", 0),
            ("max_timers_per_worker", True),
            ("descendants_of", 0),
            ("descendants_of", "1"),
        ],
    )
    def test_out_of_range_field_is_refused(self, field, value):
        with pytest.raises(ValueError, match=field):
            WatchdogPolicy(**{field: value})

    def test_is_frozen_and_keyword_only(self):
        policy = WatchdogPolicy(grace=2.0)
        with pytest.raises(AttributeError):
            policy.grace = 3.0  # type: ignore[misc]
        with pytest.raises(TypeError):
            WatchdogPolicy(15)  # type: ignore[misc]

    def test_decodes_from_json_with_validation(self):
        assert msgspec.json.decode(b'{"grace": 1.5}', type=WatchdogPolicy).grace == 1.5
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"grace": -1}', type=WatchdogPolicy)


class TestSignals:
    @pytest.mark.parametrize(
        "signum",
        [
            signal.SIGKILL,
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGQUIT,
            signal.SIGABRT,
        ],
    )
    def test_signals_meant_to_end_the_process(self, signum):
        assert is_terminating(signum)

    @pytest.mark.parametrize(
        "signum",
        [
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGCONT,
            signal.SIGWINCH,
            signal.SIGSTOP,
            signal.SIGCHLD,
            signal.SIGRTMIN,
            signal.SIGRTMAX,
        ],
    )
    def test_notify_only_signals(self, signum):
        assert not is_terminating(signum)
        assert signum not in TERMINATING_SIGNALS
