"""Check that the package's single version source is what its installed metadata says."""

from importlib.metadata import version

import timer_queue_mp


class TestVersion:
    def test_matches_installed_metadata(self) -> None:
        assert timer_queue_mp.__version__ == version("timer-queue-mp")
