"""The command's own limit on open files, raised to the hard limit.

The engine holds one pidfd per worker and reads /proc for each new one. Under the
usual soft limit of 1024, a host with a thousand workers would run out: a worker's
first request then fails (its pidfd and its /proc files cannot be opened) and its
timers are never armed. ``run`` raises the limit only once COMMAND has started, so
that the job keeps the limit it was given.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_files_limit"]

logger = logging.getLogger("timer_watchdog")

_NR_OPEN = "/proc/sys/fs/nr_open"


def raise_open_files_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; return the new soft limit.

    ``None``: it was there already, or the kernel refused (logged).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux caps it at fs.nr_open
        try:
            with open(_NR_OPEN) as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            return None
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        logger.warning("cannot raise the limit on open files from %d to %d: %s", soft, target, exc)
        return None
    return target
