"""The packages' public names: what was made private stays private, and every public name resolves."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ("timer_api", "timer_watchdog", "timer_file", "timer_queue_mp")

#: Names with no user and no consumer outside their package, made private: each still
#: lives in its package's private module.
PRIVATE = {
    "timer_api": {"encode_json": "_codec", "decode_json": "_codec"},
    "timer_watchdog": {
        "is_terminating": "_policy",
        "parse_faulthandler": "_forensics",
        "parse_py_spy": "_forensics",
    },
    "timer_file": {
        "DEFAULT_SEND_TIMEOUT": "_client",
        "TIMER_FILE_ENV": "_client",
        "FileRequestQueue": "_queue",
        "default_pipe_path": "_pipe",
    },
}


@pytest.mark.parametrize(
    ("package", "name", "module"),
    [
        (package, name, module)
        for package, names in PRIVATE.items()
        for name, module in names.items()
    ],
)
def test_private_names_are_not_exported(package, name, module):
    facade = importlib.import_module(package)
    assert name not in facade.__all__
    with pytest.raises(AttributeError):
        getattr(facade, name)
    assert hasattr(importlib.import_module(f"{package}.{module}"), name)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_once(package):
    facade = importlib.import_module(package)
    assert len(set(facade.__all__)) == len(facade.__all__)
    for name in facade.__all__:
        assert getattr(facade, name) is not None, name


@pytest.mark.parametrize(
    ("package", "name"),
    [("timer_api", "signal_name"), ("timer_api", "parse_signal"), ("timer_watchdog", "Transport")],
)
def test_shared_names_are_public(package, name):
    assert name in importlib.import_module(package).__all__
