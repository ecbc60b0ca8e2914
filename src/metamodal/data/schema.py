"""The dataset schema: parse and validate ``dataset.toml``.

A dataset directory holds a ``dataset.toml`` that names the label column, an optional group
column, an optional sample table and one ``[modalities.NAME]`` table per modality::

    name = "field-guide"
    label = "species"
    labels = ["species", "genus"] # optional: several label columns (multi-task learning);
                                  # the first is `label` (either key may be left out)
    group = "family"              # optional
    samples = "samples.csv"       # optional

    [modalities.image]
    kind = "image"                # image | text | audio | sequence | tabular | video
    column = "image"
    size = 32                     # extra keys are options of the image loader

    [modalities.strokes]
    kind = "sequence"
    column = "strokes"
    encoder = "trajectory"        # optional: the encoder suited to this data, used when a
    encoder_options = { pen = 3 } # training config names none for the modality

    [modalities.measurements]
    kind = "tabular"
    columns = ["wingspan_cm", "weight_g"]

Every problem is a `DatasetError` naming the file, the key at fault (as ``column``) and a fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.data.kinds import kinds as kind_registry
from metamodal.data.kinds import modality_kind
from metamodal.data.paths import OUTSIDE_KEY, PathRefused, check_own_file
from metamodal.errors import ConfigError, DatasetError
from metamodal.io import ParseError, loads_toml, resolved

SCHEMA_FILE = "dataset.toml"
"""Name of the schema file in a dataset directory."""

_TOP_KEYS = ("name", "label", "labels", "group", "samples", OUTSIDE_KEY, "modalities")
_SPEC_KEYS = ("kind", "column", "columns", "encoder", "encoder_options")


def valid_kinds() -> list[str]:
    """Modality kinds a schema may use: the registered `ModalityKind`s (the built-in kinds
    and any kind a user registers with ``metamodal.data.kinds.register_kind``).

    Example:
        >>> valid_kinds()[:5]
        ['audio', 'image', 'sequence', 'tabular', 'text']
    """
    return kind_registry.names()


@dataclass
class ModalitySpec:
    """One modality of a dataset: its kind, the column(s) holding it and loader options.

    Args:
        name: the modality's name (the key of its ``[modalities.NAME]`` table).
        kind: a registered modality kind: ``image``, ``text``, ``audio``, ``sequence``,
            ``tabular``, ``video`` or one a user registered (`valid_kinds`).
        column: the column holding the modality (every kind but tabular).
        columns: the numeric columns of a tabular modality.
        options: extra keys of the table, passed to the kind's loader as keyword arguments.
        encoder: the encoder suited to this data (a registry name, checked when a model is
            built), used when a training config names none for the modality; ``None``: the
            kind's default.
        encoder_options: that encoder's hyper-parameters.

    Example:
        >>> spec = ModalitySpec("photo", "image", column="photo_path", options={"size": 32})
        >>> spec.source_columns()
        ['photo_path']
    """

    name: str
    kind: str
    column: str | None = None
    columns: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)

    def source_columns(self) -> list[str]:
        """The sample-table columns this modality reads, in order."""
        return list(self.columns) if self.columns is not None else [str(self.column)]

    def to_dict(self) -> dict[str, Any]:
        """The modality as its ``[modalities.NAME]`` TOML table (kind, column(s), options)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        else:
            out["column"] = self.column
        if self.encoder is not None:
            out["encoder"] = self.encoder
        if self.encoder_options:
            out["encoder_options"] = dict(self.encoder_options)
        out.update(self.options)
        return out

    @classmethod
    def from_dict(cls, name: str, table: dict[str, Any]) -> ModalitySpec:
        """The spec of a ``[modalities.NAME]`` table (the output of `to_dict`).

        Raises:
            DatasetError: the table is invalid (unknown kind, missing column, ...).
        """
        problems: list[DatasetError] = []
        specs = _parse_modalities({name: table}, None, _reporter(SCHEMA_FILE, problems))
        if problems:
            raise problems[0]
        return specs[name]


@dataclass
class DatasetSchema:
    """A parsed ``dataset.toml``.

    Args:
        name: the dataset's name (defaults to its directory's name).
        label: the column holding the class label.
        group: the column grouping classes (splits are made by group), or ``None``.
        samples: the sample table, relative to the dataset directory, or ``None`` for the
            first of ``samples.csv``, ``samples.jsonl``, ``samples.parquet``.
        modalities: modality name -> `ModalitySpec`, in file order.
        allow_outside_paths: media paths and ``samples`` may lead outside the dataset
            directory (``../``, absolute paths, symbolic links pointing out); by default
            such a path is a `DatasetError`.
        labels: every label column, ``label`` first (``labels = [...]`` in the file: one
            task per column for multi-task learning); empty means ``[label]``.
            Splits, ``group`` and everything single-task use ``label``.

    Example:
        >>> schema = DatasetSchema.from_dict(
        ...     {"name": "toy", "label": "y", "modalities": {"t": {"kind": "text", "column": "t"}}})
        >>> schema.modalities["t"].kind
        'text'
        >>> DatasetSchema.from_dict(schema.to_dict()) == schema
        True
    """

    name: str
    label: str
    group: str | None = None
    samples: str | None = None
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)
    allow_outside_paths: bool = False
    labels: list[str] = field(default_factory=list)

    @property
    def label_columns(self) -> list[str]:
        """Every label column, ``label`` first: ``labels``, or ``[label]`` when unset.

        Example:
            >>> DatasetSchema("toy", "y").label_columns
            ['y']
        """
        return list(self.labels) if self.labels else [self.label]

    def to_dict(self) -> dict[str, Any]:
        """The schema as the TOML-shaped dict it was parsed from (keys that are unset omitted),
        suitable for storing in a run config."""
        out: dict[str, Any] = {"name": self.name, "label": self.label}
        if len(self.label_columns) > 1:
            out["labels"] = self.label_columns
        if self.group is not None:
            out["group"] = self.group
        if self.samples is not None:
            out["samples"] = self.samples
        if self.allow_outside_paths:
            out[OUTSIDE_KEY] = True
        out["modalities"] = {name: spec.to_dict() for name, spec in self.modalities.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str = SCHEMA_FILE) -> DatasetSchema:
        """Parse and validate a TOML-shaped dict (the output of `to_dict`).

        Args:
            data: the schema as a dict.
            file: the file to name in error messages.

        Raises:
            DatasetError: the first problem found (see `load_schema`).
        """
        problems: list[DatasetError] = []
        schema = parse_schema(data, file=file, problems=problems)
        if problems:
            raise problems[0]
        assert schema is not None
        return schema


def dataset_holding(path: str | Path, key: str | None = None) -> Path | None:
    """The dataset directory that ``path`` is or lies inside (the nearest of it and the
    folders above it that holds a ``dataset.toml``), or None: where output must not go.

    Raises:
        OutputError: keyed ``key``, for a loop of symbolic links on the way.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / SCHEMA_FILE).write_text('label = "y"')
        >>> dataset_holding(root / "runs" / "a") == root.resolve()
        True
    """
    path = resolved(path, key)
    return next((folder for folder in (path, *path.parents) if (folder / SCHEMA_FILE).is_file()),
                None)


def check_outside_dataset(path: str | Path, key: str) -> None:
    """`ConfigError` keyed ``key`` when the output directory ``path`` is or lies inside a
    dataset directory (`dataset_holding`): metamodal writes nothing of its own there.

    Example:
        >>> import tempfile
        >>> check_outside_dataset(Path(tempfile.mkdtemp()) / "runs" / "a", "out")
    """
    dataset = dataset_holding(path, key)
    if dataset is not None:
        raise ConfigError(f"{path} is or lies inside the dataset directory {dataset}, where "
                          "nothing is written", column=key,
                          fix=f"give {key} a directory outside the dataset, e.g. one beside it")


def load_schema(root: str | Path) -> DatasetSchema:
    """Read and validate the ``dataset.toml`` of a dataset directory.

    Args:
        root: the dataset directory, or the path of its ``dataset.toml``.

    Returns:
        the parsed schema; ``name`` defaults to the directory's name.

    Raises:
        DatasetError: the file is missing or not valid TOML, ``label`` is missing, there is no
            modality, a kind is unknown, a column is missing or a value has the wrong type.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "dataset.toml").write_text(
        ...     'label = "y"\\n[modalities.caption]\\nkind = "text"\\ncolumn = "caption"\\n')
        >>> load_schema(d).modalities["caption"].column
        'caption'
    """
    problems: list[DatasetError] = []
    schema = read_schema(root, problems)
    if problems:
        raise problems[0]
    assert schema is not None
    return schema


def read_schema(root: str | Path, problems: list[DatasetError]) -> DatasetSchema | None:
    """Like `load_schema`, but append every problem to ``problems`` instead of raising.

    Returns the schema with the valid modalities only, or ``None`` when the file cannot be read
    or ``label`` is unusable. `metamodal inspect` uses it to list all problems at once.

    Example:
        >>> import tempfile
        >>> problems = []
        >>> read_schema(tempfile.mkdtemp(), problems) is None, problems[0].message
        (True, 'dataset schema not found')
    """
    path = Path(root)
    if path.name != SCHEMA_FILE or path.is_dir():
        path = path / SCHEMA_FILE
    file = str(path)
    try:
        check_own_file(path.parent, SCHEMA_FILE)
    except PathRefused as refused:
        problems.append(DatasetError(refused.message, file=file, fix=refused.fix))
        return None
    if not path.is_file():
        problems.append(
            DatasetError(
                "dataset schema not found",
                file=file,
                fix=f"create {SCHEMA_FILE} with `label = ...` and a [modalities.NAME] table, "
                "or point at the right directory",
            )
        )
        return None
    try:
        # utf-8-sig: a byte-order mark (Windows editors may write one) is not TOML syntax
        data = loads_toml(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        problems.append(DatasetError(f"not UTF-8 text ({exc})", file=file, fix="save as UTF-8"))
        return None
    except ParseError as exc:
        problems.append(
            DatasetError(
                str(exc),
                file=file,
                fix="correct the syntax at that line (strings need quotes, tables [brackets])",
            )
        )
        return None
    data.setdefault("name", path.resolve().parent.name)
    return parse_schema(data, file=file, problems=problems)


def parse_schema(
    data: dict[str, Any], *, file: str, problems: list[DatasetError]
) -> DatasetSchema | None:
    """Validate a TOML-shaped schema dict, appending every problem to ``problems``.

    Args:
        data: the parsed TOML document.
        file: the file to name in error messages.
        problems: where problems are appended.

    Returns:
        the schema with its valid modalities, or ``None`` when ``label`` is unusable.

    Example:
        >>> problems = []
        >>> data = {"label": "y", "modalities": {"a": {"kind": "tabular", "column": "x"}}}
        >>> schema = parse_schema(data, file="dataset.toml", problems=problems)
        >>> schema.modalities, problems[0].column
        ({}, 'modalities.a.column')
    """

    problem = _reporter(file, problems)
    unknown = [key for key in data if key not in _TOP_KEYS]
    if unknown:
        warnings.warn(
            f"{file}: ignoring unknown keys {unknown} (known: {', '.join(_TOP_KEYS)})",
            stacklevel=3,
        )
    strings: dict[str, str | None] = {}
    for key in ("name", "label", "group", "samples"):
        value = data.get(key)
        if value is None or (isinstance(value, str) and value.strip()):
            strings[key] = value
        else:
            problem(
                f"`{key}` must be a non-empty string, got {value!r}",
                key,
                f'write it as {key} = "..."',
            )
            strings[key] = None
    labels = _parse_labels(data.get("labels"), strings, problem)
    if labels and strings["label"] is None and "label" not in data:
        strings["label"] = labels[0]
    elif "label" not in data:
        problem(
            "`label` is missing",
            "label",
            'add `label = "COLUMN"` naming the sample-table column that holds the class',
        )
    outside = data.get(OUTSIDE_KEY, False)
    if not isinstance(outside, bool):
        problem(f"`{OUTSIDE_KEY}` must be true or false, got {outside!r}", OUTSIDE_KEY,
                f"write {OUTSIDE_KEY} = true to allow paths outside the dataset directory")
        outside = False
    label_set = set(labels) | ({strings["label"]} if strings["label"] else set())
    modalities = _parse_modalities(data.get("modalities"), label_set, problem)
    label = strings["label"]
    if label is None:
        return None
    return DatasetSchema(
        name=strings["name"] or "",
        label=label,
        group=strings["group"],
        samples=strings["samples"],
        modalities=modalities,
        allow_outside_paths=outside,
        labels=labels if len(labels) > 1 else [],
    )


def _parse_labels(value: Any, strings: dict[str, str | None], problem: Reporter) -> list[str]:
    """The ``labels`` list (``label`` first), or ``[]`` when absent or after a problem."""
    if value is None:
        return []
    fix = 'write labels = ["species", "genus"] (the first is the main label)'
    if not isinstance(value, list) or not value:
        problem(f"`labels` must be a non-empty list of column names, got {value!r}",
                "labels", fix)
        return []
    if not all(isinstance(c, str) and c.strip() for c in value):
        problem(f"`labels` must list non-empty column names, got {value!r}", "labels", fix)
        return []
    duplicated = sorted({c for c in value if value.count(c) > 1})
    if duplicated:
        problem(f"label columns listed twice: {duplicated}", "labels", "list each column once")
        return []
    label = strings.get("label")
    if label is not None and value[0] != label:
        problem(f"`labels` must start with the `label` column {label!r}, got {value[0]!r}",
                "labels", f'write labels = ["{label}", ...] or remove `label`')
        return []
    if strings.get("group") in value:
        problem(f"the group column {strings['group']!r} cannot also be a label column",
                "labels", "remove it from `labels`, or declare another group column")
        return []
    return list(value)


Reporter = Callable[[str, str, str], None]
"""Records a schema problem from (message, key, fix)."""


def _reporter(file: str, problems: list[DatasetError]) -> Reporter:
    """A `Reporter` appending `DatasetError`s that name ``file`` and the key as column."""

    def problem(message: str, key: str, fix: str) -> None:
        problems.append(DatasetError(message, file=file, column=key, fix=fix))

    return problem


def _parse_modalities(tables: Any, label: set[str] | str | None,
                      problem: Reporter) -> dict[str, ModalitySpec]:
    """The valid `ModalitySpec`s of the ``modalities`` table; problems go to ``problem``."""
    example = '[modalities.photo] with kind = "image" and column = "photo"'
    if tables is None or tables == {}:
        problem(
            "no modality is declared",
            "modalities",
            f"add at least one table such as {example}",
        )
        return {}
    if not isinstance(tables, dict):
        problem("`modalities` must be a table of tables", "modalities", f"write {example}")
        return {}
    kinds = valid_kinds()
    labels = {label} if isinstance(label, str) else set(label or ())
    specs: dict[str, ModalitySpec] = {}
    for name, table in tables.items():
        key = f"modalities.{name}"
        if not isinstance(table, dict):
            problem(f"`{key}` must be a table", key, f"write [{key}] with kind and column")
            continue
        kind = table.get("kind")
        if kind is None:
            problem(f"`{key}.kind` is missing", f"{key}.kind", f"add kind = one of {kinds}")
            continue
        if kind not in kinds:
            problem(
                f"unknown modality kind {kind!r}",
                f"{key}.kind",
                f"use one of: {', '.join(kinds)}",
            )
            continue
        spec = _parse_columns(name, kind, table, labels, problem)
        if spec is not None and _parse_encoder(spec, table, problem):
            specs[name] = spec
    return specs


def _parse_encoder(spec: ModalitySpec, table: dict[str, Any], problem: Reporter) -> bool:
    """Set the spec's suggested ``encoder`` / ``encoder_options``; False after a problem."""
    key = f"modalities.{spec.name}"
    encoder = table.get("encoder")
    options = table.get("encoder_options", {})
    if encoder is not None and (not isinstance(encoder, str) or not encoder.strip()):
        problem(f"`encoder` must be an encoder name, got {encoder!r}", f"{key}.encoder",
                'write e.g. encoder = "trajectory", or remove the key')
        return False
    if not isinstance(options, dict):
        problem(f"`encoder_options` must be a table, got {options!r}",
                f"{key}.encoder_options", "write e.g. encoder_options = { pen = 3 }")
        return False
    if options and encoder is None:
        problem("`encoder_options` without `encoder`", f"{key}.encoder_options",
                "name the encoder they are for, or remove them")
        return False
    spec.encoder, spec.encoder_options = encoder, dict(options)
    return True


def _parse_columns(
    name: str, kind: str, table: dict[str, Any], labels: set[str], problem: Reporter
) -> ModalitySpec | None:
    """The spec of one modality table with a known kind, or ``None`` after a problem."""
    key = f"modalities.{name}"
    options = {k: v for k, v in table.items() if k not in _SPEC_KEYS}
    if modality_kind(kind).multi_column:
        columns = table.get("columns")
        if "column" in table:
            problem(
                "a tabular modality takes `columns` (a list), not `column`",
                f"{key}.column",
                f'write columns = ["{table["column"]}", ...]',
            )
            return None
        if columns is None:
            problem(f"`{key}.columns` is missing", f"{key}.columns", 'add columns = ["a", "b"]')
            return None
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) and c.strip() for c in columns)
        ):
            problem(
                f"`columns` must be a non-empty list of column names, got {columns!r}",
                f"{key}.columns",
                'write columns = ["a", "b"]',
            )
            return None
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            problem(
                f"columns listed twice: {duplicated}",
                f"{key}.columns",
                "list each column once",
            )
            return None
        used = sorted(labels.intersection(columns))
        if used:
            problem(
                f"the label column {used[0]!r} cannot be a modality input",
                f"{key}.columns",
                "remove the label column from the list",
            )
            return None
        return ModalitySpec(name, kind, columns=list(columns), options=options)
    column = table.get("column")
    if "columns" in table:
        problem(
            f"a {kind} modality takes one `column`, not `columns`",
            f"{key}.columns",
            'write column = "NAME" (only tabular modalities take a list)',
        )
        return None
    if column is None:
        problem(f"`{key}.column` is missing", f"{key}.column", 'add column = "NAME"')
        return None
    if not isinstance(column, str) or not column.strip():
        problem(
            f"`column` must be a non-empty string, got {column!r}",
            f"{key}.column",
            'write column = "NAME"',
        )
        return None
    if column in labels:
        problem(
            f"the label column {column!r} cannot be a modality input",
            f"{key}.column",
            "point the modality at another column",
        )
        return None
    return ModalitySpec(name, kind, column=column, options=options)
