"""Sessions for the timer monorepo; ``nox -l`` lists them, plain ``nox`` runs the default ones."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"]

#: Each package and the sibling packages it declares, in install order.
PACKAGES: dict[str, list[str]] = {
    "timer-api": [],
    "timer-watchdog": ["timer-api"],
    "timer-queue-mp": ["timer-api", "timer-watchdog"],
    "timer-file": ["timer-api", "timer-watchdog"],
}


def _find_pyenv_interpreters() -> None:
    """Put every pyenv-installed CPython 3.10-3.13 on PATH so that nox finds ``python3.X``."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for version in PYTHONS:
        found += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin")))[-1:]
    os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_interpreters()


def _local(*packages: str) -> list[str]:
    return [str(ROOT / "packages" / name) for name in packages]


def _tests_session(package: str) -> None:
    def tests(session: nox.Session) -> None:
        session.install(*TEST_DEPS)
        session.install(*_local(*PACKAGES[package], package))
        session.run("pytest", f"packages/{package}/tests", *session.posargs)

    tests.__doc__ = f"Test {package} installed alone, with only its declared dependencies."
    nox.session(name=f"tests-{package}", python=PYTHONS)(tests)


for _package in PACKAGES:
    _tests_session(_package)


@nox.session(name="tests-all", python=PYTHONS)
def tests_all(session: nox.Session) -> None:
    """Test every package installed together, plus the cross-package tests in tests/."""
    session.install(*TEST_DEPS)
    session.install(*_local(*PACKAGES))
    session.run(
        "pytest", *[f"packages/{name}/tests" for name in PACKAGES], "tests", *session.posargs
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check every package and the typed usage files with mypy --strict."""
    session.install("mypy>=1.13", *TEST_DEPS)
    session.install(*_local(*PACKAGES))
    session.run("mypy", *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """Build each package's sdist and wheel on its own with hatch, then run twine check."""
    session.install("hatch>=1.13", "twine>=6.1")
    for package in PACKAGES:
        dist = ROOT / "dist" / package
        with session.chdir(ROOT / "packages" / package):
            session.run("hatch", "build", "-t", "sdist", "-t", "wheel", str(dist))
        session.run("twine", "check", "--strict", *glob.glob(str(dist / "*")))


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run the demo: a worker overstays its timer under LocalTimerServer and is killed."""
    session.install(*_local(*PACKAGES))
    session.run("python", "examples/demo.py", *session.posargs)
