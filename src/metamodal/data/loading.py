"""Build a modality's loader from its spec: the kind names the loader, the spec gives options.

`create_loader` is what decoding uses (options from ``dataset.toml`` updated by a run
config); `build_loader` is what `metamodal.data.dataset.load_dataset` and ``metamodal
inspect`` use to check a ``dataset.toml``'s options, with errors that name the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamodal.data.kinds import modality_kind
from metamodal.data.loaders.base import ModalityLoader, loaders
from metamodal.data.schema import ModalitySpec
from metamodal.errors import ConfigError, DatasetError, LocatedError, UnknownNameError

__all__ = ["build_loader", "create_loader", "loader_class_of"]


def loader_class_of(kind: str) -> type[ModalityLoader]:
    """The loader class of modality kind ``kind`` (the loader its `ModalityKind` names).

    Raises:
        UnknownNameError: no kind (or no loader) has that name.

    Example:
        >>> loader_class_of("text").__name__
        'TextLoader'
    """
    return loaders.get(modality_kind(kind).loader)  # type: ignore[return-value]


def create_loader(spec: ModalitySpec, overrides: Mapping[str, Any] | None = None) -> ModalityLoader:
    """The loader of ``spec.kind``, built from the spec's options updated by ``overrides``.

    A tabular modality's loader also gets the spec's ``columns`` (for its error messages).

    Raises:
        ConfigError: the loader rejects the options (`UnknownNameError` for an unknown name,
            e.g. a text ``tokenizer``); names the modality, with ``modalities.NAME`` as key.

    Example:
        >>> spec = ModalitySpec("m", "tabular", columns=["a", "b"])
        >>> create_loader(spec).input_info()
        {'features': 2}
    """
    options = {**spec.options, **(overrides or {})}
    if spec.columns is not None:
        options.setdefault("columns", list(spec.columns))
    where = f"modalities.{spec.name}"
    try:
        return modality_kind(spec.kind).create_loader(**options)
    except TypeError as exc:
        raise ConfigError(
            f"modality {spec.name!r}: the {spec.kind} loader rejects its options ({exc})",
            column=where,
            fix=f"use the options the {spec.kind} loader documents",
        ) from None
    except ConfigError as exc:
        if exc.column is not None and exc.column.startswith("modalities."):
            raise
        error_type = UnknownNameError if isinstance(exc, UnknownNameError) else ConfigError
        raise error_type(
            f"modality {spec.name!r}: {exc.message}", column=where, fix=exc.fix
        ) from None


def build_loader(spec: ModalitySpec, schema_file: str | Path) -> ModalityLoader:
    """The loader of a modality declared in a dataset directory's ``dataset.toml``.

    Like `create_loader`, but options the loader rejects are a `DatasetError` that names
    ``schema_file`` and the key ``modalities.NAME``: `load_dataset` and ``metamodal inspect``
    use it to check every modality's options.

    Args:
        spec: the modality, as parsed from ``schema_file``.
        schema_file: the ``dataset.toml`` the spec comes from (named in the error).

    Raises:
        DatasetError: the options are invalid (unknown option, bad value, unknown name).

    Example:
        >>> spec = ModalitySpec("photo", "image", column="photo", options={"size": -1})
        >>> try:
        ...     build_loader(spec, "dataset.toml")
        ... except DatasetError as error:
        ...     print(error.file, error.column)
        dataset.toml modalities.photo
    """
    try:
        return create_loader(spec)
    except LocatedError as exc:  # a ConfigError from the loader, or a kind without a loader
        raise DatasetError(
            f"cannot build the {spec.kind} loader: {exc.message}",
            file=str(schema_file),
            column=f"modalities.{spec.name}",
            fix=exc.fix or f"use the options the {spec.kind} loader documents",
        ) from None
