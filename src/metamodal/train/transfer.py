"""Transfer (``--init-from RUN``): start a model from the weights of any finished run, matched
tensor by tensor, and the table of what was reused, newly initialised or dropped
(``transfer.json`` in the run directory).

Every tensor of the model's state (parameters and buffers such as BatchNorm statistics, of the
encoders, the fusion and the learner) takes the source run's tensor of the same name and
shape, with two further conditions that keep a copied tensor meaning what it meant:

- a modality's encoder is reused only when the fitted loaders of the two runs agree
  (`loader_difference`): same options (image size, channels, mel bands, ...), same text
  vocabulary (row ``k`` of an embedding table is word ``k`` of the vocabulary), same tabular
  columns. Standardisation statistics (per-channel or per-feature mean and standard deviation)
  are not compared: each run standardises its own data, so an encoder sees inputs of the same
  scale in both;
- the fusion is reused only when the source fused the same modalities in the same order: its
  tensors are stacked per modality slot (a gate, a missing-modality token per modality), so
  the slot of one modality must not be handed to another.

What is not reused keeps this run's fresh initialisation (seeded by ``seed``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from metamodal.errors import ConfigError, RunError
from metamodal.io import atomic_write_json
from metamodal.runs.directory import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    check_finished,
    read_run_config,
)
from metamodal.runs.weights import WEIGHTS_FILE

log = logging.getLogger(__name__)

TRANSFER_FILE = "transfer.json"
STATISTICS = ("fitted", "mean", "std")
"""Loader state that is not compared: the standardisation statistics of each run's data."""

REUSED, NEW, DROPPED = "reused", "newly initialised", "dropped"


def loader_difference(source: Mapping[str, Any] | None, own: Mapping[str, Any] | None) -> str:
    """What differs between two fitted loaders' states (``""`` when they agree), ignoring the
    standardisation statistics (`STATISTICS`).

    Example:
        >>> a = {"kind": "text", "options": {"max_length": 32}, "vocab": ["a", "b"]}
        >>> loader_difference(a, {**a, "vocab": ["b", "a"]})
        'vocabulary'
        >>> loader_difference({"kind": "image", "options": {"size": [8, 8]}, "mean": [0.1]},
        ...                   {"kind": "image", "options": {"size": [16, 16]}, "mean": [0.2]})
        'size 8x8 -> 16x16'
    """
    if source is None or own is None:
        return "the source has no such loader" if source is None else "no loader here"
    parts = []
    for key in sorted((set(source) | set(own)) - set(STATISTICS)):
        a, b = source.get(key), own.get(key)
        if a == b:
            continue
        if key == "options" and isinstance(a, dict) and isinstance(b, dict):
            for option in sorted(set(a) | set(b)):
                if a.get(option) != b.get(option):
                    parts.append(f"{option} {_show(a.get(option))} -> {_show(b.get(option))}")
        elif key == "vocab":
            parts.append("vocabulary")
        else:
            parts.append(f"{key} {_show(a)} -> {_show(b)}")
    return "; ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    return json.dumps(value) if not isinstance(value, str) else value


@dataclass
class TransferRow:
    """One part of the model in the transfer table.

    Args:
        part: ``encoder NAME``, ``fusion`` or ``learner``.
        status: ``reused``, ``partly reused``, ``newly initialised`` or ``dropped`` (in the
            source only).
        reused: tensors copied from the source.
        new: tensors of this model left at their fresh initialisation.
        dropped: tensors of the source that this model does not have.
        frozen: whether the part's parameters are frozen (``--freeze``).
        why: why tensors were not reused (or dropped).
    """

    part: str
    status: str
    reused: int
    new: int
    dropped: int
    frozen: bool
    why: str


@dataclass
class Transfer:
    """What ``--init-from`` (and ``--freeze``) did to a model.

    Args:
        source: the run the weights came from (``""`` without ``--init-from``).
        rows: one `TransferRow` per part of the model (and of the source).
        tensors: state-dict name -> ``{"status": reused | newly initialised | dropped,
            "why": ...}``.
        freeze: the freeze names given.
    """

    source: str
    rows: list[TransferRow]
    tensors: dict[str, dict[str, str]] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``transfer.json`` holds)."""
        return {"source": self.source, "freeze": list(self.freeze),
                "parts": [vars(row).copy() for row in self.rows], "tensors": self.tensors}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Transfer:
        """Rebuild from `to_dict`'s output."""
        return cls(str(values["source"]), [TransferRow(**row) for row in values["parts"]],
                   dict(values.get("tensors", {})), list(values.get("freeze", [])))

    def table(self) -> str:
        """The transfer table: one line per part (see docs/transfer.md)."""
        head = (f"initialised from {self.source}" if self.source
                else "not initialised from a run")
        if self.freeze:
            head += f"; frozen: {', '.join(self.freeze)}"
        rows = [("part", "status", "reused", "new", "dropped", "frozen", "why")]
        rows += [(r.part, r.status, str(r.reused), str(r.new), str(r.dropped),
                  "yes" if r.frozen else "", r.why) for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:6], widths, strict=True)),
                            row[6]]).rstrip() for row in rows]
        return "\n".join([head, *lines])


def part_of(name: str, modalities: Sequence[str]) -> str:
    """The part of the model a state-dict name belongs to: ``encoder NAME``, ``fusion``,
    ``learner`` (or ``other``).

    Example:
        >>> part_of("backbone.encoders.image.features.0.weight", ["image"])
        'encoder image'
    """
    for modality in sorted(modalities, key=len, reverse=True):
        if name.startswith(f"backbone.encoders.{modality}."):
            return f"encoder {modality}"
    if name.startswith("backbone.fusion."):
        return "fusion"
    if name.startswith("learner."):
        return "learner"
    return "other"


def read_source(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                              list[str]]:
    """The weights, fitted loader states and modality order of the run at ``run_dir``.

    Raises:
        RunError: the directory is not a finished run, or its weights, config or
            preprocessor are missing or damaged (names the file).
    """
    run_dir = Path(run_dir)
    fix = "pass the --out directory of a finished `metamodal train` or `metamodal align`"
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        raise RunError("--init-from needs a finished run: model.safetensors is missing",
                       file=path, fix=fix)
    try:
        document = read_run_config(run_dir)
        check_finished(run_dir)
    except RunError as error:
        raise RunError(f"--init-from: {error.message}", file=error.file, column=error.column,
                       fix=error.fix) from None
    if "ensemble" in document:  # its weights are its members' side by side, not one model's
        sources = document["ensemble"].get("sources")
        named = (": " + ", ".join(map(str, sources))) if isinstance(sources, list) else ""
        raise RunError("--init-from: the run is an ensemble, whose weights are several "
                       "models'", file=Path(run_dir) / CONFIG_FILE, column="ensemble",
                       fix=f"start from one of the runs it was made of{named}")
    try:
        state = load_file(str(path))
    except (SafetensorError, RuntimeError, OSError) as error:
        raise RunError(f"--init-from: the model weights are damaged ({error})", file=path,
                       fix=fix) from None
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunError("--init-from: a tensor holds NaN or infinite values", file=path,
                           column=key, fix=fix)
    try:
        loaders = json.loads((run_dir / PREPROCESSOR_FILE).read_text())["loaders"]
        if not isinstance(loaders, dict):
            raise TypeError("loaders is not a table")
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError("--init-from: preprocessor.json is missing or damaged",
                       file=run_dir / PREPROCESSOR_FILE, fix=fix) from None
    kinds = document["model"].get("kinds")
    order = list(kinds) if isinstance(kinds, dict) else []
    return state, loaders, order


def transfer_weights(model: torch.nn.Module, run_dir: str | Path,
                     loaders: Mapping[str, Any]) -> Transfer:
    """Copy into ``model`` (a `FewShotModel`, in place) every tensor of the run at ``run_dir``
    that fits (see the module docstring) and return the `Transfer` that says what happened.

    Args:
        model: the freshly built model.
        run_dir: a finished run (of ``metamodal train`` or ``metamodal align``).
        loaders: this training's fitted loader states (``Preprocessor.state_dict()["loaders"]``).

    Raises:
        RunError: ``run_dir`` is not a finished run or is damaged (`read_source`).
        ConfigError: no tensor of the run fits this model.
    """
    state, source_loaders, source_order = read_source(run_dir)
    own = model.state_dict()
    modalities = list(model.modalities)
    fusion_why = ""
    if source_order != modalities:
        fusion_why = (f"fused modalities differ ({', '.join(source_order) or '?'} -> "
                      f"{', '.join(modalities)})")
    loader_why = {m: loader_difference(source_loaders.get(m), loaders.get(m))
                  for m in modalities if m in source_order}
    tensors: dict[str, dict[str, str]] = {}
    reused = []
    for name, tensor in own.items():
        part = part_of(name, modalities)
        modality = part.removeprefix("encoder ") if part.startswith("encoder ") else None
        if modality and loader_why.get(modality):
            why = f"loader differs: {loader_why[modality]}"
        elif name not in state:
            why = "no counterpart in the source"
            if modality and modality not in source_order:
                why += f" (it has no {modality})"
        elif part == "fusion" and fusion_why:
            why = fusion_why
        elif tuple(state[name].shape) != tuple(tensor.shape):
            why = f"shape differs ({_shape(state[name])} -> {_shape(tensor)})"
        else:
            why = ""
            reused.append(name)
        tensors[name] = {"status": NEW if why else REUSED, "why": why}
    for name in state:
        if name not in own:
            part = part_of(name, source_order)
            modality = part.removeprefix("encoder ")
            if part.startswith("encoder ") and modality not in modalities:
                why = f"not in this model (no {modality})"
            elif part.startswith("encoder ") and loader_why.get(modality):
                why = f"loader differs: {loader_why[modality]}"
            else:
                why = "not in this model"
            tensors[name] = {"status": DROPPED, "why": why}
    if not reused:
        raise ConfigError(
            f"--init-from {run_dir}: no tensor of that run fits this model ("
            + "; ".join(sorted({t["why"] for t in tensors.values() if t["why"]}))[:300] + ")",
            column="init_from", fix="initialise from a run with some of the same modalities, "
            "encoders, --dim and loader options (image size, vocabulary)")
    with torch.no_grad():
        for name in reused:
            own[name].copy_(state[name].to(own[name].dtype))
    return Transfer(str(run_dir), _rows(tensors, modalities, source_order), tensors)


def no_transfer(model: torch.nn.Module) -> Transfer:
    """The `Transfer` of a model trained from scratch (every tensor newly initialised)."""
    tensors = {name: {"status": NEW, "why": "no --init-from"} for name in model.state_dict()}
    return Transfer("", _rows(tensors, list(model.modalities), []), tensors)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _rows(tensors: Mapping[str, Mapping[str, str]], modalities: Sequence[str],
          source_order: Sequence[str]) -> list[TransferRow]:
    """One `TransferRow` per part, in model order, then the source's dropped parts."""
    names = list(dict.fromkeys([*modalities, *source_order]))
    parts: dict[str, list[tuple[str, str]]] = {}
    for name, entry in tensors.items():
        parts.setdefault(part_of(name, names), []).append((entry["status"], entry["why"]))
    order = [f"encoder {m}" for m in names] + ["fusion", "learner", "other"]
    rows = []
    for part in order:
        entries = parts.get(part)
        if not entries:
            continue
        count = {s: sum(1 for status, _ in entries if status == s) for s in (REUSED, NEW,
                                                                               DROPPED)}
        if count[REUSED] + count[NEW] == 0:
            status = DROPPED
        elif count[NEW] == 0:
            status = REUSED
        elif count[REUSED] == 0:
            status = NEW
        else:
            status = "partly reused"
        whys = list(dict.fromkeys(why for _, why in entries if why))
        rows.append(TransferRow(part, status, count[REUSED], count[NEW], count[DROPPED],
                                False, "; ".join(whys)))
    return rows


def mark_frozen(transfer: Transfer, frozen: Sequence[str], freeze: Sequence[str],
                modalities: Sequence[str]) -> list[str]:
    """Record the frozen parts (``frozen``: frozen state-dict names) in ``transfer``; returns
    the frozen parts whose weights were not all reused (frozen at their fresh
    initialisation)."""
    transfer.freeze = list(freeze)
    parts = {part_of(name, modalities) for name in frozen}
    random = []
    for row in transfer.rows:
        if row.part in parts:
            row.frozen = True
            if row.new:
                random.append(row.part)
    return random


def write_transfer(run_dir: str | Path, transfer: Transfer) -> Path:
    """Write ``transfer.json`` into ``run_dir`` (atomically)."""
    return atomic_write_json(Path(run_dir) / TRANSFER_FILE, transfer.to_dict())


def read_transfer(run_dir: str | Path) -> Transfer | None:
    """The `Transfer` a run recorded, or None when it has none (or an unreadable one)."""
    try:
        values = json.loads((Path(run_dir) / TRANSFER_FILE).read_text())
        return Transfer.from_dict(values)
    except (OSError, ValueError, KeyError, TypeError):
        return None
