"""Check a dataset directory and describe it: every problem at once, and its statistics.

`inspect_dataset` never raises for a problem of the dataset: it collects all of them (schema,
sample table, ids, labels, groups, ``splits.toml``, missing or corrupt media files, NaN / inf
values) by decoding every modality with a collecting `DecodeContext`, and computes per-modality
statistics (missing rate, sizes, lengths). ``metamodal inspect DIR`` prints
`format_inspection` of it and exits non-zero when the report is not ``ok``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.data.batch import ModalityBatch
from metamodal.data.dataset import (
    MultimodalDataset,
    check_table,
    dataset_root,
    samples_path,
    usable_labels,
)
from metamodal.data.kinds import kinds, modality_kind
from metamodal.data.kinds import summary as _summary
from metamodal.data.loaders.base import DecodeContext
from metamodal.data.loading import build_loader
from metamodal.data.schema import SCHEMA_FILE, ModalitySpec, read_schema
from metamodal.data.splits import SPLITS_FILE, load_split, seeded_splits
from metamodal.data.table import read_samples
from metamodal.errors import ConfigError, DatasetError

_SHOWN_PROBLEMS = 50  # format_inspection lists at most this many problems


@dataclass
class ModalityStats:
    """Statistics of one modality.

    Args:
        name: the modality's name.
        kind: its kind.
        columns: the sample-table columns it reads.
        present: samples with a non-empty cell.
        missing_rate: fraction of samples with an empty cell, 0..1.
        details: kind-specific statistics, e.g. ``{"length": {"min": 3, "median": 7,
            "max": 12}}``; ``{min, median, max}`` dicts for ranges.

    Example:
        >>> stats = ModalityStats("photo", "image", ["photo"], present=3, missing_rate=0.25)
        >>> stats.present, stats.details
        (3, {})
    """

    name: str
    kind: str
    columns: list[str]
    present: int = 0
    missing_rate: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class InspectionReport:
    """What `inspect_dataset` found.

    Args:
        path: the dataset directory.
        name: the dataset's name (``None`` when the schema is unreadable).
        samples: number of rows of the sample table.
        classes: number of distinct labels.
        class_size: ``{"min", "median", "max"}`` samples per class (empty when unknown).
        groups: number of distinct groups, or ``None`` without a group column.
        modalities: modality name -> `ModalityStats`.
        problems: every problem found; any of them makes the dataset unusable as it is.
        warnings: observations that do not prevent use (e.g. a class with one sample, an
            unknown key in ``dataset.toml``, a group that ``splits.toml`` leaves out, seeds
            whose seeded split training would refuse).
        split: the class split the report checks in detail: ``{"seed": 0, "train": N,
            "val": N, "test": N}`` (classes per split; ``seed`` is ``None`` when
            ``splits.toml`` decides); empty when no split could be made.
        labels: every label column (``labels`` in ``dataset.toml``, the main one first) ->
            ``{"classes": N, "class_size": {...}}``.

    Example:
        >>> report = InspectionReport(path="data", problems=[DatasetError("empty id", row=3)])
        >>> report.ok, report.to_dict()["problems"][0]["row"]
        (False, 3)
    """

    path: str
    name: str | None = None
    samples: int = 0
    classes: int = 0
    class_size: dict[str, float] = field(default_factory=dict)
    groups: int | None = None
    modalities: dict[str, ModalityStats] = field(default_factory=dict)
    problems: list[DatasetError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split: dict[str, int | None] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the dataset can be loaded and decoded as it is (no problems)."""
        return not self.problems

    def table(self) -> str:
        """The findings as text (`format_inspection`)."""
        return format_inspection(self)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return {
            "path": self.path,
            "name": self.name,
            "ok": self.ok,
            "samples": self.samples,
            "classes": self.classes,
            "class_size": self.class_size,
            "groups": self.groups,
            "modalities": {
                name: {
                    "kind": m.kind,
                    "columns": m.columns,
                    "present": m.present,
                    "missing_rate": m.missing_rate,
                    **m.details,
                }
                for name, m in self.modalities.items()
            },
            "problems": [_problem_dict(p) for p in self.problems],
            "warnings": list(self.warnings),
            "split": dict(self.split),
            "labels": {name: dict(stats) for name, stats in self.labels.items()},
        }


def inspect_dataset(path: str | Path) -> InspectionReport:
    """Check a dataset directory and compute its statistics, listing every problem.

    Args:
        path: the dataset directory (or its ``dataset.toml``).

    Returns:
        the report; ``report.ok`` is False when any problem was found.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "dataset.toml").write_text(
        ...     'label = "y"\\n[modalities.note]\\nkind = "text"\\ncolumn = "note"\\n')
        >>> _ = (d / "samples.csv").write_text("id,y,note\\na,P,hi there\\na,,\\n")
        >>> report = inspect_dataset(d)
        >>> report.ok, [(p.row, p.column) for p in report.problems][:2]
        (False, [(2, 'id'), (2, 'y')])
        >>> [p.message for p in report.problems][2:]  # doctest: +NORMALIZE_WHITESPACE
        ['the sample carries no modality (every modality cell is empty)',
         'the meta-train split has 0 class(es) with at least 2 samples; a default training
          episode (5-way 1-shot) needs 5',
         'the validation split has 0 class(es) with at least 2 samples; validation needs 2']
    """
    root = dataset_root(path)
    report = InspectionReport(path=str(root))
    # warnings (unknown keys in dataset.toml, groups in no split, ...) go into the report
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _inspect(root, report)
    for message in dict.fromkeys(str(w.message) for w in caught):
        report.warnings.append(message)
    report.problems = _unique(report.problems)
    return report


def _inspect(root: Path, report: InspectionReport) -> None:
    """Fill ``report`` with the statistics and problems of the dataset at ``root``."""
    schema = read_schema(root, report.problems)
    if schema is None:
        return
    report.name = schema.name
    try:
        table = read_samples(samples_path(root, schema))
    except DatasetError as exc:
        report.problems.append(exc)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schema = usable_labels(schema, table, root / SCHEMA_FILE)
    report.warnings += [str(w.message) for w in caught]
    report.problems += check_table(table, schema, schema_file=root / SCHEMA_FILE)
    dataset = MultimodalDataset(root, schema, table)
    for column in schema.label_columns:
        if column in table.columns:
            counts = Counter(v for v in dataset.label_values(column) if v is not None)
            report.labels[column] = {"classes": len(counts),
                                     "class_size": _summary(list(counts.values()))
                                     if counts else {}}
    report.samples = len(dataset)
    sizes = Counter(label for label in dataset.labels if label is not None)
    report.classes = len(sizes)
    if sizes:
        report.class_size = _summary(list(sizes.values()))
        single = sorted(label for label, count in sizes.items() if count < 2)
        if single:
            report.warnings.append(
                f"{len(single)} class(es) have a single sample and cannot give both a support "
                f"and a query sample: {_shorten(single)}"
            )
    if dataset.groups is not None:
        report.groups = len({group for group in dataset.groups if group is not None})
    _check_split(dataset, report)
    _check_descriptions(root, sizes, report)
    for name, spec in schema.modalities.items():
        if all(column in table.columns for column in spec.source_columns()):
            report.modalities[name] = _inspect_modality(dataset, spec, report)


def format_inspection(report: InspectionReport) -> str:
    """The report as readable plain text: summary, a table of modalities, problems, verdict.

    Example:
        >>> print(format_inspection(InspectionReport(path="data", name="toy")))
        dataset toy (data)
        samples 0, classes 0
        <BLANKLINE>
        usable: no problems found
    """
    lines = [f"dataset {report.name or '?'} ({report.path})"]
    summary = f"samples {report.samples}, classes {report.classes}"
    if report.class_size:
        size = report.class_size
        summary += f" (per class: min {size['min']:g}, median {size['median']:g}, "
        summary += f"max {size['max']:g})"
    if report.groups is not None:
        summary += f", groups {report.groups}"
    lines.append(summary)
    if len(report.labels) > 1:
        for column, stats in report.labels.items():
            size = stats["class_size"]
            per = (f" (per class: min {size['min']:g}, median {size['median']:g}, "
                   f"max {size['max']:g})" if size else "")
            lines.append(f"label {column}: {stats['classes']} classes{per}")
    if report.split:
        shown = ("splits.toml" if report.split["seed"] is None
                 else f"seeded, seed {report.split['seed']}")
        lines.append(f"split ({shown}): meta-train {report.split['train']} classes, "
                     f"validation {report.split['val']}, test {report.split['test']}")
    if report.modalities:
        rows = [("modality", "kind", "missing", "details")]
        for name, m in report.modalities.items():
            details = _details_text(m.details)
            if m.kind in kinds and modality_kind(m.kind).multi_column:
                details = f"columns {', '.join(m.columns)}; {details}"
            rows.append((name, m.kind, f"{100 * m.missing_rate:.1f}%", details))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines.append("")
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(3)]
            lines.append("  ".join([*cells, row[3]]).rstrip())
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append("")
    if report.ok:
        lines.append("usable: no problems found")
        return "\n".join(lines)
    lines.append(f"{len(report.problems)} problem(s):")
    lines += [f"  {problem}" for problem in report.problems[:_SHOWN_PROBLEMS]]
    if len(report.problems) > _SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(report.problems) - _SHOWN_PROBLEMS} more")
    lines.append("not usable: fix the problems above")
    return "\n".join(lines)


def _inspect_modality(
    dataset: MultimodalDataset, spec: ModalitySpec, report: InspectionReport
) -> ModalityStats:
    """Decode one modality, collecting problems into ``report``, and describe it."""
    cells = dataset.cells(spec.name)
    present = sum(cell is not None for cell in cells)
    stats = ModalityStats(
        spec.name,
        spec.kind,
        spec.source_columns(),
        present=present,
        missing_rate=(len(cells) - present) / len(cells) if cells else 0.0,
    )
    if cells and present == 0:
        report.warnings.append(f"modality {spec.name!r} is missing in every sample")
    try:
        loader = build_loader(spec, dataset.root / SCHEMA_FILE)
    except DatasetError as exc:  # bad options in dataset.toml, or a kind without a loader
        report.problems.append(exc)
        return stats
    context = dataset.context(spec.name, report.problems)
    try:  # loaders decode unfitted with identity normalisation: enough to check every cell
        batch = loader.decode(cells, context)
    except DatasetError as exc:  # a loader may raise for a problem it cannot skip
        report.problems.append(exc)
        return stats
    stats.details = _decoded_details(spec, batch, cells, context)
    return stats


def _check_descriptions(root: Path, classes: Iterable[str], report: InspectionReport) -> None:
    """Record what ``zero-shot`` would refuse in the dataset's ``descriptions.toml``, if it
    has one (`metamodal.mapping.descriptions.read_descriptions`)."""
    from metamodal.mapping.descriptions import DESCRIPTIONS_FILE, read_descriptions

    if (root / DESCRIPTIONS_FILE).exists() or (root / DESCRIPTIONS_FILE).is_symlink():
        try:
            read_descriptions(root, classes)
        except DatasetError as exc:
            report.problems.append(exc)


DEFAULT_WAYS = 5
"""Classes of a default training episode (``metamodal train`` without ``--ways``)."""

SEEDS_CHECKED = 100
"""Without a ``splits.toml``, inspection checks the seeded splits of seeds 0 to 99."""


def _check_split(dataset: MultimodalDataset, report: InspectionReport) -> None:
    """Split the classes as training does (``splits.toml``, else seeded with seed 0, the
    split the report shows) and record what training would refuse: an unreadable splits file,
    a meta-train split with fewer usable classes than a default episode needs, a validation
    split with fewer than two usable classes (a usable class has two samples: one support,
    one query). Without a splits file, what holds for every seed is checked too: enough
    groups (or classes) for a three-way split at all, and which seeds among `SEEDS_CHECKED`
    give a split that training refuses."""
    path = dataset.root / SPLITS_FILE
    has_file = path.exists() or path.is_symlink()
    try:
        split = load_split(dataset.root, dataset.labels, dataset.groups, seed=0)
    except (DatasetError, ConfigError) as exc:
        report.problems.append(exc if isinstance(exc, DatasetError)
                               else DatasetError(exc.message, file=path, fix=exc.fix))
        return
    report.split = {"seed": None if has_file else 0, "train": len(split.train),
                    "val": len(split.val), "test": len(split.test)}
    if not dataset.classes:
        return
    sizes = Counter(label for label in dataset.labels if label is not None)
    where = str(path) if has_file else str(dataset.root)
    how = ("move groups into it in splits.toml" if has_file
           else "add classes (the seeded split keeps 60% for meta-training, 20% for validation)")
    if not has_file:
        _check_every_seed(dataset, sizes, report)
    train = [c for c in split.train if sizes[c] >= 2]
    if len(train) < DEFAULT_WAYS:
        report.problems.append(DatasetError(
            f"the meta-train split has {len(train)} class(es) with at least 2 samples; a "
            f"default training episode ({DEFAULT_WAYS}-way 1-shot) needs {DEFAULT_WAYS}",
            file=where, column="train" if has_file else None,
            fix=f"{how}, or train with --ways {max(2, len(train))}" if len(train) >= 2
            else how))
    val = [c for c in split.val if sizes[c] >= 2]
    if len(val) < 2:
        report.problems.append(DatasetError(
            f"the validation split has {len(val)} class(es) with at least 2 samples; "
            "validation needs 2", file=where, column="val" if has_file else None, fix=how))


def _check_every_seed(dataset: MultimodalDataset, sizes: Counter[str],
                      report: InspectionReport) -> None:
    """What the seeded split needs whatever the seed, as warnings beside the problems of the
    seed-0 split: three groups (or classes) to make three class-disjoint splits at all; and
    the seeds (of 0 .. `SEEDS_CHECKED` - 1) whose split training would refuse."""
    unit, plural = ("group", "groups") if dataset.groups is not None else ("class", "classes")
    units = ({g for g in dataset.groups if g is not None} if dataset.groups is not None
             else set(dataset.classes))
    if len(units) < 3:
        report.warnings.append(
            f"the dataset has {len(units)} {unit}(s); a class-disjoint meta-train / validation "
            f"/ test split (made by {unit}) needs at least 3, whatever the seed: add {plural}")
        return
    short = [
        seed for seed, split in seeded_splits(dataset.labels, dataset.groups,
                                              range(1, SEEDS_CHECKED))
        if sum(sizes[c] >= 2 for c in split.train) < DEFAULT_WAYS
        or sum(sizes[c] >= 2 for c in split.val) < 2
    ]
    if short:
        report.warnings.append(
            "without splits.toml the split depends on the seed: with seed(s) "
            f"{_shorten([str(seed) for seed in short])} "
            f"(of 0..{SEEDS_CHECKED - 1} checked) the meta-train split has fewer than "
            f"{DEFAULT_WAYS} classes with 2 samples or the validation split fewer than 2, and "
            "training with that --seed fails; add classes or write a splits.toml")


def _decoded_details(
    spec: ModalitySpec, batch: ModalityBatch, cells: Sequence[Any], context: DecodeContext
) -> dict[str, Any]:
    """Statistics of a decoded modality (rows that decoded only): the decoded shape, the
    unreadable cells, the lengths, then what the modality's kind describes
    (`ModalityKind.describe`)."""
    kind = modality_kind(spec.kind)
    details: dict[str, Any] = {"decoded_shape": list(batch.values.shape[1:])}
    present = batch.present
    details["unreadable"] = sum(c is not None for c in cells) - int(present.sum())
    if batch.lengths is not None and bool(present.any()):
        details[kind.length_unit] = _summary(batch.lengths[present].tolist())
    details.update(kind.describe(cells, batch, context))
    return details


def _details_text(details: dict[str, Any]) -> str:
    """Details as ``key a..b (median m)`` text for the table."""
    parts = []
    for key, value in details.items():
        if key == "unreadable" and not value:
            continue
        if isinstance(value, dict):
            parts.append(f"{key} {value['min']:g}..{value['max']:g} (median {value['median']:g})")
        elif isinstance(value, list):
            parts.append(f"{key} {'x'.join(str(v) for v in value)}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _shorten(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _unique(problems: list[DatasetError]) -> list[DatasetError]:
    """``problems`` without repeats, in order."""
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for problem in problems:
        key = (type(problem), problem.message, problem.file, problem.row, problem.column)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def _problem_dict(problem: DatasetError) -> dict[str, Any]:
    return {
        "error": type(problem).__name__,
        "message": problem.message,
        "file": problem.file,
        "row": problem.row,
        "column": problem.column,
        "fix": problem.fix,
        "text": str(problem),
    }
