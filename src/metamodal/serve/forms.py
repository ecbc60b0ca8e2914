"""Samples from a multipart form, and the request body bound.

A sample is a group of fields sharing a prefix: ``e0.label``, ``e0.image`` (a file),
``e0.caption`` (text), ``e0.m0`` (a tabular column) for examples; ``q0.image`` ... for queries.
Any other field is an error naming it, so a misspelt modality never passes as a missing one.

Forms are read whole (the body is bound by `BodyLimit`) by `read_form`: multipart by
python-multipart's parser with checks of its own (a closing boundary, UTF-8 text), urlencoded
as UTF-8; a compressed body is refused.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, Request

from metamodal.data.dataset import has_control_characters
from metamodal.errors import ConfigError, DatasetError
from metamodal.serve.engine import Sample, Upload
from metamodal.serve.store import MAX_LABEL, label_fault

_FIELD = re.compile(r"^([eq])(0|[1-9][0-9]{0,5})\.(.+)$")  # one spelling per n

_TOO_LARGE_FIX = "send fewer or smaller files, or serve with a higher --max-request-mb"

MAX_FIELD_BYTES = 1 << 20
"""The largest text field of a form (a file's bytes are bound by the request's size)."""


class BodyTooLargeError(ConfigError):
    """The request body is larger than the server accepts."""


class UnsupportedEncodingError(ConfigError):
    """The request body comes compressed (a ``Content-Encoding``), which the server does not
    undo (415)."""


async def read_form(request: Request, *, max_samples: int, max_files: int) -> FormData:
    """The request's form (multipart, or urlencoded), parsed within the bounds: text fields as
    `str`, files as `Upload`.

    Raises:
        UnsupportedEncodingError: the body has a ``Content-Encoding`` (gzip, ...).
        ConfigError: not a form, a malformed or truncated one, text that is not UTF-8, or too
            many fields or files.
    """
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ConfigError("the request must be a multipart form", column="content-type",
                          fix="send multipart/form-data (curl -F 'e0.label=cat' ...)")
    encoding = request.headers.get("content-encoding", "identity").strip()
    if encoding.lower() != "identity":
        raise UnsupportedEncodingError(
            f"content encoding {encoding} is not supported", column="content-encoding",
            fix="send the body uncompressed, without a Content-Encoding header")
    max_fields = max_samples * 64 + 8
    try:
        body = await request.body()
    except ClientDisconnect:  # nobody reads the answer: no traceback in the server's log
        raise ConfigError("the client closed the connection before its form was sent",
                          column="form", fix="send the whole form") from None
    if kind.startswith("application/x-www-form-urlencoded"):
        return _urlencoded(body, max_fields)
    return _multipart(body, kind, max_fields=max_fields, max_files=max_files)


def _urlencoded(body: bytes, max_fields: int) -> FormData:
    """The fields of an urlencoded form, its bytes and percent-escapes read as UTF-8 (Starlette
    reads the bytes as Latin-1 and replaces an invalid escape by U+FFFD: a label sent as
    ``caf\xc3\xa9`` became ``cafÃ©``, one with ``%FF`` lost the byte without a word).

    Raises:
        ConfigError: keyed ``form``: not UTF-8, or more than ``max_fields`` fields; keyed by
            the field: a field over `MAX_FIELD_BYTES`.
    """
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8",
                           errors="strict", max_num_fields=max_fields)
    except UnicodeDecodeError as error:
        raise ConfigError(f"the form's text is not UTF-8 ({error.reason})", column="form",
                          fix="send the form's text as UTF-8, raw or percent-encoded "
                          "(curl --data-urlencode)") from None
    except ValueError:  # parse_qsl: more fields than max_num_fields
        raise _too_many("fields", max_fields) from None
    for key, value in fields:
        _check_field_size(key, len(key.encode()) + len(value.encode()))
    return FormData(fields)


def _multipart(body: bytes, content_type: str, *, max_fields: int,
               max_files: int) -> FormData:
    """The fields of a multipart form (RFC 7578): a part with a ``filename`` is an `Upload`,
    any other is text that must be UTF-8 (Starlette read text that is not as Latin-1, without a
    word, and acknowledged a body cut short without the parts it lacked).

    Raises:
        ConfigError: keyed ``content-type``: no boundary, or a charset other than UTF-8;
            keyed ``form``: malformed, truncated (no closing boundary), a part without a
            name, more than ``max_fields`` fields or ``max_files`` files; keyed by the field:
            its text not UTF-8 (or declared in another charset), or over `MAX_FIELD_BYTES`.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ConfigError("the multipart form has no boundary", column="content-type",
                          fix="send multipart/form-data; boundary=... (curl -F sets it)")
    _require_utf8(params, "content-type")
    reader = _Parts(max_parts=max_fields + max_files)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise ConfigError(f"the form cannot be read: {error}", column="form",
                          fix="send a well-formed multipart form") from None
    if not reader.ended:
        raise ConfigError("the multipart body is truncated (no closing boundary)",
                          column="form", fix="send the whole form: a body ends with "
                          "--BOUNDARY-- after its last part")
    fields = [_part(headers, bytes(data)) for headers, data in reader.parts]
    files = sum(isinstance(value, Upload) for _, value in fields)
    if files > max_files:
        raise _too_many("files", max_files)
    if len(fields) - files > max_fields:
        raise _too_many("fields", max_fields)
    return FormData(fields)


class _Parts:
    """The callbacks of python-multipart's `MultipartParser`, which keep each part's headers
    (names in lower case) and bytes, and whether the closing boundary came (``ended``)."""

    def __init__(self, max_parts: int) -> None:
        self.parts: list[tuple[dict[bytes, bytes], bytearray]] = []
        self.ended = False
        self._max_parts = max_parts
        self._header = [b"", b""]  # the name and value of the header being read

    def callbacks(self) -> dict[str, Any]:
        """The callbacks, by the names `MultipartParser` takes."""
        return {"on_part_begin": self._begin, "on_part_data": self._data,
                "on_header_field": self._header_name, "on_header_value": self._header_value,
                "on_header_end": self._header_end, "on_end": self._end}

    def _begin(self) -> None:
        if len(self.parts) == self._max_parts:
            raise _too_many("parts", self._max_parts)
        self.parts.append(({}, bytearray()))

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].extend(data[start:end])

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = self._header
        self.parts[-1][0][name.lower()] = value
        self._header = [b"", b""]

    def _end(self) -> None:
        self.ended = True


def _part(headers: dict[bytes, bytes], data: bytes) -> tuple[str, str | Upload]:
    """A multipart part's name and value: an `Upload` (the suffix of its file name kept) or
    its UTF-8 text."""
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    try:
        name = options[b"name"].decode("utf-8")
    except KeyError:
        raise ConfigError("a part of the form has no name", column="form",
                          fix="name every part (Content-Disposition: form-data; "
                          "name=\"e0.label\")") from None
    except UnicodeDecodeError:
        raise ConfigError("a field name of the form is not UTF-8", column="form",
                          fix="name fields in UTF-8, e.g. e0.label") from None
    if b"filename" in options:  # only its suffix is kept, for the loaders that need it
        filename = options[b"filename"].decode("utf-8", errors="replace")
        return name, Upload(data, PurePosixPath(filename).suffix.lower())
    _, kind = parse_options_header(headers.get(b"content-type", b""))
    _require_utf8(kind, name[:100])
    _check_field_size(name, len(data))
    try:
        return name, data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"the text of {name[:100]} is not UTF-8 ({error.reason})",
                          column=name[:100], fix="send the text encoded as UTF-8") from None


def _require_utf8(params: dict[bytes, bytes], column: str) -> None:
    """Refuse a declared ``charset`` other than UTF-8 (ASCII is a part of it)."""
    charset = params.get(b"charset")
    if charset is None:
        return
    try:
        name = codecs.lookup(charset.decode("ascii")).name
    except (LookupError, UnicodeDecodeError):
        name = None
    if name not in ("utf-8", "ascii"):
        raise ConfigError(f"the charset {charset.decode('latin-1')!r} is not supported",
                          column=column, fix="send text as UTF-8 (charset=utf-8, or none)")


def _check_field_size(name: str, size: int) -> None:
    """Refuse a text field of more than `MAX_FIELD_BYTES`."""
    if size > MAX_FIELD_BYTES:
        raise ConfigError(f"the form field is larger than {MAX_FIELD_BYTES >> 20} MiB",
                          column=name[:100], fix="send shorter text")


def _too_many(what: str, limit: int) -> ConfigError:
    return ConfigError(f"the form has more than {limit} {what}", column="form",
                       fix="send fewer samples in one request")


def task_name(form: FormData) -> str:
    """The task's name: the form's ``name`` field stripped of surrounding spaces (``untitled``
    when absent or blank).

    Raises:
        ConfigError: keyed ``name``: given twice or as a file, over `MAX_LABEL` characters,
            or holding a control character.
    """
    names = form.getlist("name")
    if len(names) > 1 or not all(isinstance(n, str) for n in names):
        raise ConfigError("the task's name must be one text field", column="name",
                          fix="e.g. -F name=birds")
    name = (names[0] if names else "").strip()
    if len(name) > MAX_LABEL:
        raise ConfigError(f"the task's name is {len(name)} characters, more than {MAX_LABEL}",
                          column="name", fix=f"name the task in at most {MAX_LABEL} characters")
    if has_control_characters(name):
        raise ConfigError("the task's name holds a control character", column="name",
                          fix="name the task with printable characters")
    return name or "untitled"


def class_label(text: str) -> str:
    """A class label as a task keeps it: stripped and in Unicode NFC, so that the spellings a
    client may send (decomposed accents, a trailing space) are one class.

    Example:
        >>> class_label(" cafe\u0301 ") == "caf\u00e9"
        True
    """
    return unicodedata.normalize("NFC", text.strip())


def samples_of(form: FormData, letter: str, *, columns: dict[str, str], labelled: bool,
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
            # checked as it is kept, and read back: NFC can lengthen it (U+0958 is two)
            label = class_label(value) if isinstance(value, str) else ""
            wrong = label_fault(label)
            if wrong is not None:
                raise ConfigError(f"{key} {wrong[0]}", column=key, fix=wrong[1])
            sample.label = label
            continue
        if column not in columns:
            raise ConfigError(f"the model has no column {column!r}", column=key,
                              fix=f"use one of: {', '.join(columns)}")
        if isinstance(value, Upload) or value != "":
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
