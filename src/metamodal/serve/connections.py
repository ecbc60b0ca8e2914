"""The connections of ``metamodal serve``: uvicorn's HTTP/1.1 protocol with the two bounds a
server open to every local client needs beyond it (`guarded_protocol`).

uvicorn closes a connection only when it idles after an answer (keep-alive). A client that
sends its headers or body a byte at a time, or not at all, held its connection and a file
descriptor for ever: a thousand of them made the server unreachable, and at the open-file
limit its accept loop logged a traceback on every turn (megabytes a second).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Their side of a connection that has not sent a whole request: no request yet (or not
#: all its headers), or a body not all sent.
_INCOMPLETE = (h11.IDLE, h11.SEND_BODY)


def guarded_protocol(request_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class (``uvicorn.Config(http=...)``), bounded:

    - a connection that has not sent a whole request (headers and body) within
      ``request_timeout`` seconds of opening, or of its last answer, is closed;
    - a connection beyond ``max_connections`` open at once is closed as it opens.

    A request whose body has arrived is never timed out: the model may take its time.
    """

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()  # connection_lost forgets it
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(request_timeout, self._expire)

        def _expire(self) -> None:
            if not self.transport.is_closing() and self.conn.their_state in _INCOMPLETE:
                self.transport.close()

    return GuardedH11Protocol

