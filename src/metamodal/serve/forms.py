"""Samples from a multipart form, and the request body bound.

A sample is a group of fields sharing a prefix: ``e0.label``, ``e0.image`` (a file),
``e0.caption`` (text), ``e0.m0`` (a tabular column) for examples; ``q0.image`` ... for queries.
Any other field is an error naming it, so a misspelt modality never passes as a missing one.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from metamodal.errors import ConfigError, DatasetError
from metamodal.serve.engine import Sample, Upload

_FIELD = re.compile(r"^([eq])(0|[1-9][0-9]{0,5})\.(.+)$")  # one spelling per n

_TOO_LARGE_FIX = "send fewer or smaller files, or serve with a higher --max-request-mb"

MAX_LABEL = 200
"""The longest class label, in characters."""
MAX_FIELD_BYTES = 1 << 20
"""The largest text field of a form (a file's bytes are bound by the request's size)."""


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, a newline, an escape, ...)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


class BodyTooLargeError(ConfigError):
    """The request body is larger than the server accepts."""


async def read_form(request: Request, *, max_samples: int, max_files: int) -> Any:
    """The request's multipart form, parsed within the bounds (a file's bytes are read later).

    Raises:
        ConfigError: not a form, or too many fields or files.
    """
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ConfigError("the request must be a multipart form", column="content-type",
                          fix="send multipart/form-data (curl -F 'e0.label=cat' ...)")
    max_fields = max_samples * 64 + 8
    if kind.startswith("application/x-www-form-urlencoded"):
        return _urlencoded(await request.body(), max_fields)
    try:
        return await request.form(max_files=max_files, max_fields=max_fields,
                                  max_part_size=MAX_FIELD_BYTES)
    except BodyTooLargeError:
        raise
    except Exception as error:  # the multipart parser's own errors (starlette HTTPException)
        detail = getattr(error, "detail", None) or str(error)
        raise ConfigError(f"the form cannot be read: {detail}", column="form",
                          fix="send a well-formed multipart form within the server's limits"
                          ) from None


def _urlencoded(body: bytes, max_fields: int) -> FormData:
    """The fields of an urlencoded form, its bytes and percent-escapes read as UTF-8 (Starlette
    reads the bytes as Latin-1 and replaces an invalid escape by U+FFFD: a label sent as
    ``caf\xc3\xa9`` became ``cafÃ©``, one with ``%FF`` lost the byte without a word).

    Raises:
        ConfigError: keyed ``form``: not UTF-8, or more than ``max_fields`` fields; keyed by
            the field: a field over `MAX_FIELD_BYTES`.
    """
    fix = "send the form's text as UTF-8, percent-encoded (curl --data-urlencode), or as multipart"
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8",
                           errors="strict", max_num_fields=max_fields)
    except UnicodeDecodeError as error:
        raise ConfigError(f"the form's text is not UTF-8 ({error.reason})", column="form",
                          fix=fix) from None
    except ValueError:  # parse_qsl: more fields than max_num_fields
        raise ConfigError(f"the form has more than {max_fields} fields", column="form",
                          fix="send fewer samples in one request") from None
    for key, value in fields:
        if len(key.encode()) + len(value.encode()) > MAX_FIELD_BYTES:
            raise ConfigError(f"the form field is larger than {MAX_FIELD_BYTES >> 20} MiB",
                              column=key[:100], fix="send shorter text")
    return FormData(fields)


async def samples_of(form: Any, letter: str, *, columns: dict[str, str], labelled: bool,
                     max_samples: int, extra: tuple[str, ...] = ()) -> list[Sample]:
    """The samples of prefix ``letter`` (``e`` or ``q``) in a parsed form, in index order.

    Args:
        form: the parsed form.
        letter: ``e`` (examples, labelled) or ``q`` (queries).
        columns: the form columns the model accepts (column -> modality).
        labelled: each sample needs a ``label`` field.
        max_samples: the most samples accepted.
        extra: other field names allowed in the form (e.g. ``name``, ``k``).

    Raises:
        ConfigError: an unknown field, no sample, too many, a label missing or too long.
    """
    samples: dict[int, Sample] = {}
    seen: set[str] = set()
    for key, value in form.multi_items():
        match = _FIELD.match(key)
        if match is None or match.group(1) != letter:
            if key in extra:
                continue
            raise ConfigError(
                f"unknown form field {key!r}", column=key,
                fix=f"name fields {letter}<n>.<column> with a column of the model "
                f"({', '.join(columns)}){' or ' + letter + '<n>.label' if labelled else ''}")
        if key in seen:  # a label or an empty value given twice too
            raise ConfigError("the field is given twice", column=key, fix="give it once")
        seen.add(key)
        index, column = int(match.group(2)), match.group(3)
        sample = samples.setdefault(index, Sample(f"{letter}{index}"))
        if column == "label" and labelled:
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL:
                raise ConfigError(f"{key} must be a class name of 1 to {MAX_LABEL} characters",
                                  column=key, fix="give each example a label")
            if not value.strip().strip("."):  # /classes/.. would reach the task's own URL
                raise ConfigError(f"{key} is only dots, which a class's URL cannot hold",
                                  column=key, fix="give the class a name with other characters")
            if has_control_characters(value):
                raise ConfigError(f"{key} holds a control character", column=key,
                                  fix="give the class a name of printable characters")
            sample.label = value.strip()
            continue
        if column not in columns:
            raise ConfigError(f"the model has no column {column!r}", column=key,
                              fix=f"use one of: {', '.join(columns)}")
        if isinstance(value, UploadFile):
            data = await value.read()
            suffix = PurePosixPath(value.filename or "").suffix.lower()
            sample.values[column] = Upload(data, suffix)
        elif value != "":
            sample.values[column] = value
    if not samples:
        raise DatasetError(f"the form holds no sample ({letter}0.<column> fields)",
                           column=f"{letter}0",
                           fix=f"send at least one sample, e.g. -F '{letter}0.<column>=...'")
    if len(samples) > max_samples:
        raise ConfigError(f"the form holds {len(samples)} samples, more than {max_samples}",
                          column=f"{letter}{max(samples)}",
                          fix="send fewer samples per request, or serve with a higher "
                          "--max-samples")
    ordered = [samples[k] for k in sorted(samples)]
    for sample in ordered:
        if labelled and sample.label is None:
            raise ConfigError("the example has no label", column=f"{sample.key}.label",
                              fix=f"add the field {sample.key}.label")
        if not sample.values:
            raise DatasetError("the sample carries no modality", column=sample.key,
                               fix=f"give {sample.key} at least one of: {', '.join(columns)}")
    return ordered


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 (by its
    Content-Length, or as soon as the bytes received pass it)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLargeError(f"the request body is larger than {self.limit} bytes",
                                        column="body", fix=_TOO_LARGE_FIX)
            return message

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLargeError:
            if not started:
                await _too_large(send, self.limit)


async def _too_large(send: Any, limit: int) -> None:
    import json

    body = json.dumps({"error": f"the request body is larger than {limit} bytes",
                       "file": None, "row": None, "column": "body",
                       "fix": _TOO_LARGE_FIX}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
