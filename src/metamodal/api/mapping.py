"""The cross-modal verbs of an aligned run: `retrieve`, `zero_shot` and `project`."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve, typed_arguments, write_json
from metamodal.api.settings import RetrieveSettings, ZeroShotSettings
from metamodal.config import resolve_device
from metamodal.errors import ModalityError, RunError
from metamodal.evaluate.projection import Projection, joint_projection
from metamodal.evaluate.retrieval import RetrievalReport
from metamodal.evaluate.zeroshot import ZeroShotReport
from metamodal.memory import release_memory
from metamodal.runs import PreparedData, Run, load_run, load_run_data


@typed_arguments("retrieve")
def retrieve(
    run: str | Path | None = None,
    query_modality: str | None = None,
    target_modality: str | None = None,
    settings: RetrieveSettings | None = None,
    *,
    shared: Mapping[str, Hashable] | None = None,
    **options: Any,
) -> RetrievalReport:
    """Evaluate cross-modal retrieval of an aligned run (``metamodal align``).

    Recall@1/5/10 and median rank in both directions, instance- and class-level, on the
    run's test classes (or ``split`` of ``data``), beside a random baseline and ridge / CCA maps
    fitted on the meta-train samples over the same architecture's untrained encoders and over
    the encoders of each of ``baseline_runs`` (name -> run directory, e.g. a run trained
    without alignment).

    Args:
        run: the run directory.
        query_modality, target_modality: the two modalities (both aligned by the run).
        settings: a `RetrieveSettings`; ``options`` (its field names) override it.
        shared: class label -> what both modalities of the class show (known for generated
            data): adds the ceiling row that ranks by it.

    Returns:
        a `metamodal.evaluate.retrieval.RetrievalReport`.

    Raises:
        RunError: the run trained no alignment.
        ModalityError: the run was not aligned on one of the two modalities.

    Example:
        >>> report = retrieve("runs/align", "caption", "image")  # doctest: +SKIP
        >>> report.row("aligned encoders", "caption->image", "class").recall[1]  # doctest: +SKIP
    """
    from metamodal.evaluate.baseline import untrained_baseline
    from metamodal.evaluate.retrieval import evaluate_retrieval
    from metamodal.train.alignment import check_aligned, load_alignment

    s = resolve(RetrieveSettings, settings, {"run": run, "query_modality": query_modality,
                                             "target_modality": target_modality, **options},
                verb="retrieve")
    s = dataclasses.replace(s, device=str(resolve_device(s.device)))
    aligner = load_alignment(s.run, device=s.device)
    check_aligned(aligner, s.query_modality, s.target_modality)
    loaded = load_run(s.run, device=s.device)
    prepared = load_run_data(loaded, s.data, progress=s.progress)
    split = prepared.split
    classes = prepared.classes(s.split)
    baselines = {"untrained encoders": untrained_baseline(loaded.model, seed=s.seed)}
    for name, path in s.baseline_runs.items():
        other = load_run(path, device=s.device)
        _check_baseline(other, name, loaded, (s.query_modality, s.target_modality))
        baselines[name] = other.model
    report = evaluate_retrieval(loaded.model, prepared.store, classes, split.train,
                                s.query_modality, s.target_modality, baselines=baselines,
                                shared=shared, seed=s.seed, device=s.device)
    release_memory(collect=False)  # what the retrieval freed, for what the caller does next
    write_json(s.json, report)
    return report


def _check_baseline(run: Run, name: str, aligned: Run, modalities: Sequence[str]) -> None:
    """Refuse a baseline run (``--baseline-run NAME=RUN``) whose encoders cannot read the
    aligned run's decoded samples: one without an encoder of the two modalities, or one that
    decodes them otherwise (another vocabulary, size or fitted statistics).

    Raises:
        ModalityError: a modality the baseline run has no encoder for.
        RunError: naming the baseline's preprocessor.json and the loader.
    """
    from metamodal.runs.directory import PREPROCESSOR_FILE
    from metamodal.train.transfer import loader_difference

    missing = [m for m in modalities if m not in run.model.modalities]
    if missing:
        raise ModalityError(f"baseline run {name!r} has no encoder of {missing[0]!r}",
                            file=run.path, column="baseline_runs",
                            fix="give a baseline run trained with both modalities")
    ours = aligned.preprocessor.state_dict()["loaders"]
    theirs = run.preprocessor.state_dict()["loaders"]
    for modality in modalities:
        if theirs.get(modality) != ours.get(modality):
            what = loader_difference(ours.get(modality), theirs.get(modality))
            raise RunError(
                f"baseline run {name!r} decodes {modality!r} otherwise than the aligned run "
                f"({what or 'other fitted statistics'}): its encoders would read inputs "
                "they were not trained on", file=run.path / PREPROCESSOR_FILE,
                column=f"loaders.{modality}", fix="give a baseline run trained on the same "
                "dataset and training classes with the same preprocessing")


def zero_shot(run: str | Path | None = None, settings: ZeroShotSettings | None = None,
              **options: Any) -> ZeroShotReport:
    """Zero-shot and few+zero-shot (AM3) accuracy of a run on its test classes.

    Args:
        run: a run directory with a metric learner (e.g. ``train --align-weight``).
        settings: a `ZeroShotSettings`; ``options`` (its field names) override it.

    Returns:
        a `metamodal.evaluate.zeroshot.ZeroShotReport`.

    Raises:
        DatasetError: the descriptions are missing, empty, name an unknown class, or a class
            of the run's splits has none.
        ConfigError: both ``descriptions`` and ``description_modality`` are given.
        ModalityError: the description modality is not one of the run's, or its only one.

    Example:
        >>> print(zero_shot("runs/joint").table())  # doctest: +SKIP
    """
    from metamodal.evaluate.zeroshot import evaluate_zero_shot
    from metamodal.mapping.descriptions import read_descriptions

    s = resolve(ZeroShotSettings, settings, {"run": run, **options}, verb="zero_shot")
    s = dataclasses.replace(s, device=str(resolve_device(s.device)))
    loaded = load_run(s.run, device=s.device)
    prepared = load_run_data(loaded, s.data, progress=s.progress)
    texts = None
    if s.descriptions is not None or s.descriptions_from is None:
        source = s.descriptions if s.descriptions is not None else prepared.dataset.root
        texts = read_descriptions(source, set(prepared.store.labels))
    report = evaluate_zero_shot(loaded.model, prepared.store, prepared.split.train,
                                prepared.split.test, texts,
                                description_modality=s.descriptions_from, ways=s.ways,
                                shots=tuple(s.shots), queries=s.queries,
                                episodes=s.episodes_count, seed=s.seed, am3_steps=s.am3_steps,
                                device=s.device)
    release_memory(collect=False)  # AM3's training, for what the caller does next
    write_json(s.json, report)
    return report


@typed_arguments("project")
def project(run: str | Path | Run, prepared: PreparedData | None = None, *,
            modalities: Sequence[str] | None = None) -> Projection:
    """A 2-D picture of the joint embedding space of a run's test classes: each modality's
    embeddings of a few samples per class, projected together (see
    `metamodal.evaluate.projection.joint_projection`).

    Args:
        run: a run directory (or a loaded `Run`).
        prepared: its decoded data (default: loaded from the run's dataset).
        modalities: the modalities to show (default: all of the run's).

    Example:
        >>> project("runs/align").points.shape  # doctest: +SKIP
    """
    loaded = run if isinstance(run, Run) else load_run(run)
    unknown = [name for name in modalities or () if name not in loaded.model.modalities]
    if unknown:
        raise ModalityError(f"project: the run has no modality {', '.join(unknown)}",
                            column="modalities",
                            fix=f"choose among {', '.join(loaded.model.modalities)}")
    prepared = prepared if prepared is not None else load_run_data(loaded)
    return joint_projection(loaded.model, prepared.store, prepared.split.test,
                            modalities=modalities)
