"""One public function per verb of the ``metamodal`` command; each returns a typed result."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any


def retrieve(
    run: str | Path,
    query_modality: str,
    target_modality: str,
    *,
    data: str | Path | None = None,
    split: str = "test",
    baseline_runs: Mapping[str, str | Path] | None = None,
    shared: Mapping[str, Hashable] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> Any:
    """Evaluate cross-modal retrieval of an aligned run (``metamodal align``).

    Recall@1/5/10 and median rank in both directions, instance- and class-level, on the
    run's test classes (or ``split`` of ``data``), beside a random baseline and ridge / CCA maps
    fitted on the meta-train samples over the same architecture's untrained encoders and over
    the encoders of each of ``baseline_runs`` (name -> run directory, e.g. a run trained
    without alignment).

    Args:
        run: the run directory.
        query_modality, target_modality: the two modalities (both aligned by the run).
        data: another dataset directory (default: the run's own).
        split: ``test``, ``val``, ``train`` or ``all``.
        baseline_runs: further encoders for the linear-map baselines.
        shared: class label -> what both modalities of the class show (known for generated
            data): adds the ceiling row that ranks by it.
        seed: seeds the random rankings and the untrained encoders.
        device: where encoders run.

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
    from metamodal.runs.directory import load_run, load_run_data
    from metamodal.train.alignment import check_aligned, load_alignment

    aligner = load_alignment(run, device=device)
    check_aligned(aligner, query_modality, target_modality)
    loaded = load_run(run, device=device)
    prepared = load_run_data(loaded, data)
    s = prepared.split
    classes = {"train": s.train, "val": s.val, "test": s.test,
               "all": s.train + s.val + s.test}[split]
    baselines = {"untrained encoders": untrained_baseline(loaded.model, seed=seed)}
    for name, path in (baseline_runs or {}).items():
        baselines[name] = load_run(path, device=device).model
    return evaluate_retrieval(loaded.model, prepared.store, classes, s.train, query_modality,
                              target_modality, baselines=baselines, shared=shared, seed=seed,
                              device=device)


def zero_shot(
    run: str | Path,
    *,
    descriptions: str | Path | None = None,
    description_modality: str | None = None,
    data: str | Path | None = None,
    ways: int = 5,
    shots: tuple[int, ...] = (1, 5),
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    am3_steps: int = 500,
    device: str = "cpu",
) -> Any:
    """Zero-shot and few+zero-shot (AM3) accuracy of a run on its test classes.

    Args:
        run: a run directory with a metric learner (e.g. ``train --align-weight``).
        descriptions: a ``descriptions.toml`` (class -> text); default: the dataset's own.
        description_modality: describe each class by this modality of its samples (e.g. a
            caption column) instead of a ``descriptions.toml``.
        data: another dataset directory (default: the run's own).
        ways, shots, queries, episodes, seed: the test episodes.
        am3_steps: meta-training episodes of the AM3 head (on the training classes).
        device: where the encoders run.

    Returns:
        a `metamodal.evaluate.zeroshot.ZeroShotReport`.

    Raises:
        DatasetError: the descriptions are missing, empty, name an unknown class, or a class
            of the run's splits has none.
        ConfigError: both ``descriptions`` and ``description_modality`` are given.
        ModalityError: the description modality is not one of the run's, or its only one.

    Example:
        >>> print(format_zero_shot(zero_shot("runs/joint")))  # doctest: +SKIP
    """
    from metamodal.evaluate.zeroshot import evaluate_zero_shot
    from metamodal.mapping.descriptions import read_descriptions
    from metamodal.runs.directory import load_run, load_run_data

    loaded = load_run(run, device=device)
    prepared = load_run_data(loaded, data)
    texts = None
    if descriptions is not None or description_modality is None:
        source = descriptions if descriptions is not None else prepared.dataset.root
        texts = read_descriptions(source, set(prepared.store.labels))
    return evaluate_zero_shot(loaded.model, prepared.store, prepared.split.train,
                              prepared.split.test, texts,
                              description_modality=description_modality, ways=ways, shots=shots,
                              queries=queries, episodes=episodes, seed=seed,
                              am3_steps=am3_steps, device=device)
