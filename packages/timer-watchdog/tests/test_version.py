"""Check that the package's single version source is what its installed metadata says."""

from importlib.metadata import version

import timer_watchdog


class TestVersion:
    def test_matches_installed_metadata(self) -> None:
        assert timer_watchdog.__version__ == version("timer-watchdog")
