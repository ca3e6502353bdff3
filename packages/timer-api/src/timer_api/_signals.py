"""Name a signal number, and parse a signal's name or number: the one way every package does both.

Real-time signals have no name of their own; they read ``SIGRTMIN+4`` (as ``kill -l``
writes the lower half), and :func:`parse_signal` reads that form back.
"""

from __future__ import annotations

import signal

__all__ = ["parse_signal", "signal_name"]


def _realtime() -> tuple[int, int] | None:
    """Return the first and last real-time signal numbers, or ``None`` where there are none."""
    if not hasattr(signal, "SIGRTMIN"):  # pragma: no cover - Linux has them
        return None
    return int(signal.SIGRTMIN), int(signal.SIGRTMAX)


def signal_name(signum: int) -> str:
    """Return the name of ``signum``: ``SIGKILL`` for 9, ``SIGRTMIN+4``, or ``signal N`` if unnamed.

    A real-time signal strictly between ``SIGRTMIN`` and ``SIGRTMAX`` is named by
    its offset from ``SIGRTMIN``; :func:`parse_signal` reads every name back.
    """
    signum = int(signum)
    realtime = _realtime()
    if realtime is not None and realtime[0] < signum < realtime[1]:
        return f"SIGRTMIN+{signum - realtime[0]}"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def parse_signal(text: str) -> int:
    """Return the signal number ``text`` names: ``KILL``, ``SIGKILL``, ``kill``, ``9`` or ``RTMIN+4``.

    Real-time signals are ``SIGRTMIN+N`` or ``SIGRTMAX-N`` (with or without ``SIG``).
    Raises ``ValueError``, saying what was expected, for anything else, and for a
    number that is not a signal of this system (0 included).
    """
    name = text.strip().upper()
    number = _number(name) if name.isdigit() else _named(name)
    if number is None:
        raise ValueError(
            f"not a signal name or number: {text!r} (expected e.g. SIGTERM, TERM, 15 "
            f"or SIGRTMIN+4; numbers 1 to {signal.NSIG - 1})"
        )
    return number


def _number(text: str) -> int | None:
    number = int(text)
    return number if 0 < number < signal.NSIG else None


def _named(name: str) -> int | None:
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name in signal.Signals.__members__:
        return int(signal.Signals[name])
    realtime = _realtime()
    if realtime is None:  # pragma: no cover - Linux has them
        return None
    first, last = realtime
    for base, origin, sign in (("SIGRTMIN+", first, 1), ("SIGRTMAX-", last, -1)):
        offset = name.removeprefix(base)
        if offset != name and offset.isdigit():
            number = origin + sign * int(offset)
            return number if first <= number <= last else None
    return None
