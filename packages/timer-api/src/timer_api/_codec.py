"""Encode and decode requests: JSON lines (torch's FIFO format) and MessagePack.

Every decoder is built once at import and reused. Decoding untrusted input either
returns a :class:`TimerRequest` or raises :class:`InvalidRequestError`; nothing else.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import msgspec

from ._check import rejection
from ._errors import InvalidRequestError, RejectReason
from ._request import TimerRequest

__all__ = [
    "FALLBACK_SIGNAL",
    "MAX_REQUEST_BYTES",
    "LineDecoder",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_json_line",
    "encode_msgpack",
]

#: Largest encoded request accepted, newline included: PIPE_BUF on Linux, so that
#: one ``write()`` of a request to a pipe is atomic.
MAX_REQUEST_BYTES = 4096

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(TimerRequest)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(TimerRequest)

#: The signal written for torch's server when a request leaves the choice to the server:
#: SIGKILL, the default of torch's own client.
FALLBACK_SIGNAL = int(signal.SIGKILL)


def encode_json(request: TimerRequest) -> bytes:
    """Encode ``request`` as one JSON object, without a newline.

    An arm with ``signal=None`` is written as torch's server needs it (``"signal": 9``)
    with ``"signal_is_fallback": true``, which this codec decodes back to ``None``.
    """
    if request.signal is None and request.expiration_time >= 0:
        request = msgspec.structs.replace(request, signal=FALLBACK_SIGNAL, signal_is_fallback=True)
    return _json_encoder.encode(request)


def encode_json_line(request: TimerRequest) -> bytes:
    """Encode ``request`` as one newline-terminated JSON line for a pipe.

    Raises :class:`InvalidRequestError` (``oversize``) when the line would exceed
    :data:`MAX_REQUEST_BYTES`, because a longer write is no longer atomic.
    """
    line = encode_json(request) + b"\n"
    if len(line) > MAX_REQUEST_BYTES:
        raise InvalidRequestError(
            RejectReason.OVERSIZE,
            f"encoded request is {len(line)} bytes, limit {MAX_REQUEST_BYTES}",
            line,
        )
    return line


def encode_msgpack(request: TimerRequest) -> bytes:
    """Encode ``request`` as one MessagePack map."""
    return _msgpack_encoder.encode(request)


def decode_json(data: bytes | str) -> TimerRequest:
    """Decode one JSON object into a :class:`TimerRequest`, or raise :class:`InvalidRequestError`."""
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(RejectReason.MALFORMED, str(exc)) from None
    return _decode_one(_json_decoder.decode, data, "bytes or str")


def decode_msgpack(data: bytes) -> TimerRequest:
    """Decode one MessagePack map into a :class:`TimerRequest`, or raise :class:`InvalidRequestError`."""
    return _decode_one(_msgpack_decoder.decode, data, "bytes")


class LineDecoder:
    """Split a byte stream into JSON lines and decode each one.

    Feed it chunks as they are read; it keeps an unfinished last line for the next
    chunk, and discards a line longer than :data:`MAX_REQUEST_BYTES` up to its
    newline (reported once, as ``oversize``). Blank lines are skipped.

    A writer that dies mid-line leaves a fragment that the next writer's line
    completes. So a line that fails to decode is searched, from its last ``{``
    backwards, for a valid request that ends it: that request is
    returned after the error, which still reports (and counts) the bytes before it.
    """

    __slots__ = ("_discarding", "_partial")

    def __init__(self) -> None:
        self._partial = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Return how many bytes of an unfinished line are held."""
        return len(self._partial)

    def feed(self, chunk: bytes) -> list[TimerRequest | InvalidRequestError]:
        """Decode every line that ``chunk`` completes, in order."""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        out: list[TimerRequest | InvalidRequestError] = []
        if lines:
            first = self._partial + lines[0]
            self._partial = b""
            discarded, self._discarding = self._discarding, False
            if discarded:  # the end of an over-long line, reported already
                lines[0] = b""
                self._recover(first, out, None)
            else:
                lines[0] = first
            decode = _json_decoder.decode
            for line in lines:
                if not line or line.isspace():
                    continue
                if len(line) >= MAX_REQUEST_BYTES:
                    self._recover(line, out, _oversize(line))
                    continue
                try:
                    out.append(_decode(decode, line))
                except InvalidRequestError as error:
                    self._recover(line, out, error)
        if self._discarding:
            return out
        if len(self._partial) + len(tail) >= MAX_REQUEST_BYTES:
            out.append(_oversize(self._partial + tail))
            self._partial = b""
            self._discarding = True
        else:
            self._partial += tail
        return out

    #: How many ``{`` of a bad line are tried as the start of a request.
    _RESYNC_TRIES = 16

    @classmethod
    def _recover(
        cls,
        line: bytes,
        out: list[TimerRequest | InvalidRequestError],
        error: InvalidRequestError | None,
    ) -> None:
        """Append ``error`` for a bad ``line``, then the valid request that ends it, if any.

        The request is looked for at the last :attr:`_RESYNC_TRIES` ``{`` of the line's
        last :data:`MAX_REQUEST_BYTES` bytes, latest first; the bytes before it become
        the error's data. ``error=None``: the line was reported already.
        """
        start = max(1, len(line) - MAX_REQUEST_BYTES + 1)
        at = len(line)
        request: TimerRequest | None = None
        for _ in range(cls._RESYNC_TRIES):
            at = line.rfind(b"{", start, at)
            if at < 0:
                break
            try:
                request = _json_decoder.decode(line[at:])
                break
            except (msgspec.DecodeError, RecursionError, ValueError):
                continue
        if request is not None and error is not None:
            error = InvalidRequestError(
                error.reason,
                "bytes before a request on the same line (a writer that did not finish it?)",
                line[:at],
            )
        if error is not None:
            out.append(error)
        if request is not None:
            out.append(request)


def _decode(
    decode: Callable[[Any], TimerRequest], data: bytes | bytearray | memoryview
) -> TimerRequest:
    """Run ``decode`` on ``data``, turning every way bad input fails into :class:`InvalidRequestError`."""
    try:
        request = decode(data)
    except msgspec.DecodeError as exc:
        raise rejection(exc, bytes(data)) from None
    except (RecursionError, ValueError) as exc:
        # Nesting too deep for the decoder, or a string that is not valid UTF-8.
        raise InvalidRequestError(RejectReason.MALFORMED, str(exc), bytes(data)) from None
    if request.signal_is_fallback:
        request.signal = None
        request.signal_is_fallback = False
    return request


def _decode_one(decode: Callable[[Any], TimerRequest], data: object, expected: str) -> TimerRequest:
    """Decode one whole encoded request ``data``: bytes of at most :data:`MAX_REQUEST_BYTES`.

    ``expected`` names, in the error for any other type, what the caller accepts.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRequestError(
            RejectReason.WRONG_OBJECT, f"expected {expected}, got {type(data).__name__}"
        )
    if len(data) > MAX_REQUEST_BYTES:
        raise _oversize(bytes(data))
    return _decode(decode, data)


def _oversize(raw: bytes) -> InvalidRequestError:
    return InvalidRequestError(
        RejectReason.OVERSIZE, f"request longer than {MAX_REQUEST_BYTES} bytes", raw
    )
