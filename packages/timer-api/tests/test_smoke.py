import timer_api


def test_version_matches_metadata():
    from importlib.metadata import version

    assert timer_api.__version__ == version("timer-api")
