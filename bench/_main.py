"""Entry script of a measurement process: ``python bench/_main.py <workload> '<json params>'``.

A real file rather than ``python -c`` so that every frame on the stack names a
source file, as in a worker started from a script (``inspect``-based code pays
extra for frames without one). The top level is stack depth 1, the workload's
``main`` depth 2.
"""

import importlib
import os
import sys

if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    importlib.import_module(f"bench.{sys.argv[1]}").main()
