"""Check, build and inspect one package's release for the build and release sessions.

Usage (hatch, twine and packaging must be importable/on PATH; ``nox -s release`` sets that up)::

    python scripts/release.py check timer-api [--tag timer-api-v0.1.0]
    python scripts/release.py check-all                    # every package, no CHANGELOG/tag
    python scripts/release.py build timer-api [--out DIR]
    python scripts/release.py prepare timer-api [--tag timer-api-v0.1.0]
    python scripts/release.py tag-info timer-api-v0.1.0     # prints package=... and version=...

``check`` verifies that the version lives in one place, the CHANGELOG has a ``## X.Y.Z`` entry
with content, sibling requirements are ``>=`` lower bounds the current siblings satisfy, the only
outside runtime dependency is msgspec, docs/releasing.md quotes each requirement, and (with
``--tag``) that the tag names this package and version. ``build`` builds the sdist and wheel
with hatch into an emptied directory, runs ``twine check --strict`` and checks that the sdist
carries the tests and the LICENSE and the wheel carries ``py.typed`` and the license.
``prepare`` does both. Every failure exits non-zero with one line per problem.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox sessions that call this run on 3.11+ or install tomli
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_DIR = ROOT / "packages"
#: Distributions outside this repository that a package may require at run time.
ALLOWED_EXTERNAL = frozenset({"msgspec"})
#: Operators a sibling requirement may use: a lower bound, optionally an exclusion or a cap.
ALLOWED_SIBLING_OPERATORS = frozenset({">=", "<", "!="})
TAG_RE = re.compile(r"^(?P<package>timer-[a-z0-9-]+?)-v(?P<version>\d[0-9A-Za-z.+-]*)$")
VERSION_RE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']\s*$""", re.MULTILINE)
#: Environment variables of an enclosing venv/nox session that must not reach hatch.
_FOREIGN_ENV = frozenset({"VIRTUAL_ENV", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH"})
#: Files and directories that never belong in an sdist's test tree.
_JUNK = ("__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache")


class ReleaseError(Exception):
    """Report every problem found in one step, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def packages() -> list[str]:
    """Return the names of the packages in this repository."""
    return sorted(p.parent.name for p in PACKAGES_DIR.glob("*/pyproject.toml"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _module(package: str) -> str:
    return package.replace("-", "_")


def pyproject(package: str) -> dict[str, Any]:
    """Return the parsed ``pyproject.toml`` of ``package``."""
    with (PACKAGES_DIR / package / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def version(package: str) -> str:
    """Return the version written in the package's one ``__about__.py``."""
    about = PACKAGES_DIR / package / "src" / _module(package) / "__about__.py"
    match = VERSION_RE.search(about.read_text(encoding="utf-8"))
    if match is None:
        raise ReleaseError([f"{about}: no __version__ = '...' line"])
    return match.group(1)


def check_version_source(package: str) -> list[str]:
    """Check that the version is dynamic and read by hatch from ``__about__.py`` only."""
    data = pyproject(package)
    problems = []
    project = data.get("project", {})
    if "version" in project:
        problems.append(f"{package}: pyproject.toml sets project.version; keep it in __about__.py")
    if "version" not in project.get("dynamic", []):
        problems.append(f"{package}: pyproject.toml must list 'version' in project.dynamic")
    expected = f"src/{_module(package)}/__about__.py"
    got = data.get("tool", {}).get("hatch", {}).get("version", {}).get("path")
    if got != expected:
        problems.append(f"{package}: tool.hatch.version.path is {got!r}, expected {expected!r}")
    try:
        from packaging.version import InvalidVersion, Version

        Version(version(package))
    except InvalidVersion:
        problems.append(f"{package}: version {version(package)!r} is not a PEP 440 version")
    return problems


def check_changelog(package: str, ver: str) -> list[str]:
    """Check that the CHANGELOG has a ``## X.Y.Z`` heading for ``ver`` followed by content."""
    path = PACKAGES_DIR / package / "CHANGELOG.md"
    if not path.is_file():
        return [f"{package}: {path.name} is missing"]
    heading = re.compile(rf"^## \[?{re.escape(ver)}\]?(\s.*)?$")
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if heading.match(line):
            body = []
            for following in lines[i + 1 :]:
                if following.startswith("## "):
                    break
                body.append(following)
            if not any(b.strip().startswith(("-", "*")) for b in body):
                return [f"{package}: CHANGELOG entry '## {ver}' lists no change"]
            return []
    return [f"{package}: CHANGELOG.md has no '## {ver}' entry (move 'Unreleased' items under it)"]


def check_requirements(package: str) -> list[str]:
    """Check sibling requirements are lower bounds that today's siblings satisfy, and no others."""
    from packaging.requirements import InvalidRequirement, Requirement

    siblings = {name: version(name) for name in packages()}
    problems = []
    for text in pyproject(package).get("project", {}).get("dependencies", []):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"{package}: bad requirement {text!r}: {exc}")
            continue
        name = _normalize(req.name)
        if name not in siblings:
            if name not in ALLOWED_EXTERNAL:
                problems.append(
                    f"{package}: requires {name}, but the only outside runtime dependency "
                    f"allowed is {', '.join(sorted(ALLOWED_EXTERNAL))}"
                )
            continue
        operators = {spec.operator for spec in req.specifier}
        if ">=" not in operators or not operators <= ALLOWED_SIBLING_OPERATORS:
            problems.append(
                f"{package}: requirement {text!r} must be a '>=' lower bound "
                f"(operators allowed: {', '.join(sorted(ALLOWED_SIBLING_OPERATORS))})"
            )
        if not req.specifier.contains(siblings[name], prereleases=True):
            problems.append(
                f"{package}: requirement {text!r} excludes the current {name} {siblings[name]}"
            )
    return problems


def check_docs(package: str) -> list[str]:
    """Check that docs/releasing.md quotes each of the package's requirements as declared."""
    path = ROOT / "docs" / "releasing.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return [
        f"{package}: docs/releasing.md does not quote its requirement `{req}`"
        for req in pyproject(package).get("project", {}).get("dependencies", [])
        if f"`{req}`" not in text
    ]


def check_all() -> None:
    """Check every package's version source, requirements and their documentation."""
    problems = []
    for package in packages():
        problems += check_version_source(package) + check_requirements(package)
        problems += check_docs(package)
    if problems:
        raise ReleaseError(problems)


def parse_tag(tag: str) -> tuple[str, str]:
    """Split ``timer-api-v0.1.0`` into ``("timer-api", "0.1.0")``, or raise ReleaseError."""
    match = TAG_RE.match(tag)
    if match is None or match.group("package") not in packages():
        raise ReleaseError(
            [f"tag {tag!r} is not <package>-v<version> for one of: {', '.join(packages())}"]
        )
    return match.group("package"), match.group("version")


def check(package: str, tag: str | None = None) -> str:
    """Run every pre-build check of ``package``; return its version."""
    if package not in packages():
        raise ReleaseError([f"unknown package {package!r}; choose one of: {', '.join(packages())}"])
    ver = version(package)
    problems = check_version_source(package)
    problems += check_changelog(package, ver)
    problems += check_requirements(package) + check_docs(package)
    if tag is not None:
        try:
            tag_package, tag_version = parse_tag(tag)
        except ReleaseError as exc:
            problems += exc.problems
        else:
            if (tag_package, tag_version) != (package, ver):
                problems.append(
                    f"tag {tag!r} does not match {package} {ver} (expected {package}-v{ver})"
                )
    if problems:
        raise ReleaseError(problems)
    return ver


def _tracked_tests(package: str) -> set[str]:
    base = PACKAGES_DIR / package
    return {
        str(p.relative_to(base).as_posix())
        for p in (base / "tests").rglob("*")
        if p.is_file() and not any(part in _JUNK for part in p.parts) and p.suffix != ".pyc"
    }


def check_sdist(sdist: Path, package: str) -> list[str]:
    """Check that ``sdist`` carries LICENSE, pyproject, README, CHANGELOG and every test file."""
    with tarfile.open(sdist) as tar:
        names = set()
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.isfile() and len(parts) > 1:
                names.add(str(PurePosixPath(*parts[1:])))
    required = {"LICENSE", "pyproject.toml", "README.md", "CHANGELOG.md", "PKG-INFO"}
    required |= _tracked_tests(package)
    problems = [f"{sdist.name}: missing {name}" for name in sorted(required - names)]
    if not any(PurePosixPath(n).match("tests/test_*.py") for n in names):
        problems.append(f"{sdist.name}: carries no tests/test_*.py")
    if any(part in _JUNK for n in names for part in PurePosixPath(n).parts):
        problems.append(f"{sdist.name}: carries cache files")
    return problems


def check_wheel(wheel: Path, package: str, ver: str) -> list[str]:
    """Check that ``wheel`` carries the package, its ``py.typed`` marker and the license."""
    module = _module(package)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    dist_info = f"{module}-{ver}.dist-info"
    problems = [
        f"{wheel.name}: missing {name}"
        for name in (f"{module}/__init__.py", f"{module}/py.typed", f"{dist_info}/METADATA")
        if name not in names
    ]
    if not any(n.startswith(f"{dist_info}/licenses/") for n in names):
        problems.append(f"{wheel.name}: carries no license file")
    strays = sorted({n.split("/")[0] for n in names} - {module, dist_info})
    if strays:
        problems.append(f"{wheel.name}: unexpected top-level entries {strays}")
    return problems


def build(package: str, out: Path | None = None) -> tuple[Path, Path]:
    """Build ``package``'s sdist and wheel into an emptied ``out``, twine-check and inspect them."""
    ver = version(package)
    out = (out or ROOT / "dist" / package).resolve()
    if out.is_dir() and any(not p.name.endswith((".whl", ".tar.gz")) for p in out.iterdir()):
        raise ReleaseError([f"{out} holds more than built distributions; not emptying it"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="hatch-data-") as data:
        # A private, throwaway hatch data dir: no build env shared with concurrent builds of
        # the same project. nox's UV_PYTHON would make hatch's uv install into nox's venv.
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        env["HATCH_DATA_DIR"] = data
        cmd = ["hatch", "build", "-t", "sdist", "-t", "wheel", str(out)]
        _run(cmd, cwd=PACKAGES_DIR / package, env=env)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise ReleaseError([f"{package}: expected one sdist and one wheel in {out}"])
    sdist, wheel = sdists[0], wheels[0]
    if not wheel.name.startswith(f"{_module(package)}-{ver}-"):
        raise ReleaseError([f"{wheel.name}: built version differs from __about__.py's {ver}"])
    _run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    problems = check_sdist(sdist, package) + check_wheel(wheel, package, ver)
    if problems:
        raise ReleaseError(problems)
    return sdist, wheel


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=cwd, env=env, check=False).returncode != 0:
        raise ReleaseError([f"command failed: {' '.join(cmd)}"])


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "prepare"):
        p = sub.add_parser(name)
        p.add_argument("package")
        p.add_argument("--tag", help="the git tag to be released, e.g. timer-api-v0.1.0")
    sub.add_parser("check-all")
    p = sub.add_parser("build")
    p.add_argument("package")
    p.add_argument("--out", type=Path, help="output directory (emptied); default dist/<package>")
    p = sub.add_parser("tag-info")
    p.add_argument("tag")
    args = parser.parse_args(argv)
    try:
        if args.command == "tag-info":
            package, ver = parse_tag(args.tag)
            print(f"package={package}\nversion={ver}")
        elif args.command == "check-all":
            check_all()
            print(f"{', '.join(packages())}: versions and requirements are consistent")
        elif args.command == "check":
            ver = check(args.package, args.tag)
            print(f"{args.package} {ver}: ready to build")
        elif args.command == "build":
            for path in build(args.package, args.out):
                print(f"built {path} ({path.stat().st_size} bytes)")
        else:
            ver = check(args.package, args.tag)
            sdist, wheel = build(args.package)
            print(f"\n{args.package} {ver} is ready:\n  {sdist}\n  {wheel}")
            print(
                f"Release it with: git tag {args.package}-v{ver} && git push origin "
                f"{args.package}-v{ver}"
            )
    except ReleaseError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
