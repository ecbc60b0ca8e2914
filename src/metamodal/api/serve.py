"""The verb that serves a run over HTTP: `serve` (``metamodal serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve
from metamodal.api.settings import ServeSettings
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


def serve(run: str | Path | None = None, settings: ServeSettings | None = None,
          **options: Any) -> ServeResult:
    """Serve a run's classifier: the HTTP API and the page (``metamodal serve``) until
    SIGINT or SIGTERM, which stop it gracefully (requests in flight finish; every write is
    already committed).

    Args:
        run: the run directory.
        settings: a `ServeSettings`; ``options`` (its field names) override it.

    Raises:
        ConfigError: the ``serve`` extra is not installed, or a non-loopback host without a
            token.
        RunError: the run is missing or damaged, or the state belongs to another model.

    Example:
        >>> serve("runs/demo", port=8000, state="serve-state")  # doctest: +SKIP
    """
    s = resolve(ServeSettings, settings, {"run": run, **options}, verb="serve")
    try:
        import uvicorn

        from metamodal.serve.app import create_app
    except ImportError as error:
        raise ConfigError(f"serving needs the serve extra ({error.name} is missing)",
                          column="serve",
                          fix="pip install -c constraints.txt -e '.[serve]'") from None
    app = create_app(s.run, s)
    host = f"[{s.host}]" if ":" in s.host else s.host
    url = f"http://{host}:{s.port}/"
    print(f"serving {s.run} on {url} (Ctrl-C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning",
                                  timeout_graceful_shutdown=10)).run()
    return ServeResult(url, s.state, len(app.state.store.tasks()))
