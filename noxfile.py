"""Sessions for the timer monorepo; ``nox -l`` lists them, plain ``nox`` runs the default ones."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"  # nox.project.python_versions
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))
#: uv compiles what it installs: where PYTHONDONTWRITEBYTECODE is set (these machines set
#: it), every process a test starts would otherwise compile pytest, hypothesis and our
#: packages again (about 0.45 s a process).
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

ROOT = Path(__file__).parent
#: Every package supports the same Pythons; timer-api's classifiers name them.
PYTHONS = nox.project.python_versions(
    nox.project.load_toml(ROOT / "packages" / "timer-api" / "pyproject.toml")
)
#: py-spy lets the tests take real py-spy dumps (the watchdog's ``--py-spy``); tests
#: that need it skip where it is not installed. prometheus_client's parser reads the
#: metrics the watchdog renders itself (no package depends on it at run time).
#: pytest-xdist runs the tests of a session side by side: most of them wait on real
#: processes, pipes and signals, so four workers keep two cores busy.
TEST_DEPS = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.6",
    "hypothesis>=6.100",
    "py-spy>=0.3.14",
    "prometheus_client>=0.20",
]
#: pytest's arguments in every test session; ``nox -- -n 0`` runs the tests one by one.
PYTEST = ["pytest", "--numprocesses=4"]
#: The environment of every pytest run: bytecode is written, whatever the caller's
#: PYTHONDONTWRITEBYTECODE says (these machines set it). The processes a test run starts
#: import the same sources again and again (xdist workers, spawned children that import
#: the test module, the commands under test); without it each one compiles them anew.
#: On fresh clones, tests-3.11 and tests-all-3.11 took 77 s with it, 85-91 s without.
TEST_ENV: dict[str, str | None] = {"PYTHONDONTWRITEBYTECODE": None}
#: The cross-package tests mostly wait on ``timer-watchdog`` processes they start: eight
#: workers overlap those waits (a package's own tests gain nothing past four: each worker
#: costs about two seconds of CPU to start).
PYTEST_ALL = ["pytest", "--numprocesses=8"]

#: Each package and the sibling packages it declares, in install order.
PACKAGES: dict[str, list[str]] = {
    "timer-api": [],
    "timer-watchdog": ["timer-api"],
    "timer-queue-mp": ["timer-api", "timer-watchdog"],
    "timer-file": ["timer-api", "timer-watchdog"],
}


def _find_pyenv_interpreters() -> None:
    """Put every pyenv-installed CPython of PYTHONS on PATH so that nox finds ``python3.X``."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for version in PYTHONS:
        found += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin")))[-1:]
    os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_interpreters()


#: What building a package leaves in its folder, or tools write there: never part of its sources.
NOT_SOURCES = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "dist"}


def _local(session: nox.Session, *packages: str) -> list[str]:
    """Return wheels of ``packages`` to install, each built once for the state of its sources.

    A session that installs a package folder builds its wheel again (about a second each);
    here a wheel is kept under the nox env dir, named by a digest of the package's files,
    and rebuilt when one of them changes. Without uv, the folders are installed as they are.
    """
    import shutil

    from nox.virtualenv import HAS_UV, UV

    folders = [ROOT / "packages" / name for name in packages]
    if not HAS_UV:
        return [str(folder) for folder in folders]
    store = Path(session.virtualenv.location).parent / "_wheels"
    wheels = []
    for folder in folders:
        out = store / f"{folder.name}-{_digest(folder)}"
        if not any(out.glob("*.whl")):
            tmp = store / f"{out.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build = [UV, "build", "-q", "--wheel", "--python", str(Path(session.bin, "python"))]
            session.run_install(*build, "--out-dir", str(tmp), str(folder), external=True)
            if tmp.exists():  # not when installs are skipped (``nox --no-install``)
                tmp.rename(out)
        wheels += [str(wheel) for wheel in out.glob("*.whl")] or [str(folder)]
    return wheels


def _digest(folder: Path) -> str:
    """Return a digest of the names and contents of the files under ``folder``."""
    import hashlib

    digest = hashlib.sha256()
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in NOT_SOURCES and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(parent, name)
            digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@nox.session(python=PYTHONS)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Test one package installed alone, with only its declared dependencies."""
    session.install(*TEST_DEPS)
    session.install(*_local(session, *PACKAGES[package], package))
    session.run(*PYTEST, f"packages/{package}/tests", *session.posargs, env=TEST_ENV)


@nox.session(name="tests-all", python=PYTHONS)
def tests_all(session: nox.Session) -> None:
    """Run the cross-package tests in tests/ with every package installed together.

    Each package's own tests run in its ``tests`` session, installed alone.
    """
    session.install(*TEST_DEPS)
    session.install(*_local(session, *PACKAGES))
    session.run(*PYTEST_ALL, "tests", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHONS[-1], default=False)
def quick(session: nox.Session) -> None:
    """Check in about a minute: lint, then every test on one Python, stopping at the first failure."""
    session.install("ruff>=0.8", *TEST_DEPS)
    session.install(*_local(session, *PACKAGES))
    session.run("ruff", "check", ".")
    tests = [f"packages/{name}/tests" for name in PACKAGES]
    session.run(*PYTEST, "-x", *tests, "tests", *session.posargs, env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check every package and the typed usage files with mypy --strict."""
    session.install("mypy>=1.13", *TEST_DEPS)
    session.install(*_local(session, *PACKAGES))
    session.run("mypy", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run the demo: a 4-rank job under `timer-watchdog run`; rank 1 hangs, the report names it."""
    session.install(*_local(session, *PACKAGES))
    session.run("python", "examples/demo.py", *session.posargs)


# Releases: each package built, checked and installed on its own; workflow files checked.

RELEASE_TOOLS = ["hatch>=1.13", "twine>=6.1", "packaging>=24", "tomli>=2; python_version < '3.11'"]
#: The four wheels together must weigh less than this many bytes.
WHEELS_MAX_BYTES = 200_000
#: The only distributions from outside this repository a package may pull in at run time.
RUNTIME_DEPS = {"msgspec"}
#: What installing timer-file's wheel alone must add to an empty venv.
TIMER_FILE_CLOSURE = {"timer-file", "timer-api", "timer-watchdog", "msgspec"}


@nox.session(python="3.12")
def build(session: nox.Session) -> None:
    """Build each package on its own, then install each wheel alone and import its shipped tests.

    ``scripts/release.py check-all`` checks versions and sibling lower bounds; each
    package's sdist and wheel are built with hatch, pass ``twine check --strict`` and
    their content checks, and the four wheels must weigh under 200 KB together. Then,
    per package, a fresh venv gets ONLY that wheel (siblings from the built wheels and
    msgspec from one downloaded wheel, with --no-index): it must add exactly the package,
    its declared siblings and msgspec to the venv's baseline, import from site-packages,
    and collect (import) the tests shipped in its sdist, from a temporary directory with
    the root pytest settings. One Python is enough here: the ``tests`` sessions run every
    package's suite, installed as a wheel built by the same backend, on each Python.
    """
    import shutil

    session.install(*RELEASE_TOOLS, "pip", "uv>=0.5")
    session.run("python", "scripts/release.py", "check-all")  # >= lower bounds, one version source
    work = Path(session.create_tmp()).resolve() / "build"
    shutil.rmtree(work, ignore_errors=True)
    (work / "wheelhouse").mkdir(parents=True)
    built: dict[str, tuple[Path, Path]] = {}
    for package in PACKAGES:
        out = work / "dist" / package
        session.run("python", "scripts/release.py", "build", package, "--out", str(out))
        wheel = Path(shutil.copy2(next(out.glob("*.whl")), work / "wheelhouse"))
        built[package] = (next(out.glob("*.tar.gz")), wheel)
    total = sum(wheel.stat().st_size for _, wheel in built.values())
    session.log(f"the four wheels weigh {total} bytes together (limit {WHEELS_MAX_BYTES})")
    if total >= WHEELS_MAX_BYTES:
        session.error(f"the four wheels weigh {total} bytes, not under {WHEELS_MAX_BYTES}")
    fetch = ["python", "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps"]
    session.run(*fetch, "-d", str(work / "deps"), *sorted(RUNTIME_DEPS))
    for package, (sdist, wheel) in built.items():
        added = _install_alone(session, work, package, wheel)
        expected = {package, *PACKAGES[package], *RUNTIME_DEPS}
        if added != expected or (package == "timer-file" and added != TIMER_FILE_CLOSURE):
            session.error(f"{wheel.name} alone installed {sorted(added)}, not {sorted(expected)}")
        _test_installed(session, work, package, sdist)


def _install_alone(session: nox.Session, work: Path, package: str, wheel: Path) -> set[str]:
    """Install ``wheel`` alone in a new venv, with no index; return the distributions it added."""
    venv = work / "venvs" / package
    uv = str(Path(session.bin) / "uv")
    python = str(Path(session.bin) / "python")
    _in_venv(session, venv, uv, "venv", "-q", "--python", python, str(venv), cwd=work)
    baseline = _installed(session, venv, work)
    links = ["--find-links", str(work / "wheelhouse"), "--find-links", str(work / "deps")]
    _uv_install(session, venv, "--no-index", *links, str(wheel), cwd=work)
    module = package.replace("-", "_")
    probe = f"import sys, {module} as m; assert m.__file__.startswith(sys.prefix), m.__file__"
    _in_venv(session, venv, str(venv / "bin" / "python"), "-I", "-c", probe, cwd=work)
    return _installed(session, venv, work) - baseline


def _test_installed(session: nox.Session, work: Path, package: str, sdist: Path) -> None:
    """Import every test shipped in ``sdist`` against the package installed in its venv.

    Collecting them imports each test module, and with it every module of the package
    they use, from site-packages: a module or file the wheel lacks fails here. The tests
    themselves run in the ``tests`` sessions, which install each package as a wheel built
    by the same backend (hatchling), on every Python.
    """
    import shutil
    import tarfile

    venv, run_dir = work / "venvs" / package, work / "run" / package
    # The test tools come from the index: they are not under test. Collecting starts one
    # process: compiling their bytecode first would cost more than it saves.
    _uv_install(session, venv, *TEST_DEPS, cwd=work, compile_bytecode=False)
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extraction_filter = tarfile.data_filter
        tar.extractall(work / "sdists")
    shutil.copytree(
        work / "sdists" / sdist.name.removesuffix(".tar.gz") / "tests", run_dir / "tests"
    )
    pytest = [str(venv / "bin" / "pytest"), "-c", str(ROOT / "pyproject.toml"), "--rootdir", "."]
    _in_venv(
        session,
        venv,
        *pytest,
        "-p",
        "no:cacheprovider",
        "--collect-only",
        "--quiet",
        "tests",
        *session.posargs,
        cwd=run_dir,
    )


def _uv_install(
    session: nox.Session, venv: Path, *args: str, cwd: Path, compile_bytecode: bool = True
) -> None:
    """Install ``args`` into ``venv`` with the session's uv."""
    uv = str(Path(session.bin) / "uv")
    install = [uv, "pip", "install", "-q", "--python", str(venv), *args]
    _in_venv(session, venv, *install, cwd=cwd, UV_COMPILE_BYTECODE=str(int(compile_bytecode)))


def _in_venv(
    session: nox.Session, venv: Path, *args: str, cwd: Path, quiet: bool = False, **env_vars: str
) -> str:
    """Run ``args`` with ``venv`` first on PATH, ``env_vars`` set and no PYTHONPATH; fail on error."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    env.update(env_vars)
    session.log(" ".join(args))
    done = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=quiet, check=False)
    if done.returncode:
        session.error(f"exit {done.returncode}: {' '.join(args)}\n{done.stdout}{done.stderr}")
    return done.stdout or ""


def _installed(session: nox.Session, venv: Path, cwd: Path) -> set[str]:
    """Return the normalized names of the distributions installed in ``venv``."""
    code = "import importlib.metadata as m; print(*{d.metadata['Name'] for d in m.distributions()})"
    names = _in_venv(
        session, venv, str(venv / "bin" / "python"), "-I", "-c", code, cwd=cwd, quiet=True
    )
    return {name.lower().replace("_", "-").replace(".", "-") for name in names.split()}


@nox.session(default=False)
def release(session: nox.Session) -> None:
    """Prepare ONE package's release: ``nox -s release -- timer-api [--tag timer-api-v0.1.0]``.

    Checks its version, CHANGELOG entry, sibling lower bounds and (with --tag) the tag, then
    builds its sdist and wheel into dist/<package>/ with hatch and runs twine check.
    """
    if not session.posargs or session.posargs[0] not in PACKAGES:
        session.error(f"name one package: nox -s release -- {'|'.join(PACKAGES)} [--tag TAG]")
    session.install(*RELEASE_TOOLS)
    session.run("python", "scripts/release.py", "prepare", *session.posargs)


@nox.session
def workflows(session: nox.Session) -> None:
    """Validate .github/workflows/*.yml against GitHub's workflow schema and this noxfile."""
    session.install("check-jsonschema>=0.29", "pyyaml>=6")
    files = sorted(str(path) for path in (ROOT / ".github" / "workflows").glob("*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *files)
    session.run("python", "scripts/check_workflows.py", "--pythons", *PYTHONS, "--", *files)


@nox.session(python="3.11", venv_backend="venv", default=False)
def interop(session: nox.Session) -> None:
    """Prove wire compatibility with torch 2.13's file timer, both ways, with real processes."""
    session.install("torch==2.13.0", *TEST_DEPS)  # pip takes torch from the local wheel
    session.install(*_local(session, "timer-api", "timer-watchdog", "timer-file"))
    session.run("pytest", "tests/interop", *session.posargs)


@nox.session(python="3.11", venv_backend="venv", default=False)
def bench(session: nox.Session) -> None:
    """Benchmark ours against torch 2.13 side by side; write docs/benchmarks/ (about 6 min)."""
    session.install(*_local(session, *PACKAGES), "matplotlib>=3.8")
    try:  # pip takes torch from the local CPU wheel; without it ours is measured alone
        session.run_install("python", "-m", "pip", "install", "torch==2.13.0")
    except nox.command.CommandFailed:
        session.warn("torch==2.13.0 could not be installed: benchmarking ours alone")
    session.run("python", "-m", "bench.run", *session.posargs)
