"""`Engine`: the model behind the server. It turns uploaded samples into encoded examples and
classifies queries against a task, all through `metamodal.classifier.FewShotClassifier`.

Uploaded files are written under server-chosen names into a private temporary directory and
read from there by the run's own loaders (so a corrupt file is the same typed error it is
anywhere else); no name a client sends is ever used as a path. Errors name the form field
(``e0.image``) rather than the temporary file. Before anything is decoded, the pixels a
request's images decode to (read from their headers) are held to a budget per request
(`MAX_REQUEST_PIXELS`): a small PNG may declare 64 megapixels of one colour.

With ``batching`` on, the queries of requests that wait at the same time are embedded as one
batch by one worker thread (`EmbedBatcher`); ``benchmarks/serve.py`` measures what that gains.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import queue
import re
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from metamodal.classifier import FewShotClassifier
from metamodal.data.batch import batch_to
from metamodal.data.kinds import modality_kind
from metamodal.data.loaders.image import MAX_PIXELS, ImageLoader, decoded_pixels
from metamodal.data.records import RECORDS_SOURCE, records_dataset
from metamodal.errors import DatasetError, InsufficientSamplesError, LocatedError, ModalityError
from metamodal.io import sha256_file
from metamodal.model.test_time import settings_in_force
from metamodal.runs.directory import WEIGHTS_FILE, Run
from metamodal.runs.prepared import show_progress
from metamodal.runs.support import EncodedSamples, dtype_fault
from metamodal.serve.store import (
    THUMBNAIL_SIZE,
    NewExample,
    StoredExample,
    TaskRecord,
    damaged,
)

TEXT_SNIPPET = 200
"""The most characters of an example's text kept for display."""

MAX_REQUEST_PIXELS = MAX_PIXELS
"""The most pixels the images of one request may decode to (counted from their headers
before any is decoded): 64 megapixels, what the image loader decodes of one image at most, so
that any image it accepts can still be sent alone."""

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


class TooManyPixelsError(DatasetError):
    """The images of a request decode to more pixels than the budget of a request (422, as
    an image over the loader's own bound is)."""


@dataclass
class Upload:
    """A file a client sent: its bytes and the suffix of its name (lower case, or ``""``)."""

    data: bytes
    suffix: str = ""


@dataclass
class Sample:
    """One sample of a form: its field prefix (``e0``), label (examples only) and values by
    column (text, or an `Upload` for a media modality)."""

    key: str
    label: str | None = None
    values: dict[str, str | Upload] = field(default_factory=dict)


@dataclass
class ModalityInfo:
    """What the page and clients need to know of one modality the model accepts."""

    name: str
    kind: str
    input: str  # "file", "text" or "fields"
    accept: str | None
    columns: list[str] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


class EmbedBatcher:
    """Embeds decoded samples of concurrent callers as one batch on one worker thread.

    A caller hands its decoded samples to `__call__` and waits; the worker takes every sample
    set waiting at that moment (up to ``max_rows`` rows), embeds them as one batch and hands
    each caller its rows. No caller waits for a timer: a lone request is embedded at once, and
    requests arriving while a batch runs form the next one.

    Args:
        embed: decoded samples -> embedded samples (`FewShotClassifier.embed`).
        max_rows: the most rows embedded at once.
    """

    def __init__(self, embed: Any, max_rows: int = 512) -> None:
        self._embed = embed
        self._max_rows = max_rows
        self._queue: queue.Queue[tuple[EncodedSamples, Future]] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._worker.start()

    def __call__(self, samples: EncodedSamples) -> EncodedSamples:
        """The embedded ``samples`` (blocks until the worker has embedded them)."""
        done: Future = Future()
        self._queue.put((samples, done))
        return done.result()

    def _run(self) -> None:
        while True:
            waiting = [self._queue.get()]
            rows = len(waiting[0][0])
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                waiting.append(item)
                rows += len(item[0])
            try:
                joined = self._embed(EncodedSamples.cat([s for s, _ in waiting]))
                for (_, done), part in zip(waiting, joined.split([len(s) for s, _ in waiting]),
                                           strict=True):
                    done.set_result(part)
            except BaseException as error:  # handed to the callers, who raise it
                for _, done in waiting:
                    done.set_exception(error)


class Engine:
    """A run's classifier serving many tasks.

    Args:
        run: the run directory.
        device: where the model runs.
        batching: embed the queries of concurrent requests together (`EmbedBatcher`).
        test_time: test-time settings replacing the run's (`FewShotClassifier`'s keywords
            ``tta``, ``transduction``, ...; None keeps the run's).
        max_pixels: the most pixels the images of one request may decode to.

    Raises:
        RunError: the run directory is missing or damaged.
        ConfigError: a test-time setting is invalid or does not fit the model.
    """

    def __init__(self, run: str | Path, *, device: str = "cpu", batching: bool = True,
                 test_time: Mapping[str, Any] | None = None,
                 max_pixels: int = MAX_REQUEST_PIXELS) -> None:
        self.max_pixels = max_pixels
        self.classifier = FewShotClassifier(run, device=device, **(test_time or {}))
        self.run: Run = self.classifier.loaded_run()
        show_progress(self.run.preprocessor, False)  # no bars in a server's log
        self.model = self.run.model.eval()
        self.embeds_once = self.model.capabilities().embeds_once
        self.modalities = list(self.model.modalities)
        self.fingerprint = sha256_file(self.run.path / WEIGHTS_FILE)
        # the test-time augmentation stored embeddings are made with (None: stored decoded)
        self.embedding_tta = settings_in_force(self.model)[0].tta if self.embeds_once else None
        self._batcher = EmbedBatcher(self.classifier.embed) if (
            batching and self.embeds_once) else None
        self._fitted: dict[str, tuple[int, FewShotClassifier, list[str]]] = {}
        self._fitted_guard = threading.Lock()

    # -- what the model accepts ----------------------------------------------------------

    def test_time(self) -> list[dict[str, Any]]:
        """The test-time settings in force: one dict (``tta``, ``transduction``,
        ``transduction_balance``, ``fusion_confidence``, ``fusion_reliability``) for the
        model, or one per member of an ensemble."""
        return [dataclasses.asdict(t) for t in settings_in_force(self.model)]

    def modality_info(self) -> list[ModalityInfo]:
        """Each modality the model accepts and how a form gives it."""
        infos = []
        for name in self.modalities:
            spec = self.run.schema.modalities[name]
            kind = modality_kind(spec.kind)
            if spec.kind == "tabular":
                infos.append(ModalityInfo(name, spec.kind, "fields", None, list(spec.columns)))
            elif kind.media:
                accept = ",".join([f"{spec.kind}/*"] * (spec.kind in ("image", "audio", "video"))
                                  + list(kind.suffixes))
                infos.append(ModalityInfo(name, spec.kind, "file", accept, None))
            else:
                infos.append(ModalityInfo(name, spec.kind, "text", None, None))
        return infos

    def columns(self) -> dict[str, str]:
        """Form column -> the modality it belongs to (a tabular modality has several)."""
        out = {}
        for info in self.modality_info():
            for column in info.columns or [info.name]:
                out[column] = info.name
        return out

    # -- encoding ------------------------------------------------------------------------

    def _check_pixels(self, samples: list[Sample]) -> None:
        """Refuse, before any is decoded, images that decode to more than ``max_pixels``
        together, naming the field that passes the budget.

        Raises:
            TooManyPixelsError: naming that field (``q3.image``).
        """
        images = {info.name for info in self.modality_info() if info.kind == "image"}
        total = 0
        for sample in samples:
            for column, value in sample.values.items():
                if column in images and isinstance(value, Upload):
                    loader = self.run.preprocessor.loaders.get(column)
                    draft = loader.draft_target() if isinstance(loader, ImageLoader) else ()
                    pixels = decoded_pixels(value.data, *draft)
                    total += pixels
                    if total > self.max_pixels:
                        raise TooManyPixelsError(
                            f"the image decodes to {pixels:,} pixels, which bring the "
                            f"request's images to {total:,}, more than the "
                            f"{self.max_pixels:,} a request may decode",
                            column=f"{sample.key}.{column}",
                            fix="send fewer or smaller images per request (the model "
                            "shrinks each to its own small size anyway)")

    def _read_text_files(self, samples: list[Sample]) -> None:
        """Replace, in place, each file sent for a modality given as text (a caption, a
        tabular column) by its UTF-8 text, which is then read, stored and shown as typed text.

        Raises:
            ModalityError: a file that is not UTF-8 text, named by its form field.
        """
        inputs = {info.name: info.input for info in self.modality_info()}
        columns = self.columns()
        for sample in samples:
            for column, value in list(sample.values.items()):
                if isinstance(value, Upload) and inputs[columns[column]] != "file":
                    sample.values[column] = _text_of(value, f"{sample.key}.{column}")

    def _decode(self, samples: list[Sample]) -> EncodedSamples:
        """The samples read and decoded by the run's loaders, from a private directory,
        within the pixel budget (`_check_pixels`); a file sent for a text modality is read as
        its text (`_read_text_files`)."""
        self._check_pixels(samples)
        self._read_text_files(samples)
        kinds = {info.name: info for info in self.modality_info()}
        columns = self.columns()
        with tempfile.TemporaryDirectory(prefix="metamodal-upload-") as tmp:
            records = []
            names: dict[str, str] = {}
            for sample in samples:
                record: dict[str, Any] = {"id": sample.key, **dict.fromkeys(columns)}
                for column, value in sample.values.items():
                    info = kinds[columns[column]]
                    if isinstance(value, Upload):
                        suffix = value.suffix if _SUFFIX.match(value.suffix) else ""
                        name = f"{sample.key}.{column}{suffix}"
                        (Path(tmp) / name).write_bytes(value.data)
                        names[str(Path(tmp) / name)] = f"{sample.key}.{column}"
                        value = name
                    elif info.input == "file":  # text would be read as a path on the server
                        raise DatasetError(
                            f"{sample.key}.{column} is text, and {info.name} is read from a "
                            "file", column=f"{sample.key}.{column}",
                            fix=f"send {sample.key}.{column} as a file upload "
                            f"(curl -F '{sample.key}.{column}=@FILE')")
                    record[column] = value
                records.append(record)
            try:
                dataset = records_dataset(records, self.run.schema, media_root=tmp)
                return self.classifier.decode(dataset)
            except LocatedError as error:
                raise _located_in_form(error, names, tmp, [s.key for s in samples]) from None

    def encode_examples(self, samples: list[Sample]) -> list[NewExample]:
        """Encode labelled samples for storing: one `NewExample` each, with its encoded row,
        its text snippet and its image thumbnail.

        Raises:
            DatasetError: a value is unusable (named by its form field), or the images
                decode to more pixels than a request may (`TooManyPixelsError`).
            ModalityError: a sample carries none of the model's modalities.
        """
        decoded = self._decode(samples)
        _require_usable(decoded, samples)
        encoded = self.classifier.embed(decoded) if self.embeds_once else decoded
        with torch.no_grad():  # a stored NaN would make every prediction of the task NaN
            _require_finite(encoded.embeddings.z if self.embeds_once else self.model.embed(
                batch_to(decoded.batch, self.classifier.device)).z, samples)
        examples = []
        for k, sample in enumerate(samples):
            row = encoded.index(torch.tensor([k]))
            tensors = {name: t.detach().cpu().contiguous() for name, t in row.tensors().items()}
            examples.append(NewExample(
                label=sample.label or "", modalities=decoded.carried_by(k),
                tensors=save_tensors(tensors), text=self._text(sample),
                thumbnail=self._thumbnail(sample)))
        return examples

    def _text(self, sample: Sample) -> str | None:
        for info in self.modality_info():
            value = sample.values.get(info.name)
            if info.input == "text" and isinstance(value, str) and value.strip():
                return value[:TEXT_SNIPPET]
        return None

    def _thumbnail(self, sample: Sample) -> bytes | None:
        """A small PNG of the sample's first image (already checked by the loader)."""
        from PIL import Image

        for info in self.modality_info():
            value = sample.values.get(info.name)
            if info.kind == "image" and isinstance(value, Upload):
                with Image.open(io.BytesIO(value.data)) as image:
                    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                    out = io.BytesIO()
                    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, "PNG")
                    return out.getvalue()
        return None

    # -- predicting ----------------------------------------------------------------------

    def _task_classifier(self, task: TaskRecord) -> tuple[FewShotClassifier, list[str]]:
        """The classifier fitted on a task's examples (kept per task version) and the ids of
        its support rows."""
        with self._fitted_guard:
            cached = self._fitted.get(task.id)
        if cached is not None and cached[0] == task.version:
            return cached[1], cached[2]
        classes = [label for label, _ in task.classes()]
        if len(classes) < 2:
            raise InsufficientSamplesError(
                f"task {task.id!r} has {len(classes)} class(es); predicting needs two",
                column="task", fix="add examples of at least two classes to the task")
        rows = [self._stored_row(task.id, example) for example in task.examples]
        try:
            support = EncodedSamples.cat(rows)
        except (IndexError, RuntimeError) as error:  # rows of sizes that do not fit
            odd = _odd_one(task.examples, rows)
            raise damaged("examples.tensors", f"its sizes differ from the other examples' "
                          f"({error})", task_id=task.id, example_id=odd.id) from None
        fitted = copy.copy(self.classifier)  # shares the loaded run
        fitted.fit_encoded(support, [e.label for e in task.examples], classes)
        ids = [e.id for e in task.examples]
        with self._fitted_guard:
            self._fitted[task.id] = (task.version, fitted, ids)
        return fitted, ids

    def _stored_row(self, task_id: str, example: StoredExample) -> EncodedSamples:
        """An example's stored tensors read back as one encoded row (`_fault_of` checks them).

        Raises:
            RunError: they cannot be read back (`metamodal.serve.store.damaged`).
        """
        form = "embeddings" if self.embeds_once else "samples"
        try:
            tensors = load_tensors(example.tensors)
            wrong = next(filter(None, (_fault_of(name, t) for name, t in tensors.items())), None)
            if wrong is None:
                row = EncodedSamples.from_tensors(tensors, form, self.modalities)
                carried = row.carried_by(0)
                if not carried:
                    wrong = "they carry none of the model's modalities"
                elif sorted(carried) != sorted(example.modalities):
                    raise damaged("examples.modalities", f"lists {example.modalities}, but "
                                  f"the stored tensors carry {carried}", task_id=task_id,
                                  example_id=example.id)
                else:
                    return row
        except KeyError as error:  # from_tensors: a tensor the model's form needs
            wrong = f"tensor {error.args[0]!r} is missing"
        except (SafetensorError, IndexError, ValueError, RuntimeError) as error:
            wrong = f"{type(error).__name__}: {error}"
        raise damaged("examples.tensors", wrong, task_id=task_id, example_id=example.id)

    def _require_comparable(self, fitted: FewShotClassifier, decoded: EncodedSamples,
                            samples: list[Sample]) -> None:
        """Refuse a query the model cannot compare with the task's examples
        (`FewShotClassifier.comparable`: a late-fusion model needs a modality that the query
        and every class's examples carry, an ensemble a member that can compare them): it
        would get even probabilities, a guess shown as an answer.

        Raises:
            ModalityError: naming the first such query and why
                (`FewShotClassifier.why_incomparable`).
        """
        comparable = fitted.comparable(decoded)
        if bool(comparable.all()):
            return
        row = int((~comparable).nonzero()[0])
        key = samples[row].key
        raise ModalityError(f"{key} cannot be compared with the task's examples (the support "
                            f"samples): {fitted.why_incomparable(decoded, row)}", column=key,
                            fix=f"give {key} a modality every class's examples carry, or "
                            "add examples of each class with the modalities it carries")

    def forget(self, task_id: str) -> None:
        """Drop the fitted classifier kept for a task (it was deleted)."""
        with self._fitted_guard:
            self._fitted.pop(task_id, None)

    def predict(self, task: TaskRecord, samples: list[Sample], k: int = 3) -> dict[str, Any]:
        """Classify query samples against a task (loaded with its tensors).

        Returns:
            ``{"task", "classes", "predictions": [...]}``: per query its label, probability,
            class probabilities, the modalities it lacked and its ``k`` nearest examples.

        Raises:
            InsufficientSamplesError: the task has fewer than two classes.
            DatasetError, ModalityError: a query is unusable (named by its form field): for
                a late-fusion model or an ensemble, one it cannot compare with the task's
                examples (`_require_comparable`); or the images decode to more pixels than a
                request may (`TooManyPixelsError`).
        """
        fitted, ids = self._task_classifier(task)
        decoded = self._decode(samples)
        _require_usable(decoded, samples)
        self._require_comparable(fitted, decoded, samples)
        query = self._batcher(decoded) if self._batcher is not None else fitted.embed(decoded)
        probabilities = torch.softmax(torch.from_numpy(fitted.decision_function_encoded(query)),
                                      -1).numpy()
        scores = fitted.support_scores(query)
        _require_finite(torch.from_numpy(np.concatenate([probabilities, scores], 1)), samples)
        by_id = {e.id: e for e in task.examples}
        predictions = []
        for row, sample in enumerate(samples):
            p = probabilities[row]
            best = int(np.argmax(p))
            order = np.argsort(-scores[row])[:max(0, k)]
            predictions.append({
                "query": sample.key, "label": fitted.classes_[best],
                "probability": float(p[best]),
                "probabilities": dict(zip(fitted.classes_, map(float, p), strict=True)),
                "missing_modalities": [m for m in self.modalities
                                       if m not in decoded.carried_by(row)],
                "nearest": [{"example": ids[j], "label": by_id[ids[j]].label,
                             "score": float(scores[row, j]),
                             "has_thumbnail": by_id[ids[j]].has_thumbnail,
                             "text": by_id[ids[j]].text} for j in order],
            })
        return {"task": task.id, "classes": list(fitted.classes_), "predictions": predictions}


def _require_usable(decoded: EncodedSamples, samples: list[Sample]) -> None:
    if not bool(decoded.usable.all()):
        first = samples[int((~decoded.usable).nonzero()[0])].key
        raise ModalityError(f"sample {first} carries none of the model's modalities",
                            column=first, fix="give each sample at least one of: "
                            + ", ".join(decoded.batch))


def _require_finite(values: torch.Tensor, samples: list[Sample]) -> None:
    """Refuse the samples whose rows of ``values`` (the model's output) are not finite: a
    number far beyond the training data (1e39 overflows float32) would answer NaN."""
    bad = ~torch.isfinite(values.reshape(len(samples), -1)).all(1)
    if bool(bad.any()):
        first = samples[int(bad.nonzero()[0])].key
        raise ModalityError(f"the model's output for sample {first} is not a finite number",
                            column=first, fix="check its numbers: a value far beyond those "
                            "the model was trained on (e.g. 1e39) overflows it")


def _odd_one(examples: list[StoredExample], rows: list[EncodedSamples]) -> StoredExample:
    """The first example whose encoded row's sizes (each tensor's shape past its row) are not
    those most of the task's examples have: the one that does not fit with the others."""
    def sizes(row: EncodedSamples) -> tuple:
        return tuple((name, tuple(t.shape[1:])) for name, t in sorted(row.tensors().items()))

    shapes = [sizes(row) for row in rows]
    usual = max(shapes, key=shapes.count)
    return next(e for e, shape in zip(examples, shapes, strict=True) if shape != usual)


def _fault_of(name: str, tensor: torch.Tensor) -> str | None:
    """What is wrong with a stored tensor of one example (None: nothing): not one row, a dtype
    the model does not take (`dtype_fault`: cat would cast it, or an encoder fail), or a
    value that is not finite."""
    if tensor.dim() == 0 or len(tensor) != 1:
        return f"tensor {name!r} holds {tensor.shape[0] if tensor.dim() else 0} rows, not one"
    if (wrong := dtype_fault(name, tensor)) is not None:
        return wrong
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return f"tensor {name!r} holds NaN or infinite values"
    return None


def _text_of(upload: Upload, field_name: str) -> str:
    """The UTF-8 text of a file sent for a modality given as text."""
    try:
        return upload.data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModalityError(f"{field_name} is a file that is not UTF-8 text, and its value "
                            "is read as text", column=field_name,
                            fix="send the text encoded as UTF-8, as a form value or a file"
                            ) from None


def _located_in_form(error: LocatedError, names: dict[str, str], tmp: str,
                     keys: list[str]) -> LocatedError:
    """``error`` located in the form: the form field (``e0.image``) as its column, instead of
    the temporary file or the row of the samples read from the form."""
    column = names.get(error.file or "")
    if column is None and error.row is not None and 1 <= error.row <= len(keys):
        key = keys[error.row - 1]
        column = key if not error.column else f"{key}.{error.column}"
    error.file, error.row, error.column = None, None, column or error.column
    error.message = error.message.replace(tmp + "/", "").replace(
        f" (the path is in {RECORDS_SOURCE})", "")  # the form's samples, read as records
    error.args = (str(error),)
    return error
