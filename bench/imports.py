"""Workload 1: what importing the client costs a worker, each import in a fresh process.

Each case is ``<interpreter> -c "<import>"``, timed from spawn to exit and sized by
its peak RSS (``VmHWM``, which the process prints as it ends). The interpreter is
this process's own (the bench environment's, never a shell shim). Cases run
interleaved, round after round, so that load on the machine hits all alike; the
figures are each case minus a bare interpreter start (``-c pass``) of the same
round.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from bench._report import Figure
from bench._stats import summarise

__all__ = ["CASES", "figures", "measure"]

#: Case name -> the code run by ``python -c``.
CASES = {
    "bare": "pass",
    "ours_file": "import timer_api, timer_file",
    "ours_mp": "import timer_api, timer_queue_mp",
    "torch": "import torch.distributed.elastic.timer",
}


#: Appended to every case: print the process's own peak RSS (VmHWM). The kernel's
#: ``ru_maxrss`` of a child also counts the parent's size at fork, so it is not used.
_PEAK = (
    "\nwith open('/proc/self/status') as f:"
    "\n    print(next(line for line in f if line.startswith('VmHWM')).split()[1])"
)


def _run_once(code: str) -> tuple[float, int]:
    """Run ``python -c code``; return (seconds from spawn to exit, peak RSS in bytes)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + _PEAK], capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"python -c {code!r} failed: {proc.stderr.decode(errors='replace')[-300:]}"
        )
    return elapsed, int(proc.stdout.split()[-1]) * 1024


def measure(cases: list[str], runs: int, torch_every: int = 2) -> dict[str, Any]:
    """Time ``runs`` rounds of ``cases`` (torch only every ``torch_every``-th round).

    Returns, per case, the per-round differences to the same round's bare start:
    ``{"time": {case: [s, ...]}, "rss": {case: [bytes, ...]}, "bare": {...}, "errors": {...}}``.
    A case that fails is recorded in ``errors`` and dropped.
    """
    errors: dict[str, str] = {}
    for case in cases:  # warm-up: compile bytecode, fill the page cache
        try:
            _run_once(CASES[case])
        except RuntimeError as exc:
            errors[case] = str(exc)
    live = [case for case in cases if case != "bare" and case not in errors]
    times: dict[str, list[float]] = {case: [] for case in live}
    rss: dict[str, list[float]] = {case: [] for case in live}
    bare_time: list[float] = []
    bare_rss: list[float] = []
    for i in range(runs):
        base_t, base_rss = _run_once(CASES["bare"])
        bare_time.append(base_t)
        bare_rss.append(base_rss)
        for case in live:
            if case == "torch" and i % torch_every:
                continue
            t, r = _run_once(CASES[case])
            times[case].append(t - base_t)
            rss[case].append(r - base_rss)
    return {
        "time": times,
        "rss": rss,
        "bare": {"time": bare_time, "rss": bare_rss},
        "errors": errors,
        "interpreter": sys.executable,
    }


def figures(impls: list[str], cfg: dict[str, Any]) -> tuple[list[Figure], dict[str, Any]]:
    """Run the import rounds in this process's children; return the figures and raw samples."""
    cases = ["bare", "ours_file", "ours_mp", *(["torch"] if "torch" in impls else [])]
    print(f"  imports {cases} x {cfg['runs']} ...", file=sys.stderr, flush=True)
    raw = measure(cases, cfg["runs"], cfg["torch_every"])
    out = []
    for transport, case in (("timer_file", "ours_file"), ("timer_queue_mp", "ours_mp")):
        errors = {
            ("ours" if name.startswith("ours") else "torch"): error
            for name, error in raw["errors"].items()
            if name in (case, "torch")
        }
        for kind, unit, scale, target in (("time", "ms", 1e3, 40.0), ("rss", "MiB", 2**-20, None)):
            ours = raw[kind].get(case)
            torch = raw[kind].get("torch")
            out.append(
                Figure(
                    key=f"import_{kind}_{transport}",
                    workload=1,
                    title=(
                        f"worker import of timer_api + {transport}, "
                        + ("time" if kind == "time" else "peak RSS")
                        + " over a bare start"
                    ),
                    unit=unit,
                    better="lower",
                    ours=summarise(v * scale for v in ours) if ours else None,
                    torch=summarise(v * scale for v in torch) if torch else None,
                    target=target,
                    errors=errors,
                )
            )
    bare = summarise(t * 1e3 for t in raw["bare"]["time"])
    out[0].note = (
        "torch: `import torch.distributed.elastic.timer`; each case in a fresh process, "
        f"minus a bare start (`{raw['interpreter']} -c pass`, median {bare.median:.1f} ms) "
        "of the same round"
    )
    return out, raw
