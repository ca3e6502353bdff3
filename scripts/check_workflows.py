"""Check that the GitHub workflows agree with this repository; the ``workflows`` nox session runs it.

The JSON schema (check-jsonschema) proves a workflow is well formed; this proves it does what
the project needs, so that a typo fails in ``nox`` rather than on release day::

    python scripts/check_workflows.py --pythons 3.10 3.11 3.12 3.13 -- .github/workflows/*.yml

ci.yml must run on pushes and pull requests, test every Python of the noxfile with
actions/setup-python (no pyenv) and run nox; release.yml must run on ``timer-*-v*`` tags only,
name the package from the tag with ``scripts/release.py tag-info``, build it with
``nox -s release``, and publish it through PyPI trusted publishing (``id-token: write`` on the
publishing job alone, one environment per package). Every ``uses:`` must name a version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

TAG_PATTERN = "timer-*-v*"
PUBLISH_ACTION = "pypa/gh-action-pypi-publish@"


def _triggers(doc: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key ``on`` as the boolean True.
    on = doc.get("on", doc.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on if isinstance(on, dict) else {}


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps = job.get("steps", [])
    return [step for step in steps if isinstance(step, dict)] if isinstance(steps, list) else []


def _runs(doc: dict[str, Any]) -> str:
    return "\n".join(
        str(step.get("run", "")) for job in doc["jobs"].values() for step in _steps(job)
    )


def check_common(name: str, doc: dict[Any, Any]) -> list[str]:
    """Check what every workflow needs: triggers, jobs, and versioned actions."""
    problems = []
    if not _triggers(doc):
        problems.append(f"{name}: no 'on:' triggers")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return [*problems, f"{name}: no jobs"]
    for job_id, job in jobs.items():
        for step in _steps(job):
            uses = step.get("uses")
            if uses is not None and "@" not in str(uses):
                problems.append(f"{name}: job {job_id}: 'uses: {uses}' names no version")
    return problems


def check_ci(name: str, doc: dict[Any, Any], pythons: list[str]) -> list[str]:
    """Check ci.yml: pushes and pull requests, every Python via setup-python, nox."""
    problems = []
    triggers = _triggers(doc)
    problems += [f"{name}: not run on {t}" for t in ("push", "pull_request") if t not in triggers]
    matrices = [
        [str(version) for version in job["strategy"]["matrix"]["python"]]
        for job in doc["jobs"].values()
        if isinstance(job.get("strategy", {}).get("matrix", {}).get("python"), list)
    ]
    if pythons not in matrices:
        problems.append(f"{name}: a job's strategy.matrix.python must be exactly {pythons}")
    uses = [str(s.get("uses", "")) for job in doc["jobs"].values() for s in _steps(job)]
    if not any(u.startswith("actions/setup-python@") for u in uses):
        problems.append(f"{name}: Python must come from actions/setup-python")
    runs = _runs(doc)
    if "pyenv" in runs:
        problems.append(f"{name}: must not use pyenv")
    if "nox" not in runs:
        problems.append(f"{name}: never runs nox")
    return problems


def check_release(name: str, doc: dict[Any, Any]) -> list[str]:
    """Check release.yml: tag trigger, one package built by nox, trusted publishing."""
    problems = []
    triggers = _triggers(doc)
    push = triggers.get("push") or {}
    if set(triggers) != {"push"} or push.get("tags") != [TAG_PATTERN] or "branches" in push:
        problems.append(f"{name}: must run on pushed tags {TAG_PATTERN!r} only")
    if "id-token" in (doc.get("permissions") or {}):
        problems.append(f"{name}: grant id-token only to the publishing job, not the workflow")
    runs = _runs(doc)
    for needed in ("scripts/release.py tag-info", "nox -s release"):
        if needed not in runs:
            problems.append(f"{name}: never runs '{needed}'")
    publishers = [
        job
        for job in doc["jobs"].values()
        if any(str(s.get("uses", "")).startswith(PUBLISH_ACTION) for s in _steps(job))
    ]
    if len(publishers) != 1:
        return [*problems, f"{name}: exactly one job must use {PUBLISH_ACTION}..."]
    job = publishers[0]
    if (job.get("permissions") or {}).get("id-token") != "write":
        problems.append(f"{name}: the publishing job needs 'permissions: id-token: write'")
    environment = job.get("environment")
    env_name = environment.get("name") if isinstance(environment, dict) else environment
    if not env_name or "package" not in str(env_name):
        problems.append(f"{name}: the publishing job needs an environment named per package")
    if any("password" in (s.get("with") or {}) for s in _steps(job)):
        problems.append(f"{name}: trusted publishing takes no password/API token")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check the workflow files named on the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", nargs="+", required=True, help="the noxfile's PYTHONS")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    problems = []
    names = {path.name for path in args.files}
    problems += [
        f"missing .github/workflows/{n}" for n in sorted({"ci.yml", "release.yml"} - names)
    ]
    for path in args.files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            problems.append(f"{path.name}: not YAML: {exc}")
            continue
        if not isinstance(doc, dict):
            problems.append(f"{path.name}: not a mapping")
            continue
        found = check_common(path.name, doc)
        if not found and path.name == "ci.yml":
            found = check_ci(path.name, doc, args.pythons)
        elif not found and path.name == "release.yml":
            found = check_release(path.name, doc)
        problems += found
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{', '.join(sorted(names))}: consistent with the noxfile and release scheme")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
