"""Shared fixtures: a pipe path in the test's own directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def pipe_path(tmp_path: object) -> str:
    """Return a path for a pipe that does not exist yet."""
    return f"{tmp_path}/timer.pipe"
