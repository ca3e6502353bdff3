"""Run one measurement in a fresh interpreter and bring its JSON result back.

Every sample that could be disturbed by what another measurement imported or
allocated runs in its own process: ``python bench/_main.py X '<json>'`` runs
``bench.X.main()`` with the parameters as one JSON argument, from the repository
root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "ChildError", "child_main", "emit", "read_params", "run_child"]

ROOT = Path(__file__).resolve().parent.parent
_MARK = "BENCH-RESULT "


class ChildError(RuntimeError):
    """Raise when a measurement process fails; the message holds the end of its stderr."""


def run_child(module: str, params: dict[str, Any], timeout: float = 180.0) -> dict[str, Any]:
    """Run ``bench.<module>.main`` in a fresh interpreter with ``params``; return its result."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "_main.py"), module, json.dumps(params)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"bench.{module} {params} timed out after {timeout:.0f}s") from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            result: dict[str, Any] = json.loads(line[len(_MARK) :])
            if "error" in result:
                raise ChildError(f"bench.{module}: {result['error']}")
            return result
    tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
    raise ChildError(f"bench.{module} {params} exited {proc.returncode}: {tail}")


def read_params() -> dict[str, Any]:
    """Return this measurement process's JSON parameters."""
    params: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    return params


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` where :func:`run_child` looks for it."""
    sys.stdout.write(_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def child_main(measure: Callable[..., dict[str, Any]]) -> None:
    """Call ``measure(**params)`` with this process's JSON parameters and print the result."""
    try:
        result = measure(**read_params())
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    emit(result)
