"""The encoder interface, the encoder registry, and which modality kinds each encoder fits.

Every encoder maps one modality's `ModalityBatch` to embeddings ``[B, dim]``. Rows of samples
that lack the modality (``present`` False) are never encoded: `Encoder.forward` encodes only the
present rows and scatters them back into a zero ``[B, dim]`` tensor, so absent rows neither cost
compute nor pollute BatchNorm statistics, and their output rows are exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch, all_present
from metamodal.data.kinds import kinds as modality_kinds
from metamodal.errors import ConfigError
from metamodal.registry import Registry


class Encoder(nn.Module):
    """Base class of every encoder: ``forward(batch) -> [B, dim]``; subclasses write `encode`.

    Subclasses implement ``encode(values, lengths) -> [n, dim]`` on the present rows only
    (``values`` ``[n, ...]``, ``lengths`` long ``[n]`` or ``None``). Set ``skip_absent = False``
    on an instance to encode every row (needed under ``torch.func.vmap``, which cannot take the
    data-dependent row selection); absent rows of the output are zeroed either way.

    Args:
        dim: size of the output embedding.
        input_info: what the modality's loader reports (``ModalityLoader.input_info()``).

    Example:
        >>> from metamodal.encoders import encoders
        >>> enc = encoders.create("mlp", dim=8, input_info={"features": 3})
        >>> batch = ModalityBatch(torch.randn(4, 3), torch.tensor([True, False, True, True]))
        >>> out = enc(batch)
        >>> out.shape, bool(out[1].abs().sum() == 0)
        (torch.Size([4, 8]), True)
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    """The modality kinds this encoder fits (set by `register_encoder`)."""

    batches_tasks: ClassVar[bool] = True
    """Whether `encode` can run under `torch.func.vmap` over the tasks of a meta-batch
    (`metamodal.learners.task_batching`); False where it reads values on the host."""

    under_task_vmap: bool = False
    """True while the encoder runs under `torch.func.vmap` over tasks (set by
    `metamodal.learners.task_batching.vmap_ready`), where memory formats cannot be queried."""

    def __init__(self, *, dim: int, input_info: Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(
                f"encoder {type(self).__name__}: dim must be a positive integer, got {dim!r}",
                fix="set dim to the embedding size, e.g. 64",
            )
        self.dim = dim
        self.input_info = dict(input_info)
        self.skip_absent = True

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed present rows: ``values`` ``[n, ...]``, ``lengths`` ``[n]`` -> ``[n, dim]``."""
        raise NotImplementedError

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` when ``batch`` does not have the shape this encoder expects."""

    def forward(self, batch: ModalityBatch) -> Tensor:
        """Embed a batch: ``[B, ...]`` -> ``[B, dim]``; rows of absent samples are zeros."""
        self.check(batch)
        present = batch.present.to(torch.bool)
        if not self.skip_absent:
            out = self.encode(batch.values, batch.lengths)
            return torch.where(present.unsqueeze(1), out, torch.zeros((), dtype=out.dtype))
        if all_present(present):
            return self.encode(batch.values, batch.lengths)
        rows = present.nonzero().squeeze(1)
        size = present.shape[0]
        if rows.numel() == 0:
            return torch.zeros(size, self.dim, dtype=self._dtype(), device=batch.values.device)
        lengths = None if batch.lengths is None else batch.lengths.index_select(0, rows)
        encoded = self.encode(batch.values.index_select(0, rows), lengths)
        return encoded.new_zeros(size, self.dim).index_copy(0, rows, encoded)

    def _dtype(self) -> torch.dtype:
        for parameter in self.parameters():
            return parameter.dtype
        return torch.get_default_dtype()


encoders: Registry[Encoder] = Registry("encoder")
"""Encoder classes by name: ``encoders.create("conv4", dim=64, input_info={...})``."""

ENCODER_KINDS: dict[str, tuple[str, ...]] = {}
"""Encoder name -> the modality kinds it fits (an encoder may fit several, e.g. ``gru``)."""



class _DefaultEncoders(Mapping[str, str]):
    """Modality kind -> its default encoder's name, read from the registered kinds
    (``metamodal.data.kinds``), so that a kind registered later has its default too."""

    def __getitem__(self, kind: str) -> str:
        if kind not in modality_kinds:
            raise KeyError(kind)
        return modality_kinds.get(kind).default_encoder

    def __iter__(self) -> Iterator[str]:
        return iter(modality_kinds.names())

    def __len__(self) -> int:
        return len(modality_kinds.names())

    def __repr__(self) -> str:
        return repr(dict(self))


DEFAULT_ENCODERS: Mapping[str, str] = _DefaultEncoders()
"""Modality kind -> the encoder used when a config names none (each `ModalityKind`'s
``default_encoder``): ``DEFAULT_ENCODERS["image"] == "conv4"``."""


def register_encoder(
    name: str, kinds: Iterable[str]
) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: register an encoder under ``name`` as fitting the modality ``kinds``.

    Example:
        >>> @register_encoder("identity", ["tabular"])  # doctest: +SKIP
        ... class Identity(Encoder):
        ...     def encode(self, values, lengths):
        ...         return values
        >>> ENCODER_KINDS["gru"]
        ('sequence', 'text')
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in modality_kinds]
    if unknown:
        raise ValueError(f"encoder {name!r}: unknown modality kinds {unknown}")

    def decorate(cls: type[Encoder]) -> type[Encoder]:
        encoders.register(name)(cls)
        ENCODER_KINDS[name] = kinds
        cls.kinds = kinds
        return cls

    return decorate


def encoders_for(kind: str) -> list[str]:
    """Sorted names of the encoders that fit modality ``kind``.

    Example:
        >>> encoders_for("image")
        ['conv4', 'efficientnet-lite0', 'resnet12']
    """
    return sorted(name for name, kinds in ENCODER_KINDS.items() if kind in kinds)


def check_encoder(name: str, kind: str, modality: str | None = None) -> None:
    """Raise `ConfigError` unless encoder ``name`` exists and fits modality ``kind``.

    Args:
        name: encoder registry name.
        kind: the modality's kind (``image``, ``text``, ...).
        modality: the modality's name, for the message.

    Example:
        >>> check_encoder("conv4", "image")
        >>> check_encoder("conv4", "text", "caption")
        Traceback (most recent call last):
        ...
        metamodal.errors.ConfigError: encoder 'conv4' fits image modalities, not 'caption' \
(text) (fix: use one of: bag, gru, minilm, textcnn)
    """
    encoders.get(name)
    if kind not in ENCODER_KINDS.get(name, ()):
        what = f"{modality!r} ({kind})" if modality else f"{kind} modalities"
        raise ConfigError(
            f"encoder {name!r} fits {' / '.join(ENCODER_KINDS.get(name, ()))} modalities, "
            f"not {what}",
            fix=f"use one of: {', '.join(encoders_for(kind))}",
        )


def build_encoder(
    kind: str,
    name: str | None = None,
    *,
    dim: int,
    input_info: Mapping[str, Any],
    modality: str | None = None,
    **hyper: Any,
) -> Encoder:
    """Build an encoder for a modality, checking that it fits the kind and its hyper-parameters.

    Args:
        kind: the modality's kind.
        name: encoder registry name; ``None`` picks ``DEFAULT_ENCODERS[kind]``.
        dim: the embedding size.
        input_info: the modality loader's ``input_info()``.
        modality: the modality's name (for error messages).
        **hyper: the encoder's hyper-parameters (see `metamodal.registry.hyperparameters`).

    Example:
        >>> enc = build_encoder("text", dim=16, input_info={"vocab_size": 50, "max_length": 12})
        >>> type(enc).__name__
        'BagOfEmbeddings'
    """
    if kind not in modality_kinds:
        raise ConfigError(
            f"unknown modality kind {kind!r}" + (f" of {modality!r}" if modality else ""),
            fix=f"use one of: {', '.join(modality_kinds.names())}",
        )
    name = DEFAULT_ENCODERS[kind] if name is None else name
    check_encoder(name, kind, modality)
    key = f"encoder_options.{modality}" if modality else "encoder_options"
    encoders.check_options(name, hyper, options_key=key)
    return encoders.create(name, options_key=key, dim=dim, input_info=input_info, **hyper)


def require_info(encoder: str, input_info: Mapping[str, Any], *keys: str) -> list[int]:
    """The integer values of ``keys`` in ``input_info``; `ConfigError` when one is missing.

    Example:
        >>> require_info("conv4", {"channels": 3, "height": 8, "width": 8}, "channels", "height")
        [3, 8]
    """
    values = []
    for key in keys:
        value = input_info.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"encoder {encoder!r} needs input_info[{key!r}] as a positive integer, "
                f"got {value!r}",
                fix="pass the modality loader's input_info()",
            )
        values.append(value)
    return values
