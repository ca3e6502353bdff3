"""The benchmark suite: every figure of ours side by side with torch 2.13, in one run.

Run it with ``nox -s bench`` (or ``python -m bench.run`` in an environment that has
our four packages, matplotlib and, optionally, torch 2.13). One module per
workload (``expires_cost``, ``imports``, ``client_rate``, ``ingest``, ``reap``,
``idle``, ``memory``); each measures one implementation per fresh process.
"""
