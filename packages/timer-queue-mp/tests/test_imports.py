"""A worker's ``import timer_queue_mp`` stays light: the engine comes only with the server names."""

from __future__ import annotations

import subprocess
import sys

import pytest

import timer_queue_mp


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_client_import_does_not_load_the_engine():
    loaded = _modules_after("import timer_queue_mp\ntimer_queue_mp.LocalTimerClient")
    assert "timer_queue_mp._client" in loaded
    assert "timer_watchdog" not in loaded
    assert "timer_queue_mp._server" not in loaded


@pytest.mark.parametrize("name", sorted(timer_queue_mp.__all__))
def test_every_public_name_resolves(name):
    assert getattr(timer_queue_mp, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        timer_queue_mp.no_such_name
