"""``lazy_getattr``: a package's heavy names are imported on first use, once, and nothing else is."""

from __future__ import annotations

import importlib
import sys

import pytest

PACKAGE = "lazy_getattr_example"


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text(
        "from timer_api import lazy_getattr\n"
        "__getattr__ = lazy_getattr(__name__, {'Heavy': '._heavy', 'other': '._heavy'})\n"
    )
    (root / "_heavy.py").write_text("class Heavy:\n    pass\n\nother = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(PACKAGE)
    for name in [PACKAGE, f"{PACKAGE}._heavy"]:
        sys.modules.pop(name, None)


def test_name_is_imported_on_first_use_and_kept(package):
    assert f"{PACKAGE}._heavy" not in sys.modules
    heavy = package.Heavy
    assert heavy is sys.modules[f"{PACKAGE}._heavy"].Heavy
    assert vars(package)["Heavy"] is heavy
    from lazy_getattr_example import other

    assert other == 7


def test_unknown_name_raises_attribute_error(package):
    with pytest.raises(AttributeError, match=f"module '{PACKAGE}' has no attribute 'nope'"):
        package.nope
    assert not hasattr(package, "_heavy_thing")
    assert f"{PACKAGE}._heavy" not in sys.modules
