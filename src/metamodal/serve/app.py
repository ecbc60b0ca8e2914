"""The HTTP API and the page of ``metamodal serve``: `build_app` builds the FastAPI app.

Endpoints (JSON; every error is ``{"error", "file", "row", "column", "fix"}`` with a 4xx, or a
500 for a `RunError`: a stored row the server cannot read back):

====== ============================================== ==========================================
GET    ``/api/health``                                ``{"status": "ok"}``
GET    ``/api/model``                                 modalities, learner, dim, test accuracy
GET    ``/api/tasks``                                 every task's summary; damaged ones apart
POST   ``/api/tasks``                                 a new task from examples ``e<n>.*``
GET    ``/api/tasks/{id}``                            a task with its examples
DELETE ``/api/tasks/{id}``                            delete a task
POST   ``/api/tasks/{id}/examples``                   add examples ``e<n>.*``
DELETE ``/api/tasks/{id}/examples/{example}``         remove an example
DELETE ``/api/tasks/{id}/classes/{label}``            remove a class's examples
GET    ``/api/tasks/{id}/examples/{example}/thumbnail`` the example's image, PNG
POST   ``/api/tasks/{id}/predict``                    classify queries ``q<n>.*``
====== ============================================== ==========================================

The page is ``/`` (files in ``page/``, served from ``/static``); the OpenAPI schema is
``/openapi.json``. Writes (POST, DELETE) need ``Authorization: Bearer TOKEN`` when the server
has a token; prediction is a read.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from metamodal.config import test_time_overrides
from metamodal.data.schema import check_outside_dataset
from metamodal.errors import (
    ConfigError,
    DatasetError,
    InsufficientSamplesError,
    LocatedError,
    MetamodalError,
    ModalityError,
    RunError,
)
from metamodal.io import file_in_the_way
from metamodal.runs.directory import check_not_inside_run
from metamodal.serve.engine import Engine
from metamodal.serve.forms import (
    BodyLimit,
    BodyTooLargeError,
    UnsupportedEncodingError,
    class_label,
    read_form,
    samples_of,
    task_name,
)
from metamodal.serve.store import (
    LimitError,
    Limits,
    NewExample,
    NotFoundError,
    TaskRecord,
    TaskStore,
)

if TYPE_CHECKING:
    from metamodal.api.settings import ServeSettings

PAGE = Path(__file__).parent / "page"

LOOPBACK = ("127.0.0.1", "localhost", "::1")


_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_ORIGIN = re.compile(rf"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)"
                     r"(?::(?P<port>[1-9][0-9]{0,4}))?")
_DEFAULT_PORT = {"http": 80, "https": 443}


_STATUS = [(BodyTooLargeError, 413), (UnsupportedEncodingError, 415), (NotFoundError, 404),
           (LimitError, 409), (InsufficientSamplesError, 409), (ModalityError, 422),
           (DatasetError, 422), (ConfigError, 400), (RunError, 500), (MetamodalError, 422)]

_EXAMPLES_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "description": "examples e<n>.label plus e<n>.<column> per modality "
    "(a file for image / audio / sequence / video, text otherwise; one field per tabular "
    "column)", "additionalProperties": True}}}}}
_QUERY_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "description": "queries q<n>.<column> per modality, and k (nearest "
    "examples to return, default 3)", "additionalProperties": True}}}}}


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ``::1``, ``localhost``).

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("0.0.0.0")
        (True, False)
    """
    return host in LOOPBACK or host.startswith("127.")


def is_origin(text: str) -> bool:
    """True for a web origin as a browser sends it: ``scheme://host[:port]``, scheme http or
    https, in lowercase, with no path (not even ``/``) and no default port.

    Example:
        >>> is_origin("https://app.example.org:8443"), is_origin("https://app.example.org/")
        (True, False)
    """
    match = _ORIGIN.fullmatch(text)
    if match is None:
        return False
    host, port = match["host"], int(match["port"] or 0)
    if port > 65535 or port == _DEFAULT_PORT[match["scheme"]]:
        return False
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
        elif all(label.isdigit() for label in host.split(".")):
            ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
"""Headers of every answer: the page loads nothing from elsewhere, and no other site may
frame it (a click on "remove class" in a hidden frame) or have a file sniffed as a script."""

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def host_names(text: str | None) -> list[str]:
    """The host names of a comma-separated list (``allow_hosts``), in lowercase, without the
    root's trailing dot (``example.org.`` is ``example.org``).

    Example:
        >>> host_names(" App.example.org., ,proxy.local ")
        ['app.example.org', 'proxy.local']
    """
    return [name.strip().lower().removesuffix(".") for name in (text or "").split(",")
            if name.strip()]


def cross_site(method: str, host: str | None, origin: str | None, *, bound: str,
               cors: str | None, allowed: list[str]) -> tuple[str, str, str] | None:
    """Why a request is refused as coming from another site (its header, what is wrong, the
    fix), or None.

    - On a loopback address (no token needed), a ``Host`` that is a dotted name other than
      those ``allowed`` is refused: only a page of another site that has pointed its own name
      at this machine sends one (DNS rebinding), and it could then read every task. Names
      without a dot (``localhost``) and IP addresses are what local clients send.
    - A write (any method but GET, HEAD, OPTIONS) whose ``Origin`` is neither the server's
      own (the ``Host`` it names) nor the ``cors`` origin is refused: a browser sends it from
      a page of another site, which may post forms anywhere (cross-site request forgery).
      Clients other than browsers send no ``Origin``.

    Example:
        >>> cross_site("POST", "127.0.0.1:8000", "http://evil.example", bound="127.0.0.1",
        ...            cors=None, allowed=[])[0]
        'Origin'
        >>> cross_site("POST", "127.0.0.1:8000", "http://127.0.0.1:8000", bound="127.0.0.1",
        ...            cors=None, allowed=[]) is None
        True
    """
    name = (host if host.endswith("]") else host.rsplit(":", 1)[0]).strip("[]").lower() \
        .removesuffix(".") if host else ""  # without its port, brackets or root's dot
    if is_loopback(bound) and "." in name and name not in allowed:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return ("Host", f"this server on {bound} does not answer to the name {name!r}",
                    f"call it by localhost or its address, or start it with --allow-hosts "
                    f"{name} if a proxy of yours sends that name")
    if origin is None or method in SAFE_METHODS or cors == "*" or origin == cors:
        return None
    own = origin.split("://", 1)[-1]
    if host is not None and own.lower() == host.lower():
        return None
    return ("Origin", f"a write from a page of another site ({origin}) is refused",
            "call the API from the server's own page or a program, or start the server with "
            "--cors ORIGIN for a page of yours")


def check_settings(s: ServeSettings) -> None:
    """Refuse, before anything is loaded, a ``cors`` that is not a web origin (`is_origin`)
    or ``*``, an ``allow_hosts`` that names no host, and a ``state`` that is not a
    directory, lies inside the run directory or inside a dataset directory (one of it or its
    parents holds a ``dataset.toml``; the numbers' ranges are declared with `ServeSettings`
    and checked when it is made).

    Raises:
        ConfigError: naming the setting at fault.
    """
    if s.cors and s.cors != "*" and not is_origin(s.cors):
        raise ConfigError(f"cors = {s.cors!r} is not a web origin", column="cors",
                          fix="give scheme://host[:port] as a browser sends it (http or https, "
                          "lowercase, no path or trailing /), e.g. https://app.example.org, "
                          "or * for any origin")
    if s.allow_hosts is not None and not host_names(s.allow_hosts):
        raise ConfigError("allow_hosts names no host", column="allow_hosts",
                          fix="give host names, comma-separated, e.g. --allow-hosts "
                          "app.example.org, or leave it out")
    for name in host_names(s.allow_hosts):
        if not re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})*", name):
            raise ConfigError(f"allow_hosts names {name!r}, which is not a host name",
                              column="allow_hosts", fix="give host names, comma-separated, "
                              "e.g. --allow-hosts app.example.org")
    if not s.state:
        raise ConfigError("no state directory given", column="state",
                          fix="give --state DIR, e.g. --state metamodal-state")
    check_not_inside_run(s.state, "state", itself=True)  # the served run's, or another's
    check_outside_dataset(s.state, "state")
    blocking = file_in_the_way(s.state)  # before a large model loads; `TaskStore` makes it
    if blocking is not None:
        raise ConfigError("is a file, where the state directory is needed", file=blocking,
                          column="state", fix="give --state a directory (new or existing)")


def error_body(error: MetamodalError) -> dict[str, Any]:
    """The JSON of an error answer."""
    if isinstance(error, LocatedError):
        return {"error": error.message, "file": error.file, "row": error.row,
                "column": error.column, "fix": error.fix}
    return {"error": str(error), "file": None, "row": None, "column": None, "fix": None}


def _status(error: MetamodalError) -> int:
    return next(code for kind, code in _STATUS if isinstance(error, kind))


class _Accuracy:
    """The run's test accuracy, measured once in the background and kept in the state with
    the test-time settings it was measured with (``test_time``): other settings measure it
    again."""

    def __init__(self, store: TaskStore, measure: Callable[[], dict[str, Any]] | None,
                 test_time: list[dict[str, Any]]) -> None:
        try:
            kept = store.read_meta("test_accuracy")
        except RunError:  # a damaged measurement is measured again, and replaced
            kept = None
        self.value: dict[str, Any] | None = (
            kept if isinstance(kept, dict) and kept.get("test_time") == test_time else None)
        self.test_time = test_time
        self.status = "measured" if self.value else ("off" if measure is None else "measuring")
        if self.status == "measuring":
            threading.Thread(target=self._measure, args=(store, measure), daemon=True,
                             name="test-accuracy").start()

    def _measure(self, store: TaskStore, measure: Callable[[], dict[str, Any]]) -> None:
        try:
            self.value = {**measure(), "test_time": self.test_time}
        except Exception as error:  # noqa: BLE001 - whatever fails, the page must not wait
            self.status = f"unavailable: {error}"
            return
        store.write_meta("test_accuracy", self.value)
        self.status = "measured"


def build_app(s: ServeSettings,
              measure_accuracy: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The FastAPI app serving the run of ``s``: the API, the page and the OpenAPI schema
    (`metamodal.api.serve.create_app` builds it from a run and keywords).

    Args:
        s: the resolved `ServeSettings`.
        measure_accuracy: measures the run's test accuracy (``accuracy``, ``ci95``,
            ``ways``, ``shots``, ``episodes``, ``split``) with the settings of ``s``, called
            once in the background when the state holds no measurement with those settings;
            None: not measured.

    Raises:
        RunError: the run is missing or damaged, or the state belongs to another model.
        ConfigError: a ``cors`` or ``state`` `check_settings` refuses, or a non-loopback host
            without a token.
    """
    check_settings(s)
    if not is_loopback(s.host) and not s.token:
        raise ConfigError(f"serving on {s.host} (reachable from other machines) needs a token",
                          column="token", fix="give --token SECRET, or serve on 127.0.0.1")
    engine = Engine(s.run, device=s.device, batching=s.batching,
                    test_time={**test_time_overrides(s),
                               "joint_transduction": s.joint_transduction},
                    max_pixels=int(s.max_request_mpx * (1 << 20)))
    store = TaskStore(s.state, model=engine.fingerprint, tta=engine.embedding_tta,
                      limits=Limits(s.max_tasks, s.max_examples, s.max_classes))
    accuracy = _Accuracy(store, measure_accuracy, engine.test_time())
    reads_need_token = bool(s.token) and not is_loopback(s.host)

    app = FastAPI(title="metamodal", summary="Few-shot classification of multimodal samples: "
                  "define classes by a few examples, then classify new items.",
                  docs_url=None, redoc_url=None)
    app.state.engine, app.state.store = engine, store
    app.add_middleware(BodyLimit, limit=int(s.max_request_mb * (1 << 20)))
    if s.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[s.cors],
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization"])

    @app.exception_handler(MetamodalError)
    async def located(_: Request, error: MetamodalError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=_status(error))

    @app.exception_handler(StarletteHTTPException)
    async def routing(_: Request, error: StarletteHTTPException) -> Response:
        """An unknown path or method: the error body of every other answer."""
        return JSONResponse({"error": str(error.detail), "file": None, "row": None,
                             "column": None, "fix": "see the endpoints in /openapi.json"},
                            status_code=error.status_code, headers=error.headers)

    allowed = host_names(s.allow_hosts)

    @app.middleware("http")
    async def same_site(request: Request, call_next: Any) -> Response:
        refused = cross_site(request.method, request.headers.get("host"),
                             request.headers.get("origin"), bound=s.host, cors=s.cors,
                             allowed=allowed)
        if refused is not None:
            header, error, fix = refused
            response: Response = JSONResponse(
                {"error": error, "file": None, "row": None, "column": header, "fix": fix},
                status_code=403)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.middleware("http")
    async def authorise(request: Request, call_next: Any) -> Response:
        path = request.url.path
        write = request.method in ("POST", "DELETE") and not path.endswith("/predict")
        if s.token and path.startswith("/api/") and (write or reads_need_token) \
                and path != "/api/health":
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.lstrip(" ").encode(), s.token.encode()):
                return JSONResponse(
                    {"error": "this request needs the server's token", "file": None,
                     "row": None, "column": "Authorization",
                     "fix": "send the header Authorization: Bearer <token>"}, status_code=401)
        return await call_next(request)

    columns = engine.columns()
    limits = dict(max_request_bytes=int(s.max_request_mb * (1 << 20)),
                  max_request_pixels=engine.max_pixels,
                  max_samples_per_request=s.max_samples, max_examples_per_task=s.max_examples,
                  max_classes_per_task=s.max_classes, max_tasks=s.max_tasks)

    def summary(task: TaskRecord, *, examples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": task.id, "name": task.name, "created": task.created,
            "size": len(task.examples),
            "classes": [{"label": label, "examples": n} for label, n in task.classes()]}
        if examples:
            out["examples"] = [{
                "id": e.id, "label": e.label, "modalities": e.modalities, "text": e.text,
                "thumbnail": _thumbnail_url(task.id, e.id) if e.has_thumbnail else None}
                for e in task.examples]
        return out

    async def form_of(request: Request) -> FormData:
        return await read_form(request, max_samples=s.max_samples,
                               max_files=s.max_samples * 8)

    async def examples_from(form: FormData, extra: tuple[str, ...] = ()) -> list[NewExample]:
        samples = samples_of(form, "e", columns=columns, labelled=True,
                             max_samples=s.max_samples, extra=extra)
        return await run_in_threadpool(engine.encode_examples, samples)

    def after_removal(task_id: str) -> dict[str, Any]:
        """The task's summary after a committed removal; where another of its rows cannot be
        read back, its ``id`` and that error under ``damaged`` (the removal stands)."""
        try:
            return summary(store.get(task_id))
        except RunError as error:
            return {"id": task_id, "damaged": error_body(error)}

    @app.get("/api/health")
    def health() -> dict[str, str]:
        """The server is up."""
        return {"status": "ok"}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        """The model: learner, fusion, embedding size, the modalities it accepts (and how a
        form gives each), its test-time settings (and whether an ensemble's members take their
        transduction steps jointly), its test accuracy (measured once), the limits and what
        needs the token."""
        config = engine.run.config
        ensemble = engine.run.ensemble
        learner, fusion = (("ensemble", str(ensemble.get("method"))) if ensemble is not None
                           else (config.learner, config.fusion))
        return {"learner": learner, "fusion": fusion, "dim": config.dim,
                "modalities": [m.to_dict() for m in engine.modality_info()],
                "test_time": engine.test_time(),
                "joint_transduction": bool(getattr(engine.model, "joint_transduction", False)),
                "test_accuracy": accuracy.value, "test_accuracy_status": accuracy.status,
                "limits": limits,
                "auth": {"token_required_for_writes": bool(s.token),
                         "token_required_for_reads": reads_need_token}}

    @app.get("/api/tasks")
    def list_tasks() -> dict[str, Any]:
        """Every task, oldest first; a task whose stored rows cannot be read back is listed
        apart, under ``damaged``: its ``id`` with the error naming the row."""
        tasks, damaged = store.tasks()
        return {"tasks": [summary(t) for t in tasks],
                "damaged": [{"id": d.id, **error_body(d.error)} for d in damaged]}

    @app.post("/api/tasks", status_code=201, openapi_extra=_EXAMPLES_FORM)
    async def create_task(request: Request) -> dict[str, Any]:
        """A new task from labelled examples (``name`` optional)."""
        form = await form_of(request)
        name = task_name(form)
        examples = await examples_from(form, extra=("name",))
        return summary(await run_in_threadpool(store.create_task, name, examples))

    @app.get("/api/tasks/{task_id}")
    def get_task(task_id: str) -> dict[str, Any]:
        """A task with its examples."""
        return summary(store.get(task_id), examples=True)

    @app.delete("/api/tasks/{task_id}", status_code=204)
    def delete_task(task_id: str) -> Response:
        """Delete a task and its examples."""
        store.delete_task(task_id)
        engine.forget(task_id)
        return Response(status_code=204)

    @app.post("/api/tasks/{task_id}/examples", status_code=201, openapi_extra=_EXAMPLES_FORM)
    async def add_examples(task_id: str, request: Request) -> dict[str, Any]:
        """Add labelled examples to a task (of its classes or new ones)."""
        store.get(task_id)  # 404 before reading the uploads
        examples = await examples_from(await form_of(request))
        task, added = await run_in_threadpool(store.add_examples, task_id, examples)
        return {**summary(task), "added": added}

    @app.delete("/api/tasks/{task_id}/examples/{example_id}")
    def remove_example(task_id: str, example_id: str) -> dict[str, Any]:
        """Remove one example: the task's summary, or, where another of its rows is damaged,
        its id and the error under ``damaged``."""
        store.remove_examples(task_id, example_id=example_id)
        return after_removal(task_id)

    @app.delete("/api/tasks/{task_id}/classes/{label:path}")  # a label may hold "/"
    def remove_class(task_id: str, label: str) -> dict[str, Any]:
        """Remove every example of a class (the answer as `remove_example`'s)."""
        store.remove_examples(task_id, label=class_label(label))  # as the forms keep it
        return after_removal(task_id)

    @app.get("/api/tasks/{task_id}/examples/{example_id}/thumbnail",
             responses={200: {"content": {"image/png": {}}}})
    def thumbnail(task_id: str, example_id: str) -> Response:
        """The example's image, at most 96 pixels a side (404 when it has none)."""
        data = store.thumbnail(task_id, example_id)
        if data is None:
            raise NotFoundError("the example has no image", column="example",
                                fix="show its text instead")
        return Response(data, media_type="image/png")

    @app.post("/api/tasks/{task_id}/predict", openapi_extra=_QUERY_FORM)
    async def predict(task_id: str, request: Request) -> dict[str, Any]:
        """Classify query samples against a task: label, probabilities, the modalities each
        query lacked and its nearest examples."""
        task = await run_in_threadpool(store.get, task_id, tensors=True)
        form = await form_of(request)
        samples = samples_of(form, "q", columns=columns, labelled=False,
                             max_samples=s.max_samples, extra=("k",))
        given = form.getlist("k")  # ASCII digits only: int() refuses "²", which isdigit()
        k = (given[0] or "3") if given else "3"
        if len(given) > 1 or not isinstance(k, str) or not re.fullmatch(r"[0-9]{1,2}", k) \
                or int(k) > 50:
            raise ConfigError("k must be a whole number from 0 to 50, given once", column="k",
                              fix="e.g. -F k=3")
        result = await run_in_threadpool(engine.predict, task, samples, int(k))
        for prediction in result["predictions"]:
            for near in prediction["nearest"]:
                near["thumbnail"] = (_thumbnail_url(task_id, near["example"])
                                     if near.pop("has_thumbnail") else None)
        return result

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        if not (PAGE / "index.html").is_file():  # FileResponse would fail with a 500
            raise NotFoundError("this installation has no page", column="page",
                                fix="use the API: its endpoints are in /openapi.json")
        return FileResponse(PAGE / "index.html")

    if PAGE.is_dir():
        app.mount("/static", StaticFiles(directory=PAGE), name="static")
    return app


def _thumbnail_url(task_id: str, example_id: str) -> str:
    return f"/api/tasks/{task_id}/examples/{example_id}/thumbnail"
