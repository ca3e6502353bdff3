"""Check that the package's single version source is what its installed metadata says."""

from importlib.metadata import version

import timer_file


class TestVersion:
    def test_matches_installed_metadata(self) -> None:
        assert timer_file.__version__ == version("timer-file")
