"""The verb that serves a run over HTTP: `serve` (``metamodal serve``)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamodal.api.evaluation import evaluate
from metamodal.api.fields import resolve
from metamodal.api.settings import ServeSettings
from metamodal.config import test_time_overrides
from metamodal.errors import ConfigError


@dataclass
class ServeResult:
    """What a server did before it stopped.

    Args:
        url: the address it served.
        state: its state directory.
        tasks: the tasks the state holds at the end.
    """

    url: str
    state: str
    tasks: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"url": self.url, "state": self.state, "tasks": self.tasks}

    def table(self) -> str:
        """One line: where it served and what it keeps."""
        return f"served {self.url}; {self.tasks} task(s) kept in {self.state}"


TOKEN_VARIABLE = "METAMODAL_SERVE_TOKEN"
"""The environment variable read for the token when none is given (unlike a flag, it does
not show in the process list)."""


BACKLOG = 2048
"""Connections the listening socket queues (uvicorn's default)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` and ``port`` (0: a free port the system picks) and
    listening, for the server to take over; its ``getsockname()`` gives the port actually
    bound. Connections made before the server starts wait in its backlog.

    Raises:
        ConfigError: keyed ``host`` for a host that is neither an IP address nor a name this
            machine resolves; keyed ``port`` for a port that cannot be bound (in use, or
            privileged).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, ValueError) as error:  # socket.gaierror; UnicodeError, NUL: ValueError
        raise ConfigError(f"cannot listen on {host!r}: it does not resolve to an address "
                          f"({error})", column="host",
                          fix="give an IP address (127.0.0.1, 0.0.0.0, ::) or a name this "
                          "machine resolves") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on port {port} of {host}: {error.strerror or error}",
                          column="port",
                          fix="choose a free port (or --port 0 for one the system picks); "
                          "ports below 1024 need administrator rights") from None
    return sock


def create_app(run: str | Path | None = None, settings: ServeSettings | None = None,
               **options: Any) -> Any:
    """The FastAPI app of ``metamodal serve`` for ``run`` (the API, the page and the OpenAPI
    schema), to run under uvicorn or mount in an app of your own.

    Args:
        run: the run directory.
        settings: a `ServeSettings` (state directory, token, limits, batching, ...);
            ``options`` (its field names) override it. Without a token, the environment
            variable ``METAMODAL_SERVE_TOKEN`` gives it.

    Raises:
        ConfigError: the ``serve`` extra is not installed, a setting outside its declared
            range (`ServeSettings`), a ``cors`` that is no origin, a state that is not a
            directory (`metamodal.serve.app.check_settings`), or a non-loopback host without
            a token.
        RunError: the run is missing or damaged, or the state belongs to another model.

    Example:
        >>> app = create_app("runs/demo", state="serve-state")  # doctest: +SKIP
    """
    s = resolve(ServeSettings, settings, {"run": run, **options}, verb="serve")
    if s.token is None and os.environ.get(TOKEN_VARIABLE):
        s = dataclasses.replace(s, token=os.environ[TOKEN_VARIABLE])
    try:
        from metamodal.serve.app import build_app
    except ImportError as error:
        raise ConfigError(f"serving needs the serve extra ({error.name} is missing)",
                          column="serve",
                          fix="pip install -c constraints.txt -e '.[serve]'") from None

    def measure() -> dict[str, Any]:
        report = evaluate(s.run, episodes_count=s.eval_episodes, baseline=False,
                          progress=False, **test_time_overrides(s),
                          joint_transduction=s.joint_transduction)
        r = report.result
        return {"accuracy": r.accuracy, "ci95": r.ci95, "ways": r.ways, "shots": r.shots,
                "episodes": r.episodes, "split": report.split}

    return build_app(s, measure if s.eval_episodes > 0 else None)


def serve(run: str | Path | None = None, settings: ServeSettings | None = None,
          **options: Any) -> ServeResult:
    """Serve a run's classifier: the HTTP API and the page (``metamodal serve``) until
    SIGINT or SIGTERM, which stop it gracefully (requests in flight finish; every write is
    already committed).

    Args:
        run: the run directory.
        settings: a `ServeSettings`; ``options`` (its field names) override it.

    Raises:
        ConfigError: the ``serve`` extra is not installed, a host that does not resolve, a
            port that cannot be bound (`listening_socket`), or what `create_app` refuses.
        RunError: the run is missing or damaged, or the state belongs to another model.

    Example:
        >>> serve("runs/demo", port=8000, state="serve-state")  # doctest: +SKIP
    """
    s = resolve(ServeSettings, settings, {"run": run, **options}, verb="serve")
    sock = listening_socket(s.host, s.port)  # before the model loads: a busy port fails fast
    try:
        app = create_app(s.run, s)
    except BaseException:
        sock.close()
        raise
    import uvicorn

    host = f"[{s.host}]" if ":" in s.host else s.host
    url = f"http://{host}:{sock.getsockname()[1]}/"
    print(f"serving {s.run} on {url} (Ctrl-C to stop)", flush=True)
    from metamodal.serve.connections import guarded_protocol

    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=10,
        http=guarded_protocol(s.request_timeout, s.max_connections)))
    # uvicorn stops gracefully on SIGINT / SIGTERM, then raises the signal again for the
    # handler that was there before it: a quiet one here, so the verb returns its result.
    main_thread = threading.current_thread() is threading.main_thread()
    quiet = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                   signal.SIGTERM)
             } if main_thread else {}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in quiet.items():
            signal.signal(sig, handler)
    return ServeResult(url, s.state, app.state.store.count())
