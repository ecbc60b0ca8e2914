"""The verbs that classify new samples with a run: `predict` and `worked_episode`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve, typed_arguments, write_json
from metamodal.api.settings import PredictSettings
from metamodal.config import test_time_overrides
from metamodal.errors import ConfigError
from metamodal.io import resolved


@dataclass
class PredictResult:
    """The predictions of `predict`.

    Args:
        classes: the support set's classes, in the order of the probabilities.
        predictions: one dict per query sample: ``id``, ``prediction``, ``probability`` (of
            the prediction) and ``probabilities`` (class -> probability).
    """

    classes: list[str]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``metamodal predict --json``."""
        return {"classes": self.classes, "predictions": self.predictions}

    def table(self) -> str:
        """One line per query sample: id, prediction and its probability."""
        width = max((len(str(r["id"])) for r in self.predictions), default=2)
        lines = [f"{'id':<{width}}  prediction  probability"]
        lines += [f"{r['id']:<{width}}  {r['prediction']}  {r['probability']:.3f}"
                  for r in self.predictions]
        return "\n".join(lines)


def predict(run: str | Path | None = None, settings: PredictSettings | None = None,
            **options: Any) -> PredictResult:
    """Classify query samples from a labelled support set with a run (``metamodal predict``):
    the support's classes may be any, also ones never seen in training.

    Args:
        run: the run directory.
        settings: a `PredictSettings` (``support`` and ``query`` tables, ``modalities``);
            ``options`` (its field names) override it.

    Example:
        >>> predict("runs/demo", support="support.csv", query="query.csv").table()  # doctest: +SKIP
    """
    from metamodal.classifier import FewShotClassifier
    from metamodal.runs.prepared import show_progress

    s = resolve(PredictSettings, settings, {"run": run, **options}, verb="predict")
    classifier = FewShotClassifier(s.run, modalities=s.modalities, **test_time_overrides(s),
                                   joint_transduction=s.joint_transduction)
    show_progress(classifier.loaded_run().preprocessor, s.progress)
    support = classifier.load_samples(s.support, labelled=True)
    _check_json_reads(s.json, support)
    classifier.fit_encoded(classifier.encode(support), support.labels,
                           rows=support.rows(), file=getattr(support.table, "file", None),
                           column=support.schema.label)  # errors name the table's cells
    query = classifier.load_samples(s.query)
    _check_json_reads(s.json, query)
    probabilities = classifier.predict_proba(query)
    rows = []
    for sample_id, p in zip(query.ids, probabilities, strict=True):
        best = int(p.argmax())
        rows.append({"id": sample_id, "prediction": classifier.classes_[best],
                     "probability": float(p[best]),
                     "probabilities": dict(zip(classifier.classes_, map(float, p), strict=True))})
    result = PredictResult(list(classifier.classes_), rows)
    write_json(s.json, result)
    return result


def _check_json_reads(json: str | None, samples: Any) -> None:
    """`ConfigError` keyed ``json`` when ``--json`` names a media file of ``samples``
    (a `MultimodalDataset`) that the prediction reads (it was written over with the JSON)."""
    if json and resolved(json, "json") in samples.media_files():
        raise ConfigError(f"--json {json} would overwrite a media file of the samples, which "
                          "this command reads", column="json",
                          fix="write the result to a file of its own, e.g. result.json")


@dataclass
class WorkedEpisode:
    """One episode of a run's held-out classes and the run's predictions for its queries.

    Args:
        classes: the episode's classes, in order.
        support_ids: the support samples, ``shots`` per class in class order.
        query_ids: the query samples.
        query_labels: their true classes.
        probabilities: ``[queries, ways]`` class probabilities of each query.
    """

    classes: list[str]
    support_ids: list[str]
    query_ids: list[str]
    query_labels: list[str]
    probabilities: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        """The episode and its probabilities."""
        return {"classes": self.classes, "support_ids": self.support_ids,
                "query_ids": self.query_ids, "query_labels": self.query_labels,
                "probabilities": self.probabilities}

    def table(self, queries: int | None = None) -> str:
        """The support, then each query (the first ``queries`` of them) with its classes from
        the most probable down."""
        shots = len(self.support_ids) // max(1, len(self.classes))
        labels = [c for c in self.classes for _ in range(shots)]
        lines = ["  support: " + ", ".join(f"{sid} = {label}" for sid, label in
                                           zip(self.support_ids, labels, strict=True))]
        shown = slice(None) if queries is None else slice(queries)
        for qid, truth, p in zip(self.query_ids[shown], self.query_labels[shown],
                                 self.probabilities[shown], strict=True):
            lines.append(f"  query {qid} (true class {truth}):")
            for k in sorted(range(len(p)), key=lambda k: -p[k]):
                lines.append(f"    {self.classes[k]:<24} p = {p[k]:.3f}")
        return "\n".join(lines)


@typed_arguments("worked_episode")
def worked_episode(run: str | Path, *, ways: int = 5, shots: int = 1, queries: int = 1,
                   seed: int = 0, split: str = "test") -> WorkedEpisode:
    """Draw one episode of a run's ``split`` classes (with the sampler evaluation uses) and
    predict its queries: a worked example of what the run does with classes it never saw.

    Example:
        >>> print(worked_episode("runs/demo", seed=7).table())  # doctest: +SKIP
    """
    import torch

    from metamodal.data.episodes import EpisodeSampler
    from metamodal.runs import load_run, load_run_data

    loaded = load_run(run)
    prepared = load_run_data(loaded)
    episode = EpisodeSampler(prepared.store, prepared.split.of(split), ways, shots, queries,
                             seed=seed)[0]
    model = loaded.model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model.episode_logits(episode), -1)
    return WorkedEpisode(
        list(episode.classes), list(episode.support_ids), list(episode.query_ids),
        [episode.classes[int(k)] for k in episode.query_labels], probabilities.tolist())
