"""The verbs that measure a trained run: `evaluate`, `compare`, `report`, `report_results`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve, typed_arguments, write_json
from metamodal.api.settings import EvalSettings, ReportSettings, ZeroShotSettings
from metamodal.config import test_time_overrides
from metamodal.errors import ConfigError
from metamodal.evaluate.ablation import modality_ablation
from metamodal.evaluate.baseline import UNTRAINED, untrained_baseline
from metamodal.evaluate.protocol import EpisodeShard, EvalResult, evaluate_episodes
from metamodal.evaluate.protocol import evaluate as evaluate_model
from metamodal.evaluate.report import (
    MappingResults,
    format_ablation_table,
    format_results_table,
    write_report,
)
from metamodal.evaluate.robustness import (
    imputation_curves,
    imputation_gains,
    missing_modality_curve,
)
from metamodal.evaluate.shape import resolve_eval_shape
from metamodal.evaluate.stats import PairedDifference, paired_difference, pooled_error
from metamodal.model.test_time import apply_test_time, settings_in_force
from metamodal.runs import PreparedData, Run, load_run, load_run_data, read_run_config
from metamodal.train.logger import read_metrics

Curves = dict[str, list[EvalResult]]
"""Modality -> results per drop rate (0, 25, 50, 75%)."""


def _rows(results: Sequence[EvalResult]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]


def _shape(settings: Any, prepared: PreparedData, classes: list[str],
           split: str = "test") -> dict[str, Any]:
    """The episode keywords of `metamodal.evaluate.protocol.evaluate` from an `EpisodeShape`:
    ways and queries the user left unset take the default shape, lowered (with a warning) to
    what ``classes`` can supply."""
    ways, shots, queries = resolve_eval_shape(
        prepared.store, classes, settings.ways, settings.shots, settings.queries,
        file=prepared.dataset.root, split=split)
    return dict(ways=ways, shots=shots, queries=queries, episodes=settings.episodes_count,
                seed=settings.seed)


def _aligned_metric_run(run_dir: str | Path, run: Run) -> bool:
    """Whether ``run`` trained an alignment and fills embeddings that imputation can replace
    (a metric learner with early fusion)."""
    return ("alignment" in read_run_config(run_dir) and not run.model.late
            and run.model.capabilities().embeds_once)


@dataclass
class EvalReport:
    """What `evaluate` measured: the run, the untrained baseline on the same episodes, chance,
    and the optional ablation, robustness and imputation.

    Args:
        name: the method (``learner+fusion``).
        result: its accuracy over the episodes.
        baseline: the untrained-encoders baseline (None when not asked for).
        run: the run directory.
        split: the split evaluated on.
        chance: 1 / ways (None when fixed episodes differ in ways).
        pooled: for fixed episodes, the error over all query items and its interval over runs.
        ablation: each modality alone and each one left out.
        robustness: the missing-modality curves.
        imputation: per modality, the curves of masking it and of imputing it.
        task: the label column evaluated (None: the main label of a single-task run).
        tasks: for a multi-task run evaluated on every task, each further task's label
            column -> its result on episodes of its own classes (`metamodal.train.multitask`).
        test_time: the test-time settings in force (`metamodal.config.TestTime` as a dict):
            one, or one per member of an ensemble.
        joint_transduction: for an ensemble, whether its members' transduction steps were
            taken jointly (`metamodal.model.EnsembleModel.refines_jointly`); None otherwise.
    """

    name: str
    result: EvalResult
    baseline: EvalResult | None = None
    run: str = ""
    split: str = "test"
    chance: float | None = None
    pooled: dict[str, Any] | None = None
    ablation: list[EvalResult] | None = None
    robustness: Curves | None = None
    imputation: dict[str, Curves] | None = None
    task: str | None = None
    tasks: dict[str, EvalResult] | None = None
    test_time: list[dict[str, Any]] | None = None
    joint_transduction: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``metamodal eval --json``: at least accuracy (0..1), ci95, episodes,
        ways and shots, then the run, split, baseline, chance and the optional parts; its
        ``name`` is the evaluated model's (`name`), with the test-time settings in force
        (``test_time``) and, for an ensemble, ``joint_transduction``."""
        output: dict[str, Any] = {**self.result.to_dict(), "name": self.name, "run": self.run,
                                  "split": self.split}
        if self.test_time is not None:
            output["test_time"] = [dict(t) for t in self.test_time]
        if self.joint_transduction is not None:
            output["joint_transduction"] = self.joint_transduction
        if self.task is not None:
            output["task"] = self.task
        if self.tasks:
            output["tasks"] = {name: {**r.to_dict(), "chance": 1 / r.ways if r.ways else None}
                               for name, r in self.tasks.items()}
        if self.baseline is not None:
            output["baseline"] = {UNTRAINED: self.baseline.to_dict()}
        output["chance"] = self.chance
        if self.pooled is not None:
            output.update(self.pooled)
        if self.ablation is not None:
            output["ablation"] = _rows(self.ablation)
        if self.robustness is not None:
            output["robustness"] = {m: _rows(rs) for m, rs in self.robustness.items()}
        if self.imputation:
            output["imputation"] = {m: {k: _rows(v) for k, v in rows.items()}
                                    for m, rows in self.imputation.items()}
        return output

    def imputation_gains(self) -> dict[str, list[tuple[float, float, float]]]:
        """Per modality, (drop rate, mean gain of imputing over masking, its paired 95%
        interval) at each rate (empty without imputation)."""
        return imputation_gains(self.imputation) if self.imputation else {}

    def table(self) -> str:
        """The terminal rendering: the results table, chance, and the optional parts."""
        named = {self.name: self.result}
        if self.baseline is not None:
            named[UNTRAINED] = self.baseline
        if self.task is not None:
            named = {f"{key} [{self.task}]": value for key, value in named.items()}
        named.update({f"{self.name} [{column}]": r for column, r in (self.tasks or {}).items()})
        lines = [format_results_table(named)]
        if self.chance:
            # a further task's episodes hold as many classes as its labels supply
            others = "".join(f"; [{column}] {100 / r.ways:.1f}% ({r.ways}-way)"
                             for column, r in (self.tasks or {}).items() if r.ways)
            lines.append(f"chance: {100 * self.chance:.1f}%"
                         + (f" ({self.result.ways}-way){others}" if others else ""))
        if self.pooled is not None:
            half = self.pooled["error_ci95"]
            interval = f" ± {100 * half:.2f}" if half is not None else ""
            lines.append(f"error over all {self.pooled['query_items']} query items of "
                         f"{self.pooled['runs']} runs: {100 * self.pooled['error']:.2f}%"
                         f"{interval} (95% interval over runs)")
        if self.ablation is not None:
            lines.append(format_ablation_table(self.ablation))
        for modality, rows in (self.robustness or {}).items():
            lines.append(f"without {modality}: " + "  ".join(
                f"{100 * r.accuracy:.1f}±{100 * r.ci95:.1f}" for r in rows))
        if self.imputation:
            gains = self.imputation_gains()
            for modality, rows in self.imputation.items():
                lines.append(f"without {modality}, imputed vs masked: " + "  ".join(
                    f"{100 * (m.drop or {}).get(modality, 0):.0f}%: {100 * i.accuracy:.1f} vs "
                    f"{100 * m.accuracy:.1f} ({100 * g[1]:+.1f}±{100 * g[2]:.1f})"
                    for m, i, g in zip(rows["masking"], rows["imputation"], gains[modality],
                                       strict=True)))
        return "\n".join(lines)


def _model(run: Run, learner: str | None, test_time: Mapping[str, Any]) -> Any:
    """The run's model, or its backbone under another learner (a copy) with the run's
    test-time settings updated by ``test_time`` (None keeps the run's), checked against that
    learner."""
    if not learner:
        return run.model
    if run.ensemble is not None:
        raise ConfigError("an ensemble run cannot be evaluated under another learner",
                          file=run.path, column="learner",
                          fix="evaluate the ensemble as it is (drop learner / --learner), or "
                          "its member runs one by one")
    from metamodal.learners import learners

    model = copy.deepcopy(run.model)
    model.learner = learners.create(learner, dim=model.backbone.fusion.out_dim)
    config = run.config.updated({k: v for k, v in test_time.items() if v is not None})
    apply_test_time(model, config, run.preprocessor,
                    source=f"{run.path / 'config.toml'} under --learner {learner}")
    return model.eval()


def evaluate(run: str | Path | None = None, settings: EvalSettings | None = None,
             **options: Any) -> EvalReport:
    """Evaluate a run on test episodes: mean accuracy with a 95% interval, beside the
    untrained-encoders baseline and chance on the same episodes (``metamodal eval``).

    Args:
        run: the run directory.
        settings: an `EvalSettings`; ``options`` (its field names) override it.

    Returns:
        an `EvalReport`.

    Raises:
        RunError: the run directory is incomplete or damaged.
        DatasetError: the data cannot supply the episodes asked for.

    Example:
        >>> report = evaluate("runs/demo", shots=5, episodes_count=600)  # doctest: +SKIP
        >>> report.result.accuracy, report.result.ci95  # doctest: +SKIP
    """
    s = resolve(EvalSettings, settings, {"run": run, **options}, verb="evaluate")
    _check_episode_file(s)
    if s.imputation and (s.learner or s.modalities):  # refused before minutes of evaluation
        flag = "--learner" if s.learner else "--modalities"
        raise ConfigError(f"imputation measures the run as trained, imputing each of its "
                          f"modalities from the others, which {flag} would change",
                          file=s.run, column="imputation", fix=f"drop {flag} or --imputation")
    from metamodal.memory import release_memory
    from metamodal.train.distributed import join

    with join("cpu") as job:  # under torchrun the processes share the episodes out
        try:
            return _evaluate(s, job if job.active else None)
        finally:
            release_memory(collect=False)  # the run's model and embeddings, for what follows


FIXED_BY_EPISODE_FILE = ("ways", "shots", "queries", "episodes_count", "ablation", "robustness",
                         "imputation")
"""`EvalSettings` fields that an episode file leaves nothing to do: its episodes have their own
shape, and the ablations draw episodes of their own."""


def _check_episode_file(s: EvalSettings) -> None:
    """Raise `ConfigError` when ``s`` names an episode file and also sets what the file fixes
    (`FIXED_BY_EPISODE_FILE`), which would otherwise be ignored without a word; warn that a
    split other than the default draws nothing (the file names its samples)."""
    if not s.episodes:
        return
    defaults = {f.name: f.default for f in fields(EvalSettings)}
    if s.split != defaults["split"]:
        warnings.warn(f"split {s.split!r} draws nothing from an episode file, whose episodes "
                      "name their samples: the results are those of the file's episodes",
                      stacklevel=3)
    given = [name for name in FIXED_BY_EPISODE_FILE if getattr(s, name) != defaults[name]]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"the episode file fixes the episodes, so {flags} cannot apply to them",
                          file=s.episodes, column=given[0],
                          fix=f"leave out {flags}, or drop --episodes to draw episodes")


def _warn_of_trained_classes(episodes: list[Any], trained: list[str], path: str) -> None:
    """Warn when an episode file's episodes draw classes the run trained on (a file written
    with ``metamodal episodes --split all``, the default, holds some)."""
    used = {c for episode in episodes for c in episode.classes}
    seen = sorted(used & set(trained))
    if seen:
        warnings.warn(f"{path}: {len(seen)} of the {len(used)} classes of its episodes are "
                      f"classes the run trained on (e.g. {seen[0]!r}): the score is not one of "
                      "unseen classes; write the file with `metamodal episodes --split test`",
                      stacklevel=4)


def _evaluate(s: EvalSettings, shard: EpisodeShard | None) -> EvalReport:
    """`evaluate` with its settings resolved; ``shard``: this process's part of a job."""
    test_time = test_time_overrides(s)  # under another learner, checked against that one
    loaded = load_run(s.run, test_time=None if s.learner else test_time,
                      joint_transduction=s.joint_transduction)
    prepared = load_run_data(loaded, s.data, progress=s.progress)
    classes = prepared.classes(s.split)
    seen = sorted(set(classes) & set(loaded.split.train)) if s.split in ("test", "val") else []
    if seen and not s.episodes:
        warnings.warn(f"{len(seen)} of the {len(classes)} {s.split} classes of the data were "
                      f"classes the run trained on (e.g. {seen[0]!r}): the score is not one of "
                      "unseen classes; give --data a dataset whose splits.toml keeps them out",
                      stacklevel=3)
    model = _model(loaded, s.learner, test_time)
    in_force = [asdict(t) for t in settings_in_force(model)]
    columns = _task_columns(s, loaded)
    others: dict[str, EvalResult] | None = None
    if s.task is not None and s.task != columns[0]:
        model, prepared, classes = _task(s, loaded, model, prepared, classes,
                                         columns.index(s.task))
    elif s.task is None and len(columns) > 1 and not s.episodes:
        others = {}
        for t in range(1, len(columns)):
            task_model, task_data, task_classes = _task(s, loaded, model, prepared, classes, t)
            others[columns[t]] = evaluate_model(
                task_model, task_data.store, task_classes, progress=s.progress,
                modalities=list(s.modalities) if s.modalities else None,
                **_shape(s, task_data, task_classes, s.split))
    modalities = list(s.modalities) if s.modalities else None
    shape = {} if s.episodes else _shape(s, prepared, classes, s.split)
    common = {**shape, "modalities": modalities}
    models = [model] + ([untrained_baseline(loaded.model, seed=s.seed)] if s.baseline else [])
    pooled = None
    if s.episodes:
        from metamodal.data.episode_files import read_episode_file

        episodes = read_episode_file(s.episodes, prepared.store, modalities=[])  # ids only
        _warn_of_trained_classes(episodes, loaded.split.train, s.episodes)
        results = [evaluate_episodes(m, prepared.store, episodes, modalities=modalities,
                                     shard=shard) for m in models]
        counts = [len(e.query_ids) for e in episodes]
        error, half = pooled_error(results[0].accuracies, counts)
        pooled = {"error": error, "error_ci95": half if half == half else None,
                  "query_items": sum(counts), "runs": len(counts)}
    else:
        results = [evaluate_model(m, prepared.store, classes, progress=s.progress, shard=shard,
                                  **common) for m in models]
    name = f"{s.learner}+{loaded.config.fusion}" if s.learner else loaded.name
    report = EvalReport(name=name, result=results[0],
                        baseline=results[1] if s.baseline else None, run=str(s.run),
                        split=s.split, pooled=pooled,
                        chance=1 / results[0].ways if results[0].ways else None,
                        task=s.task or (columns[0] if len(columns) > 1 else None),
                        tasks=others, test_time=in_force,
                        joint_transduction=getattr(model, "refines_jointly", None))
    if s.ablation:
        report.ablation = modality_ablation(model, prepared.store, classes, **common)
    if s.robustness:
        report.robustness = missing_modality_curve(model, prepared.store, classes, **common)
    if s.robustness or s.imputation:
        if not s.learner and not s.modalities and _aligned_metric_run(s.run, loaded):
            from metamodal.train.alignment import load_alignment

            report.imputation = imputation_curves(model, load_alignment(s.run), prepared.store,
                                                  classes, **shape)
        elif s.imputation:
            raise ConfigError("imputation needs a run that trained an alignment, with a metric "
                              "learner and early fusion", file=s.run, column="imputation",
                              fix="train with --align-weight (or drop imputation)")
    if shard is None or shard.rank == 0:
        write_json(s.json, report)
    return report


def _task_columns(s: EvalSettings, run: Run) -> list[str]:
    """The label columns a run was trained on (the main label first); checks ``s.task``."""
    from metamodal.train.multitask import task_columns

    columns = task_columns(run.config.tasks, run.schema, str(Path(s.run) / "config.toml"))
    if s.task is not None and s.task not in columns:
        raise ConfigError(f"the run was not trained on the task {s.task!r}", file=s.run,
                          column="task", fix=f"use one of: {', '.join(columns)}")
    if s.task is not None and s.task != columns[0] and (s.episodes or s.learner):
        raise ConfigError("a further task is evaluated on episodes drawn from its own "
                          "classes, under its own learner", column="task",
                          fix="drop --episodes / --learner, or evaluate the main task")
    return columns


def _task(s: EvalSettings, run: Run, model: Any, prepared: PreparedData, classes: list[str],
          t: int) -> tuple[Any, PreparedData, list[str]]:
    """Task ``t`` of a multi-task run: its model (the run's backbone under the task's
    learner), the data relabelled by its column and its classes within ``classes``."""
    import dataclasses

    from metamodal.errors import UnknownNameError
    from metamodal.train.multitask import load_task_heads, task_view

    columns = run.config.tasks or [run.schema.label]
    heads = load_task_heads(s.run, model, columns, run.config.task_weighting)
    try:
        store, task_classes = task_view(prepared.store, prepared.dataset, columns[t], classes)
    except UnknownNameError:
        raise ConfigError(f"the dataset does not declare the label column {columns[t]!r}",
                          file=prepared.dataset.root / "dataset.toml", column="labels",
                          fix=f'list it in labels = [...], or evaluate with --task '
                          f'{columns[0]}') from None
    task_model = heads.model(model, t).to(next(model.parameters()).device).eval()
    return task_model, dataclasses.replace(prepared, store=store), task_classes


@dataclass
class Comparison:
    """Several methods evaluated on the same episodes, side by side.

    Args:
        results: method name -> its result (the same episodes for all).
    """

    results: dict[str, EvalResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Method name -> its result as a dict."""
        return {name: r.to_dict() for name, r in self.results.items()}

    def table(self) -> str:
        """The results table: accuracy with its 95% interval, macro-F1 and episodes."""
        return format_results_table(self.results)

    def difference(self, a: str, b: str) -> PairedDifference:
        """The paired difference of method ``a``'s per-episode accuracy minus ``b``'s."""
        return paired_difference(self.results[a], self.results[b])


def compare(results: Mapping[str, EvalResult | EvalReport]) -> Comparison:
    """Put results of several methods (evaluated on the same episodes) side by side.

    Args:
        results: method name -> an `EvalResult` or the `EvalReport` of `evaluate`.

    Example:
        >>> from metamodal.evaluate.protocol import EvalResult
        >>> a = EvalResult(0.8, 0.02, 0.8, 2, 5, 1, 15, 0, accuracies=[0.7, 0.9])
        >>> b = EvalResult(0.6, 0.02, 0.6, 2, 5, 1, 15, 0, accuracies=[0.6, 0.6])
        >>> round(compare({"a": a, "b": b}).difference("a", "b").mean, 3)
        0.2
    """
    if not isinstance(results, Mapping):
        raise ConfigError(f"compare takes a mapping of name -> result, not a "
                          f"{type(results).__name__}", column="results",
                          fix='e.g. compare({"protonet": report_a, "maml": report_b})')
    unpacked = {name: r.result if isinstance(r, EvalReport) else r for name, r in results.items()}
    for name, result in unpacked.items():
        if not isinstance(result, EvalResult):
            raise ConfigError(f"compare: {name!r} is a {type(result).__name__}, not a result",
                              column="results", fix="give what evaluate returns")
    if len({r.episode_digest for r in unpacked.values() if r.episode_digest}) > 1:
        raise ConfigError("compare: the results were measured on different episodes, so their "
                          "episodes cannot be paired", column="results",
                          fix="evaluate every method with the same seed, shape and split, or "
                          "the same --episodes file")
    return Comparison(unpacked)


@dataclass
class ReportResult:
    """Where a report was written.

    Args:
        path: the report directory (``index.html``, ``results.json``, plots).
    """

    path: Path

    def to_dict(self) -> dict[str, Any]:
        """The report's directory and page."""
        return {"report": str(self.path), "index": str(self.path / "index.html")}

    def table(self) -> str:
        """One line naming the page."""
        return f"report: {self.path / 'index.html'}"


def report(run: str | Path | None = None, settings: ReportSettings | None = None,
           **options: Any) -> ReportResult:
    """Write a run's report into ``RUN/report`` (``metamodal report``): its test accuracy
    beside the untrained baseline, the modality ablation, the missing-modality curves, the
    learning curve and, for a run that trained an alignment, retrieval, imputation, the joint
    space and zero-shot.

    Args:
        run: the run directory.
        settings: a `ReportSettings`; ``options`` (its field names) override it.

    Example:
        >>> report("runs/demo").path  # doctest: +SKIP
    """
    s = resolve(ReportSettings, settings, {"run": run, **options}, verb="report")
    if s.descriptions_from is not None:
        _check_descriptions_from(s.run, s.descriptions_from)
    curve = read_metrics(s.run)  # a damaged log is refused before the evaluation's work
    measured = evaluate(s.run, ways=s.ways, shots=s.shots, queries=s.queries,
                        episodes_count=s.episodes_count, seed=s.seed, modalities=s.modalities,
                        ablation=True, robustness=True, progress=s.progress)
    path = write_report(
        Path(s.run) / "report", results={measured.name: measured.result,
                                         UNTRAINED: measured.baseline},
        ablation=measured.ablation, robustness=measured.robustness,
        learning_curve=curve, title=f"metamodal run {Path(s.run).name}",
        mapping=_mapping_results(s, measured))
    return ReportResult(path)


def _check_descriptions_from(run: str | Path, modality: str) -> None:
    """Raise `ConfigError` unless the report of ``run`` measures zero-shot with classes
    described by ``modality``: a run that trained an alignment, without late fusion, and has
    that modality (checked before the report's evaluation, which would otherwise ignore it)."""
    document = read_run_config(run)
    train = document.get("train", {})
    why = ("trained no alignment" if "alignment" not in document else
           "fuses late, one embedding per modality" if train.get("fusion") == "late" else
           None if modality in train.get("modalities", [modality]) else
           f"has no modality {modality!r} (it has {', '.join(train['modalities'])})")
    if why is not None:
        raise ConfigError(f"--descriptions-from describes the classes of zero-shot, which the "
                          f"report measures for a run with an alignment; this run {why}",
                          file=Path(run) / "config.toml", column="descriptions_from",
                          fix="leave out --descriptions-from, or report on a run trained with "
                              "--align-weight and early fusion")


def _mapping_results(s: ReportSettings, measured: EvalReport) -> MappingResults | None:
    """The report's mapping sections for a run that trained an alignment: retrieval between
    its first two aligned modalities, the joint space, imputation vs masking (measured by
    `evaluate`), and zero-shot when the dataset has a descriptions.toml (or
    ``descriptions_from`` names a modality); None for other runs, and (with a warning) for a
    report on some modalities."""
    from metamodal.api.mapping import project, retrieve, zero_shot
    from metamodal.mapping.descriptions import DESCRIPTIONS_FILE
    from metamodal.train.alignment import load_alignment

    if "alignment" not in read_run_config(s.run):
        return None
    if s.modalities:
        warnings.warn("the cross-modal sections (retrieval, joint space, imputation, zero-shot) "
                      "map every aligned modality to the others, so they are left out of a "
                      "report on some modalities (--modalities)", stacklevel=3)
        return None
    aligner = load_alignment(s.run)
    run = load_run(s.run)
    prepared = load_run_data(run, progress=s.progress)
    results = MappingResults(
        retrieval=retrieve(s.run, query_modality=aligner.modalities[0],
                           target_modality=aligner.modalities[1], seed=s.seed,
                           progress=s.progress),
        projection=project(run, prepared, modalities=aligner.modalities),
        imputation=measured.imputation)
    described = s.descriptions_from or (prepared.dataset.root / DESCRIPTIONS_FILE).is_file()
    if described and not run.model.late:
        shots = ZeroShotSettings().shots  # its few+zero-shot counts: the most shots must fit
        ways, _, queries = resolve_eval_shape(prepared.store, prepared.split.test, s.ways,
                                              max(shots), s.queries,
                                              file=prepared.dataset.root, split="test")
        results.zero_shot = zero_shot(s.run, descriptions_from=s.descriptions_from, ways=ways,
                                      shots=shots, queries=queries,
                                      episodes_count=s.episodes_count, seed=s.seed,
                                      progress=s.progress)
    return results


@typed_arguments("report")
def report_results(
    out: str | Path,
    comparison: Comparison | Mapping[str, EvalResult],
    *,
    ablation: Sequence[EvalResult] | None = None,
    robustness: Curves | None = None,
    learning_curve_of: str | Path | None = None,
    training_seconds: Mapping[str, float] | None = None,
    mapping: MappingResults | None = None,
    title: str = "metamodal report",
) -> ReportResult:
    """Write a report of several methods (e.g. the demo's): the results table and plot, the
    paired comparisons against the baselines, and the optional sections.

    Args:
        out: the report directory.
        comparison: the methods' results (`compare`), names starting with "baseline" being the
            references of the paired comparisons.
        ablation: each modality alone / left out (`EvalReport.ablation`).
        robustness: the missing-modality curves (`EvalReport.robustness`).
        learning_curve_of: a run directory whose learning curve to plot.
        training_seconds: method -> seconds of training.
        mapping: the cross-modal sections (`MappingResults`).
        title: the report's title.
    """
    results = comparison.results if isinstance(comparison, Comparison) else dict(comparison)
    path = write_report(out, results=results, ablation=ablation, robustness=robustness,
                        learning_curve=read_metrics(learning_curve_of)
                        if learning_curve_of is not None else None,
                        training_seconds=training_seconds, title=title, mapping=mapping)
    return ReportResult(path)


@dataclass
class RunInfo:
    """What a run is: its model, its data and its split.

    Args:
        run: the run directory.
        learner: the learner's registry name.
        fusion: the fusion's registry name.
        modalities: the modalities the model accepts, in its order.
        dim: the shared embedding size.
        data: the dataset it was trained on.
        split: its class split (``train``, ``val``, ``test`` label lists).
    """

    run: str
    learner: str
    fusion: str
    modalities: list[str]
    dim: int
    data: str
    split: Any

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"run": self.run, "learner": self.learner, "fusion": self.fusion,
                "modalities": self.modalities, "dim": self.dim, "data": self.data,
                "split": {"train": self.split.train, "val": self.split.val,
                          "test": self.split.test}}

    def table(self) -> str:
        """One line per fact."""
        return "\n".join(f"{key}: {value}" for key, value in self.to_dict().items())


def run_info(run: str | Path) -> RunInfo:
    """Describe a run directory: learner, fusion, modalities, embedding size, data, split.

    Example:
        >>> run_info("runs/demo").modalities  # doctest: +SKIP
    """
    loaded = load_run(run)
    if loaded.ensemble is not None:
        return RunInfo(str(run), "ensemble", str(loaded.ensemble.get("method")),
                       list(loaded.model.modalities), loaded.config.dim, loaded.config.data,
                       loaded.split)
    return RunInfo(str(run), loaded.config.learner, loaded.config.fusion,
                   list(loaded.model.modalities), loaded.config.dim, loaded.config.data,
                   loaded.split)
