"""Order of the tests in every run from this checkout (each package sets up its own tests)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the tests marked ``slow`` evenly over the first half of the run.

    They wait seconds on real processes. pytest-xdist hands each worker a run of
    consecutive tests: slow tests side by side in one file would queue up on one worker
    (at the end, when that file comes last), while spread out they overlap on different
    workers and the short tests fill the gaps. The order within each group is kept.
    """
    slow = [item for item in items if item.get_closest_marker("slow")]
    if not slow:
        return
    fast = [item for item in items if not item.get_closest_marker("slow")]
    gap = max(0, len(items) // (2 * len(slow)) - 1)
    ordered: list[pytest.Item] = []
    for index, item in enumerate(slow):
        ordered += [item, *fast[index * gap : (index + 1) * gap]]
    items[:] = ordered + fast[len(slow) * gap :]
