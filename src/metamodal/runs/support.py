"""A saved classifier's support set beside its run files: ``support.json`` (classes, modalities,
form) and ``support.safetensors`` (labels, and the embeddings or the decoded samples), written
atomically and read strictly: a missing, corrupt or inconsistent entry is a `RunError` naming
the file and the key or tensor. `metamodal.classifier.FewShotClassifier` writes and reads
them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metamodal.config import TestTime
from metamodal.data.batch import Batch, ModalityBatch, batch_to, cat_batches, index_batch
from metamodal.data.dataset import label_problems
from metamodal.data.paths import PathRefused, check_own_file
from metamodal.errors import ConfigError, RunError
from metamodal.io import ParseError, atomic_write, atomic_write_json, loads_json, sha256_file
from metamodal.learners.embeddings import Embeddings

SUPPORT_FILE = "support.safetensors"
SUPPORT_META = "support.json"
SUPPORT_FORMS = ("embeddings", "samples")
"""What a support set holds: the embedded samples (metric learners) or the decoded samples
(learners that adapt the network's weights)."""


def dtype_fault(key: str, tensor: torch.Tensor) -> str | None:
    """What is wrong with the dtype of a stored support tensor (None: nothing), by its key:
    ``present`` bool, ``labels`` and ``lengths`` int64, embeddings ``z`` float32, and a
    modality's ``values`` what the loaders decode: float32, or int64 token ids. Any other
    dtype would be cast where samples are joined, or fail inside an encoder.

    Example:
        >>> dtype_fault("image.values", torch.zeros(1, dtype=torch.float64))
        "tensor 'image.values' is float64, not float32 or int64"
    """
    last = key.rsplit(".", 1)[-1]
    wanted = {"present": (torch.bool,), "labels": (torch.long,), "lengths": (torch.long,),
              "z": (torch.float32,), "values": (torch.float32, torch.long)}.get(last)
    if wanted is None or tensor.dtype in wanted:
        return None
    names = " or ".join(str(dtype).removeprefix("torch.") for dtype in wanted)
    return f"tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}, not {names}"


def write_support(directory: str | Path, tensors: dict[str, torch.Tensor], *,
                  classes: list[str], modalities: list[str], form: str, model: str,
                  test_time: dict[str, Any], used: list[str]) -> None:
    """Write ``support.safetensors`` (``tensors``: ``labels`` long ``[S]``, then ``z`` /
    ``present`` for embeddings or ``NAME.values`` / ``NAME.present`` / ``NAME.lengths`` per
    modality for samples) and ``support.json`` into ``directory``, each atomically;
    ``model`` is the SHA-256 of the weights that embedded them (`check_support_model`),
    ``test_time`` the classifier's test-time settings (`TEST_TIME_KEYS`; None: the run's)
    and ``used`` the modalities it used, which embedded them too and which `load` gives
    back (`saved_test_time`; ``used`` checked by `read_support_meta`)."""
    directory = Path(directory)
    tensors = {key: tensor.contiguous().cpu() for key, tensor in tensors.items()}
    atomic_write(directory / SUPPORT_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(directory / SUPPORT_META, {
        "classes": classes, "modalities": modalities, "form": form, "model": model,
        "test_time": test_time, "used": used})


TEST_TIME_KEYS = (*(f.name for f in fields(TestTime)), "joint_transduction")
"""The classifier's test-time settings a saved support set records."""


def saved_test_time(path: Path, meta: dict) -> dict[str, Any]:
    """``support.json``'s test-time settings (none where it was saved before they were kept),
    checked as the constructor would check them: `RunError` naming the key otherwise."""
    saved = meta.get("test_time", {})
    fix = "fit the classifier on its support set and save it again"
    if not isinstance(saved, dict) or set(saved) - set(TEST_TIME_KEYS):
        raise RunError(f"`test_time` must be an object of {', '.join(TEST_TIME_KEYS)}",
                       file=path, column="test_time", fix=fix)
    given = {key: value for key, value in saved.items() if value is not None}
    joint = given.pop("joint_transduction", None)
    try:
        TestTime(**given).check()
    except ConfigError as error:
        raise RunError(error.message, file=path, column=f"test_time.{error.column}",
                       fix=fix) from None
    if joint is not None and not isinstance(joint, bool):
        raise RunError("joint_transduction must be true or false", file=path,
                       column="test_time.joint_transduction", fix=fix)
    return dict(saved)


def check_support_model(path: Path, meta: dict, weights: Path) -> None:
    """Refuse embeddings that other weights made: ``support.json``'s ``model`` (the SHA-256
    of the weights that embedded the support set; a folder saved before it was recorded has
    none, and is not checked) against the SHA-256 of ``weights``, the weights the classifier
    loads. Decoded samples (the ``samples`` form) are the weights' input and are not checked.

    Raises:
        RunError: keyed ``model``: other weights, or a ``model`` that is not a digest.
    """
    recorded = meta.get("model")
    if meta["form"] != "embeddings" or recorded is None:
        return
    if recorded != sha256_file(weights):
        raise RunError(f"the saved support set was embedded by other weights than "
                       f"{weights.name} (its SHA-256 differs from support.json's `model`)",
                       file=path, column="model", fix="restore the weights that were saved "
                       "with it, or fit the classifier on its support set again and save it")


def read_support_meta(path: Path) -> dict:
    """``support.json``, checked: ``classes`` a non-empty list of unique strings,
    ``modalities`` a list of strings, ``form`` ``embeddings`` or ``samples``."""
    fix = "fit the classifier on its support set and save it again"
    _check_file(path, fix)
    try:
        meta = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError("support.json is missing beside support.safetensors", file=path,
                       fix=fix) from None
    except (ParseError, OSError, UnicodeDecodeError) as error:
        raise RunError(f"support.json is corrupt ({error})", file=path, fix=fix) from None
    if not isinstance(meta, dict):
        raise RunError("support.json must hold an object", file=path, fix=fix)
    meta.setdefault("form", "embeddings")
    classes, modalities = meta.get("classes"), meta.get("modalities")
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes)):
        raise RunError("`classes` must be a non-empty list of distinct class names", file=path,
                       column="classes", fix=fix)
    problems = label_problems(classes, column="classes")  # as fit refuses them
    if problems:
        raise RunError(problems[0].message, file=path, column="classes", fix=fix)
    if (not isinstance(modalities, list) or not modalities
            or not all(isinstance(m, str) for m in modalities)
            or len(set(modalities)) < len(modalities)):
        raise RunError("`modalities` must be a non-empty list of distinct modality names",
                       file=path, column="modalities", fix=fix)
    used = meta.get("used", modalities)  # saved before it was kept: every one
    if (not isinstance(used, list) or not used or not all(m in modalities for m in used)
            or len(set(used)) < len(used)):
        raise RunError("`used` must be a non-empty list of distinct names of `modalities`",
                       file=path, column="used", fix=fix)
    if meta["form"] not in SUPPORT_FORMS:
        raise RunError(f"unknown form {meta['form']!r}", file=path, column="form", fix=fix)
    if "model" in meta and not (isinstance(meta["model"], str)
                                and re.fullmatch("[0-9a-f]{64}", meta["model"])):
        raise RunError("`model` must be the SHA-256 of the weights, 64 hex digits", file=path,
                       column="model", fix=fix)
    return meta


def _check_file(path: Path, fix: str) -> None:
    """Refuse a support file that is a link out of the classifier's folder (what it says is
    not the classifier's) or not a regular file (a FIFO would block the read for ever)."""
    try:
        check_own_file(path.parent, path.name)
    except PathRefused as refused:
        raise RunError(f"{refused.message} (not a regular file of the saved classifier)",
                       file=path, fix=fix) from None


def read_support_tensors(path: Path, meta: dict, model_modalities: list[str],
                         width: int | None = None) -> dict:
    """``support.safetensors``, checked against ``support.json`` and the model: every tensor
    present, of consistent sizes, finite, labels within the classes, embeddings ``z`` float32
    and ``width`` wide (the model's fused embedding size, for the ``embeddings`` form);
    `RunError` naming the tensor. Every row has a modality present, and every class of
    ``support.json`` has a row (else `predict` would fail later, naming no file)."""
    fix = "fit the classifier on its support set and save it again"
    _check_file(path, fix)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise RunError(f"support.safetensors is corrupt ({error})", file=path,
                       fix=fix) from None

    def need(key: str, dims: int | None = None) -> torch.Tensor:
        if key not in tensors:
            raise RunError("a tensor is missing", file=path, column=key, fix=fix)
        tensor = tensors[key]
        if dims is not None and tensor.dim() != dims:
            raise RunError(f"tensor has {tensor.dim()} dimensions, {dims} expected", file=path,
                           column=key, fix=fix)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunError("tensor holds NaN or infinite values", file=path, column=key,
                           fix=fix)
        if tensor.shape[0] != size:
            raise RunError(f"tensor has {tensor.shape[0]} rows, the labels {size}", file=path,
                           column=key, fix=fix)
        wrong = dtype_fault(key, tensor)
        if wrong is not None:
            raise RunError(wrong, file=path, column=key, fix=fix)
        return tensor

    size = -1
    labels = tensors.get("labels")
    if labels is None or labels.dim() != 1 or labels.dtype != torch.long or len(labels) == 0:
        raise RunError("`labels` must be a non-empty 1-D int64 tensor", file=path,
                       column="labels", fix=fix)
    size = len(labels)
    if int(labels.min()) < 0 or int(labels.max()) >= len(meta["classes"]):
        raise RunError(f"labels must lie in 0..{len(meta['classes']) - 1}", file=path,
                       column="labels", fix=fix)
    unknown = [m for m in meta["modalities"] if m not in model_modalities]
    if unknown:
        raise RunError(f"modalities {unknown} are not the model's", file=path.with_name(
            SUPPORT_META), column="modalities", fix=fix)
    if meta["form"] == "embeddings":
        z = need("z")
        present = need("present", 2)
        if z.dim() not in (2, 3) or (z.dim() == 3 and z.shape[1] != present.shape[1]):
            raise RunError("`z` must be [S, D] or [S, M, D] with a bool `present` [S, M]",
                           file=path, column="z", fix=fix)
        if width is not None and z.shape[-1] != width:
            raise RunError(f"`z` is {z.shape[-1]} wide; the model embeds {width} wide",
                           file=path, column="z", fix=fix)
        if present.shape[1] != len(meta["modalities"]):
            raise RunError(f"`present` has {present.shape[1]} columns, support.json names "
                           f"{len(meta['modalities'])} modalities", file=path,
                           column="present", fix=fix)
        usable, present_key = present.any(1), "present"
    else:
        for name in meta["modalities"]:
            need(f"{name}.values")
            need(f"{name}.present", 1)
            if f"{name}.lengths" in tensors:
                need(f"{name}.lengths", 1)
        usable = torch.stack([tensors[f"{name}.present"] for name in meta["modalities"]],
                             1).any(1)
        present_key = f"{meta['modalities'][0]}.present"
    if not bool(usable.all()):
        row = int(torch.nonzero(~usable)[0]) + 1
        raise RunError(f"support sample {row} has no modality present", file=path,
                       column=present_key, fix=fix)
    without = sorted(set(range(len(meta["classes"]))) - set(labels.tolist()))
    if without:
        named = ", ".join(repr(meta["classes"][k]) for k in without[:5])
        raise RunError(f"support.json names classes without a support sample: {named}"
                       f"{', ...' if len(without) > 5 else ''}", file=path.with_name(
                           SUPPORT_META), column="classes", fix=fix)
    return tensors



@dataclass
class EncodedSamples:
    """Samples in the form a run's learner adapts from: embedded (``embeddings``, for learners
    whose capabilities say ``embeds_once``: the metric learners) or decoded (``batch``, for
    learners that adapt the network's weights per task). Exactly one of the two is set once
    the samples are encoded; a decoded batch of a metric learner's samples, not yet embedded,
    has only ``batch``.

    Args:
        embeddings: the embedded samples (``S`` rows), or None.
        batch: modality name -> `ModalityBatch` of the ``S`` decoded samples, or None.
        usable: bool ``[S]``: the sample carries at least one of the used modalities.

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> mb = ModalityBatch(torch.ones(2, 3), torch.tensor([True, False]))
        >>> samples = EncodedSamples(None, {"m": mb}, torch.tensor([True, False]))
        >>> samples.form, len(EncodedSamples.cat([samples, samples]))
        ('samples', 4)
        >>> back = EncodedSamples.from_tensors(samples.tensors(), "samples", ["m"])
        >>> back.batch["m"].present.tolist(), back.usable.tolist()
        ([True, False], [True, False])
    """

    embeddings: Embeddings | None
    batch: Batch | None
    usable: torch.Tensor

    def __len__(self) -> int:
        return len(self.usable)

    @property
    def form(self) -> str:
        """``embeddings`` or ``samples`` (one of `SUPPORT_FORMS`)."""
        return "samples" if self.embeddings is None else "embeddings"

    @property
    def modalities(self) -> list[str]:
        """The modality names, in order."""
        return list(self.batch) if self.embeddings is None else list(self.embeddings.modalities)

    @property
    def carried(self) -> torch.Tensor:
        """Bool ``[S, M]``: which of the `modalities` each sample carries."""
        if self.embeddings is not None:
            return self.embeddings.present
        return torch.stack([mb.present for mb in self.batch.values()], 1)

    def carried_by(self, row: int | None = None) -> list[str]:
        """The `modalities` sample ``row`` carries; None: those any sample carries."""
        flags = self.carried.any(0) if row is None else self.carried[row]
        return [name for name, has in zip(self.modalities, flags.tolist(), strict=True) if has]

    def index(self, rows: torch.Tensor) -> EncodedSamples:
        """Rows ``rows`` (long ``[K]``) as new `EncodedSamples` of length K."""
        return EncodedSamples(
            None if self.embeddings is None else self.embeddings.index(rows),
            None if self.batch is None else index_batch(self.batch, rows),
            self.usable.index_select(0, rows))

    def split(self, sizes: Sequence[int]) -> list[EncodedSamples]:
        """Consecutive blocks of ``sizes`` rows (summing to ``len(self)``)."""
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [self.index(torch.arange(start, start + size))
                for start, size in zip(starts, sizes, strict=True)]

    @staticmethod
    def cat(items: Sequence[EncodedSamples]) -> EncodedSamples:
        """Concatenate along the sample axis (all items of one form; sequences are padded)."""
        if items[0].embeddings is not None:
            return EncodedSamples(Embeddings.cat([i.embeddings for i in items]), None,
                                  torch.cat([i.usable for i in items]))
        return EncodedSamples(None, cat_batches([i.batch for i in items]),
                              torch.cat([i.usable for i in items]))

    def to(self, device: torch.device | str) -> EncodedSamples:
        """The samples on ``device``."""
        return EncodedSamples(
            None if self.embeddings is None else self.embeddings.to(device),
            None if self.batch is None else batch_to(self.batch, device), self.usable)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors ``support.safetensors`` holds besides ``labels``: ``z`` and ``present``
        for embeddings, ``NAME.values`` / ``NAME.present`` / ``NAME.lengths`` per modality for
        samples."""
        if self.embeddings is not None:
            return {"z": self.embeddings.z, "present": self.embeddings.present}
        tensors = {}
        for name, mb in self.batch.items():
            tensors[f"{name}.values"] = mb.values
            tensors[f"{name}.present"] = mb.present
            if mb.lengths is not None:
                tensors[f"{name}.lengths"] = mb.lengths
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], form: str,
                     modalities: list[str]) -> EncodedSamples:
        """The samples back from `tensors` (checked beforehand, e.g. by
        `read_support_tensors`)."""
        if form == "embeddings":
            embeddings = Embeddings(tensors["z"], tensors["present"], modalities=modalities)
            return cls(embeddings, None, embeddings.present.any(1))
        batch = {name: ModalityBatch(tensors[f"{name}.values"], tensors[f"{name}.present"],
                                     tensors.get(f"{name}.lengths")) for name in modalities}
        return cls(None, batch, torch.stack([mb.present for mb in batch.values()], 1).any(1))
