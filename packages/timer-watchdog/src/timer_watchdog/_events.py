"""What the engine reports: typed events, their JSON-lines codec, and cumulative counters.

Every event has ``event`` (its tag) and ``time`` (the server's wall clock when it
happened). ``late`` is always seconds past the earliest expired deadline of the
worker, measured when the event happened.
"""

from __future__ import annotations

import msgspec

from timer_api import RejectReason

__all__ = [
    "Armed",
    "ClockSkew",
    "Event",
    "Exited",
    "Expired",
    "Frame",
    "JobSnapshot",
    "LoopHealth",
    "ProcessSnapshot",
    "Reaped",
    "Rejected",
    "Released",
    "Signalled",
    "ThreadStack",
    "Unkillable",
    "WatchdogStats",
    "decode_event",
    "encode_event",
]


class Frame(msgspec.Struct, frozen=True):
    """Name one Python frame: where the thread that armed an expired timer was stuck."""

    file: str
    line: int
    function: str


class _Event(msgspec.Struct, frozen=True, tag_field="event"):
    time: float

    @property
    def event(self) -> str:
        """Return the event's tag: ``armed``, ``reaped``, ..."""
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class Armed(_Event, frozen=True, kw_only=True, tag="armed"):
    """A timer was armed or re-armed; ``expires_in`` is seconds to its deadline on receipt.

    ``signal`` is the one the request asks for (``None``: the server's choice; 0 or
    less: observe only).
    """

    pid: int
    scope_id: str
    expires_in: float
    signal: int | None = None
    thread_id: int | None = None


class Released(_Event, frozen=True, kw_only=True, tag="released"):
    """A timer was released before it expired."""

    pid: int
    scope_id: str


class Expired(_Event, frozen=True, kw_only=True, tag="expired"):
    """A timer of a live worker reached its deadline; ``signal`` is the one it asked for.

    ``signal`` as in :class:`Armed`; ``action`` is what the server does about it: the
    signal it sends (or already sends) the worker, or 0 when it only reports the
    expiry (observe only: the request's, the policy's, or the server's own process).
    """

    pid: int
    scope_id: str
    late: float
    expiration_time: float
    signal: int | None = None
    thread_id: int | None = None
    action: int = 0


class Signalled(_Event, frozen=True, kw_only=True, tag="signalled"):
    """The server sent ``signal`` to a worker; ``detail`` says why (first, escalation, retry, notify).

    ``held`` is how long the first signal waited for the job snapshot (see
    :class:`JobSnapshot`), in seconds; 0 for every other signal.
    """

    pid: int
    scope_id: str
    signal: int
    late: float
    detail: str
    held: float = 0.0


class Reaped(_Event, frozen=True, kw_only=True, tag="reaped"):
    """A signalled worker is confirmed dead; ``signal`` is the last one it was sent.

    ``stack_path`` is its stack dump (if one was written) and ``frame`` the innermost
    frame of the thread that armed the expired timer (if the dump shows it).
    """

    pid: int
    scope_id: str
    signal: int
    late: float
    detail: str = ""
    stack_path: str | None = None
    frame: Frame | None = None


class Unkillable(_Event, frozen=True, kw_only=True, tag="unkillable"):
    """A worker is still alive ``kill_timeout`` after its final signal; ``state`` is from /proc."""

    pid: int
    scope_id: str
    signal: int
    late: float
    state: str
    detail: str = ""


class Rejected(_Event, frozen=True, kw_only=True, tag="rejected"):
    """A request was refused; the other requests of its batch are unaffected."""

    reason: RejectReason
    detail: str
    pid: int | None = None
    scope_id: str | None = None


class Exited(_Event, frozen=True, kw_only=True, tag="exited"):
    """A worker exited while holding ``timers`` timers; they were dropped, nothing was signalled."""

    pid: int
    timers: int
    detail: str = ""


class ClockSkew(_Event, frozen=True, kw_only=True, tag="clock_skew"):
    """A request's monotonic ``deadline`` disagreed with its ``expiration_time``; the latter was used.

    ``skew`` is the request's monotonic deadline minus the one the server derived from
    the wall-clock ``expiration_time`` (a worker in another time namespace, with an
    offset monotonic clock, sends a large one).
    """

    pid: int
    scope_id: str
    skew: float


class ThreadStack(msgspec.Struct, frozen=True, kw_only=True):
    """One thread's Python stack: ``ident`` (``threading.get_ident()``, if known), innermost frame first."""

    ident: int | None = None
    name: str | None = None
    frames: list[Frame] = []


class ProcessSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Where one process of the job was when the first timer expired.

    Fields:
        pid, ppid: the process and its parent.
        command: its name (``/proc/<pid>/comm``).
        worker: it is known to the server (it armed a timer).
        labels: rank labels (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...) from
            ``/proc/<pid>/environ``: the environment the process was started with.
        state: the /proc state letter (``R``, ``S``, ``D``, ``T``, ...), ``?`` if unreadable.
        wchan: the kernel function it waits in (``/proc/<pid>/wchan``), if shown.
        threads: the Python stack of every thread, if one was obtained.
        source: where the stacks come from: ``handler`` (the worker's own dump
            handler) or ``py-spy``; ``None``: no stack.
        reason: why there is no stack (``None`` when there is one).
        kernel_stack: for a process in D state, ``/proc/<pid>/stack`` if readable.
        took: seconds its capture took (the budget, when it did not answer).
        answered: ``False`` when its capture was still under way when the budget ran out.
        expired: its timer had expired when the snapshot was taken.
    """

    pid: int
    ppid: int | None = None
    command: str = ""
    worker: bool = False
    labels: dict[str, str] = {}
    state: str = "?"
    wchan: str | None = None
    threads: list[ThreadStack] = []
    source: str | None = None
    reason: str | None = None
    kernel_stack: list[str] | None = None
    took: float = 0.0
    answered: bool = True
    expired: bool = False


class JobSnapshot(_Event, frozen=True, kw_only=True, tag="snapshot"):
    """Every live process of the job, captured at the first expiry before any signal.

    ``culprit`` is the worker whose timer expired first (``scope_id`` its timer,
    ``expiration_time`` its wall-clock deadline); ``budget`` the longest the capture
    may hold the first signal, ``seconds`` how long it did; ``host`` the host name.
    """

    host: str
    culprit: int | None
    scope_id: str | None
    expiration_time: float | None
    budget: float
    seconds: float
    processes: list[ProcessSnapshot]


Event = (
    Armed
    | Released
    | Expired
    | Signalled
    | Reaped
    | Unkillable
    | Rejected
    | Exited
    | ClockSkew
    | JobSnapshot
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode ``event`` as one JSON object followed by a newline."""
    return _encoder.encode(event) + b"\n"


def decode_event(line: bytes | str) -> Event:
    """Decode one line written by :func:`encode_event`; raise ``msgspec.DecodeError`` if it is not one."""
    event: Event = _decoder.decode(line)
    return event


class WatchdogStats(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative counters of one server, plus what it holds now (``timers``, ``workers``, ``reaping``).

    Fields:
        received: requests handed to the server, valid or not.
        armed: timers armed or re-armed.
        released: timers released before they expired.
        rejected: requests refused (see the ``rejected`` events for why).
        expired: timers that reached their deadline while their worker was alive.
        signalled: signals sent to workers (stack-dump requests not included).
        reaped: workers confirmed dead after a signal.
        unkillable: times a worker was reported alive after its final signal.
        exited: workers found gone while holding timers.
        clock_skew: requests whose monotonic deadline was replaced by the wall-clock one
            (see the ``clock_skew`` events).
        late: arm requests that arrived after their worker had exited (or was reaped):
            sent while it lived, dropped without a rejection, as nothing is left to watch.
        loops: engine loop rounds completed.
        timers: timers held now (armed, or expired and being reaped).
        workers: workers known now.
        reaping: workers being reaped now.
    """

    received: int = 0
    armed: int = 0
    released: int = 0
    rejected: int = 0
    expired: int = 0
    signalled: int = 0
    reaped: int = 0
    unkillable: int = 0
    exited: int = 0
    clock_skew: int = 0
    late: int = 0
    loops: int = 0
    timers: int = 0
    workers: int = 0
    reaping: int = 0


class LoopHealth(msgspec.Struct, frozen=True, kw_only=True):
    """Say whether the engine's loop is alive and making progress.

    Fields:
        running: the loop thread is alive.
        busy_for: seconds the current round has been processing; 0.0 while the loop
            waits for requests.
        loops: engine loop rounds completed.
    """

    running: bool
    busy_for: float
    loops: int
