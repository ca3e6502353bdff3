"""The body of a worker process in these tests, run with ``runpy.run_path``.

A test starts it as ``Process(target=runpy.run_path, args=(WORKER,), kwargs=...)``
with ``init_globals`` holding ``queue`` (the multiprocessing queue), ``action`` and
``args``; that works under every start method without making the tests importable.
``report``, when given, is a queue that receives what the worker wants to tell.
"""

import os
import sys
import threading
import time

from timer_api import configure, expires
from timer_queue_mp import LocalTimerClient

g = globals()
queue = g["queue"]
action = g["action"]
args = g.get("args", {})
report = g.get("report")
client = LocalTimerClient(queue, signal=args.get("signal"))
configure(client)


def tell(value):
    if report is not None:
        report.put(value)


if action == "hang":  # overstay a short timer
    with expires(after=args.get("after", 0.3)):
        time.sleep(60)
elif action == "in_time":  # finish well before a long timer
    with expires(after=60):
        time.sleep(0.05)
    tell("done")
    time.sleep(args.get("linger", 0))
elif action == "nested":  # two nested scopes, both released, then hang in an outer one
    with expires(after=60, scope="outer"):
        with expires(after=60, scope="inner"):
            pass
        with expires(after=60):  # noqa: SIM117 - two lines, two default scopes
            with expires(after=60):
                pass
    tell("released")
    with expires(after=args.get("after", 0.3), scope="outer"):
        time.sleep(60)
elif action == "recursive":  # the same scope re-armed by recursion, released at each level

    @expires(after=60)
    def descend(depth):
        if depth:
            descend(depth - 1)

    descend(20)
    tell("released")
    time.sleep(args.get("linger", 0))
elif action == "threads":  # a thread overstays while the main thread's timer is released

    def hang_in_thread():
        with expires(after=args.get("after", 0.3)):
            time.sleep(60)

    with expires(after=60):
        thread = threading.Thread(target=hang_in_thread)
        thread.start()
    thread.join()
elif action == "exit_holding":  # leave with a timer armed, when told to
    client.acquire("held", time.time() + args.get("after", 1.0))
    args["finish"].wait(30)
    os._exit(0)
elif action == "unflushed":  # put requests and exit before the feeder thread may write them
    client.acquire("lost", time.time() + args.get("after", 0.3))
    client.release("lost")
    client.acquire("lost-too", time.time() + args.get("after", 0.3))
    os._exit(0)
elif action == "pairs":  # many arm/release pairs, then wait to be told to exit
    for i in range(args["pairs"]):
        client.acquire(f"scope-{i % 7}", time.time() + 60)
        client.release(f"scope-{i % 7}")
    tell("sent")
    args["finish"].wait(30)
else:
    sys.exit(f"unknown action {action!r}")
