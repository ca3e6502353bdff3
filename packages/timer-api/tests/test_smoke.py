import timer_api


def test_version_matches_metadata():
    from importlib.metadata import version

    assert timer_api.__version__ == version("timer-api")


def test_import_leaves_the_soft_timeout_machinery_unloaded():
    import subprocess
    import sys

    code = "import timer_api, sys; print('timer_api._soft' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False"
