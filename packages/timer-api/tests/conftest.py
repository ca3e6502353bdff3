"""Set-up shared by timer-api's tests."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisSideeffectWarning


def pytest_configure(config: pytest.Config) -> None:
    """Let hypothesis build its Unicode tables once, before pytest-xdist starts its workers.

    ``st.text()`` needs tables of the Unicode categories and of what UTF-8 encodes, which
    hypothesis computes (about 2.5 s of CPU) and keeps under ``.hypothesis/``. In a fresh
    checkout every worker would compute them at the same time; drawn here, in the process
    that starts the workers (or the only one), the workers read what it stored. A run
    that only collects draws nothing. Hypothesis warns about slow work while plugins
    load: here that work is the point.
    """
    if not hasattr(config, "workerinput") and not config.option.collectonly:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HypothesisSideeffectWarning)
            _draw_one_text()


@settings(max_examples=1, database=None)
@given(st.text())
def _draw_one_text(text: str) -> None:
    """Draw one text: enough for hypothesis to build and store its Unicode tables."""
