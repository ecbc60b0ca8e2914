"""The connections of ``metamodal serve``: uvicorn's HTTP/1.1 protocol with the bounds a
server open to every local client needs beyond it (`guarded_protocol`).

uvicorn closes a connection only when it idles after an answer (keep-alive). A client that
sends its headers or body a byte at a time, or not at all, held its connection and a file
descriptor for ever: a thousand of them made the server unreachable, and at the open-file
limit its accept loop logged a traceback on every turn (megabytes a second).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("metamodal.serve")

HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send a request's headers (at most the request timeout): a
client sends them at once."""

MIN_BODY_RATE = 1024
"""Bytes a second a request body must average once it has taken ``request_timeout``
seconds: a trickle of a byte now and then would hold its connection for ever."""

FULL_LOG_INTERVAL = 60.0
"""Seconds between two log lines saying that connections are being turned away."""

#: Their side of a connection that has not sent a whole request: no request yet (or not
#: all its headers), or a body not all sent.
_INCOMPLETE = (h11.IDLE, h11.SEND_BODY)


def guarded_protocol(request_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class (``uvicorn.Config(http=...)``), bounded:

    - a request's headers are due within `HEADER_TIMEOUT` seconds (or ``request_timeout``,
      if shorter) of the connection's opening or its last answer, and its body may fall
      silent for at most ``request_timeout`` seconds at a time and, once it has taken that
      long, must average `MIN_BODY_RATE` (a slow upload that keeps sending goes on);
      otherwise the connection is answered 408 and closed (one that has not begun a request
      is closed without a word, as an idle keep-alive connection is);
    - a connection beyond ``max_connections`` open at once is answered 503 (with
      ``Retry-After``) and closed as it opens, and the server's log says so, at most once a
      minute.

    A request whose body has arrived is never timed out: the model may take its time.
    """
    headers_due = min(HEADER_TIMEOUT, request_timeout)
    last_full_log = [-FULL_LOG_INTERVAL]

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _begun = False  # bytes of a request since the opening or the last answer
        _body: tuple[float, int] | None = None  # (when the body began, its bytes so far)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                now = time.monotonic()
                if now - last_full_log[0] >= FULL_LOG_INTERVAL:
                    last_full_log[0] = now
                    log.warning("serve: %d connections are open (--max-connections); new ones "
                                "are answered 503 until some close", max_connections)
                _answer(transport, 503, "the server has as many connections open as it "
                        "takes (--max-connections)", "max-connections", "try again shortly")
                return
            self._arm(headers_due)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._deadline is None:  # turned away as it opened
                return
            self._begun = True
            if self.conn.their_state is not h11.SEND_BODY:
                return
            now = time.monotonic()
            began, size = self._body or (now, 0)
            self._body = (began, size + len(data))
            if now - began > request_timeout and self._body[1] < MIN_BODY_RATE * (now - began):
                self._expire(trickle=True)
            else:
                self._arm(request_timeout)  # the body streams in: its silence counts

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._begun, self._body = False, None
            self._arm(headers_due)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self, *, trickle: bool = False) -> None:
            if self.transport.is_closing() or self.conn.their_state not in _INCOMPLETE:
                return
            if self._begun and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                _answer(self.transport, 408, "the request was not sent in time" + (
                    f" (its body came slower than {MIN_BODY_RATE} bytes a second)"
                    if trickle else ""), "request-timeout", f"send the headers within "
                    f"{headers_due:g} s and keep the body flowing (silent for at most "
                    f"{request_timeout:g} s, {MIN_BODY_RATE} bytes a second on average)")
            else:  # nothing of a request yet (idle), or an answer begun
                self.transport.close()

    return GuardedH11Protocol


def _answer(transport: asyncio.Transport, status: int, error: str, column: str,
            fix: str) -> None:
    """Answer ``status`` with the API's error body, and close the connection."""
    body = json.dumps({"error": error, "file": None, "row": None, "column": column,
                       "fix": fix}).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
            + ("retry-after: 5\r\n" if status == 503 else "") + "\r\n")
    transport.write(head.encode() + body)
    transport.close()
