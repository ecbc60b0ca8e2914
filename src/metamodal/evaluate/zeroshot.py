"""Zero-shot and few+zero-shot evaluation from class descriptions: nearest mapped description,
ProtoNet, and AM3 (prototype mixed with the mapped description) on the same test episodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import ConfigError, DatasetError, ModalityError
from metamodal.evaluate.embedding import embed_store
from metamodal.evaluate.episode_plans import sampled_episodes
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.stats import mean_ci95, paired_difference
from metamodal.learners.am3 import AM3
from metamodal.learners.base import EpisodeContext, class_means
from metamodal.mapping.descriptions import BagOfWords, require_descriptions
from metamodal.mapping.zeroshot import fit_am3, fit_description_map, zero_shot_logits
from metamodal.ops import squared_distances

ZERO_SHOT = "zero-shot: nearest mapped description"
PROTOTYPE = "prototypes alone (ProtoNet)"
AM3_NAME = "few+zero-shot: AM3"


@dataclass
class ZeroShotReport:
    """Results by setting (``"0-shot"``, ``"1-shot"``, ``"5-shot"``) and method, the paired
    gain of AM3 over the prototypes alone at each shot count (mean, 95% half width), and where
    the class descriptions came from."""

    results: dict[str, dict[str, EvalResult]] = field(default_factory=dict)
    gains: dict[str, tuple[float, float]] = field(default_factory=dict)
    ways: int = 5
    source: str = "descriptions.toml"

    def table(self) -> str:
        """The tables of `format_zero_shot`."""
        return format_zero_shot(self)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"ways": self.ways, "chance": 1 / self.ways, "descriptions": self.source,
                "results": {k: {m: r.to_dict() for m, r in v.items()}
                            for k, v in self.results.items()},
                "am3_gain": {k: {"mean": m, "ci95": c} for k, (m, c) in self.gains.items()}}


def _fused(emb) -> Tensor:
    """``[N, D]`` fused embeddings (late fusion: mean over present modalities)."""
    if emb.z.dim() == 2:
        return emb.z
    mask = emb.present.unsqueeze(-1).to(emb.z.dtype)
    return (emb.z * mask).sum(1) / mask.sum(1).clamp_min(1)


def _result(accuracies: list[float], name: str, ways: int, shots: int, queries: int,
            seed: int, digest: str | None) -> EvalResult:
    mean, ci = mean_ci95(accuracies)
    return EvalResult(mean, ci, float("nan"), len(accuracies), ways, shots, queries, seed,
                      accuracies=accuracies, name=name, episode_digest=digest)


class _WordFeatures:
    """Bag-of-words features of the ``descriptions.toml`` texts (vocabulary of the training
    classes' descriptions: words only a new class uses carry nothing the map has learned)."""

    def __init__(self, descriptions: Mapping[str, str], train_classes: Sequence[str],
                 test_classes: Sequence[str]) -> None:
        require_descriptions(descriptions, list(train_classes) + list(test_classes))
        words = BagOfWords().fit(descriptions[c] for c in train_classes)
        self.train = words.transform([descriptions[c] for c in train_classes])
        test = words.transform([descriptions[c] for c in test_classes])
        self._test = {c: test[k] for k, c in enumerate(test_classes)}

    def episode(self, classes: Sequence[str], query: Tensor, queries: int) -> Tensor:
        """``[ways, V]`` features of the episode's classes (the queries play no part)."""
        return torch.stack([self._test[c] for c in classes])


class _ModalityFeatures:
    """A class described by its samples' description modality (e.g. a caption column): the mean
    of their embeddings in that modality alone, leaving out an episode's own queries.

    Args:
        z: ``[N, D]`` description-modality embeddings of every store row.
        present: bool ``[N]``, rows that have the modality.
        labels: class label of every store row; modality: its name (for errors).
    """

    def __init__(self, z: Tensor, present: Tensor, labels: Sequence[str],
                 train_classes: Sequence[str], test_classes: Sequence[str], modality: str
                 ) -> None:
        self._z = z * present.unsqueeze(1).to(z.dtype)  # rows without the modality count 0
        self._present, self._modality = present, modality
        classes = list(train_classes) + list(test_classes)
        self._index = {c: k for k, c in enumerate(classes)}
        known = [k for k, label in enumerate(labels) if label in self._index]
        y = torch.tensor([self._index[labels[k]] for k in known], dtype=torch.long)
        rows = torch.tensor(known, dtype=torch.long)
        self._sums = z.new_zeros(len(classes), z.shape[1]).index_add_(0, y, self._z[rows])
        self._counts = torch.zeros(len(classes)).index_add_(0, y, present[rows].float())
        self.train = self._means(list(train_classes), self._sums[:len(train_classes)],
                                 self._counts[:len(train_classes)])

    def _means(self, classes: list[str], sums: Tensor, counts: Tensor) -> Tensor:
        if bool((counts == 0).any()):
            missing = classes[int((counts == 0).nonzero()[0])]
            raise DatasetError(
                f"class {missing!r} has no sample with modality {self._modality!r} to describe "
                "it (besides the episode's queries)", column=self._modality,
                fix=f"give the class samples with a {self._modality}, or describe the classes "
                "in descriptions.toml instead")
        return sums / counts.unsqueeze(1)

    def episode(self, classes: Sequence[str], query: Tensor, queries: int) -> Tensor:
        """``[ways, D]`` mean description embeddings of the episode's classes, each leaving out
        that class's ``queries`` query rows (``query`` is ordered by class)."""
        rows = torch.tensor([self._index[c] for c in classes], dtype=torch.long)
        own = query.view(len(classes), queries)
        sums = self._sums[rows] - self._z[own].sum(1)
        counts = self._counts[rows] - self._present[own].float().sum(1)
        return self._means(list(classes), sums, counts)


def evaluate_zero_shot(
    model: nn.Module,
    store: TensorStore,
    train_classes: Sequence[str],
    test_classes: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    *,
    description_modality: str | None = None,
    ways: int = 5,
    shots: Sequence[int] = (1, 5),
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    am3_steps: int = 500,
    device: torch.device | str = "cpu",
) -> ZeroShotReport:
    """Zero-shot and few+zero-shot accuracy on test episodes, with 95% intervals.

    Classes are described either by ``descriptions`` (class -> text, as bag-of-words features)
    or by a ``description_modality`` of their samples (e.g. a caption column: a class's
    features are the mean embedding of its samples in that modality alone, leaving out the
    episode's queries; the samples are then embedded without it, so a query never sees its own
    caption). Every sample is embedded once by ``model`` (its fused embedding). A
    `DescriptionMap` (ridge) is fitted from the training classes' description features to their
    prototypes, and maps each test class's description into the embedding space. Then, on the
    episodes of `metamodal.evaluate.evaluate` (same seed, so the ProtoNet rows match it):

    - zero-shot: each query goes to the nearest mapped description (no support used);
    - prototypes alone: ProtoNet on the same embeddings;
    - AM3 (Xing et al. 2019): an `AM3` head, meta-trained on the training classes with the
      backbone frozen and cross-fitted training-class descriptions (one head per shot count),
      mixes each prototype with its mapped description.

    Args:
        model: a `FewShotModel` (metric learner), e.g. trained with ``--align-weight``.
        store: decoded samples; train_classes / test_classes: class labels.
        descriptions: class -> text; every train and test class needs one.
        description_modality: describe classes by this modality of their samples instead.
        ways, shots, queries, episodes, seed: the episodes (one set per shot count; the
            zero-shot row uses the first shot count's episodes and ignores their support).
        am3_steps: meta-training episodes of the AM3 head.
        device: where the encoders run.

    Raises:
        ConfigError: both or neither of ``descriptions`` and ``description_modality``.
        ModalityError: the description modality is not one of the model's, or its only one.
        DatasetError: a class has no description.
    """
    if (descriptions is None) == (description_modality is None):
        raise ConfigError("zero-shot needs class descriptions from exactly one source",
                          fix="give a descriptions file (--descriptions) or a description "
                          "modality (--descriptions-from), not both")
    keep = set(train_classes) | set(test_classes)
    rows = torch.tensor([i for i, label in enumerate(store.labels) if label in keep])
    seen = list(model.modalities)
    if description_modality is not None:
        if description_modality not in seen or len(seen) < 2:
            raise ModalityError(
                f"cannot describe classes by {description_modality!r}: the run's modalities are "
                f"{', '.join(seen)}", column=description_modality,
                fix="name one of the run's modalities, on a run with at least one other")
        seen.remove(description_modality)
    emb = embed_store(model, store, rows, modalities=seen, device=device)
    z_all = torch.zeros(len(store), _fused(emb).shape[1])
    z_all[rows] = _fused(emb).cpu().float()
    features: _WordFeatures | _ModalityFeatures
    if description_modality is None:
        features = _WordFeatures(descriptions or {}, train_classes, test_classes)
    else:
        described = embed_store(model, store, rows, modalities=[description_modality],
                                device=device)
        z_desc = torch.zeros_like(z_all)
        z_desc[rows] = _fused(described).cpu().float()
        features = _ModalityFeatures(z_desc, store.modalities[description_modality].present,
                                     store.labels, train_classes, test_classes,
                                     description_modality)
    train_set = set(train_classes)
    train_rows = [i for i in rows.tolist() if store.labels[i] in train_set]
    labels = [store.labels[i] for i in train_rows]
    description_map, crossed = fit_description_map(features.train, z_all[train_rows], labels,
                                                   list(train_classes))
    index = {c: k for k, c in enumerate(train_classes)}
    train_labels = torch.tensor([index[c] for c in labels])
    report = ZeroShotReport(ways=ways, source=(
        "descriptions.toml" if description_modality is None
        else f"the {description_modality} of each class's samples"))
    for n_shots in shots:
        sampler = EpisodeSampler(store, list(test_classes), ways, n_shots, queries, seed,
                                 episodes)
        digest = sampled_episodes(store, test_classes, ways, n_shots, queries, seed,
                                   episodes).digest(len(store))
        with torch.random.fork_rng(devices=[]):  # its start depends on the seed alone
            torch.manual_seed(seed)
            head = AM3(dim=z_all.shape[1])  # one head per shot count, as in the paper
        fit_am3(head, z_all[train_rows], train_labels, crossed, ways=ways, shots=n_shots,
                queries=queries, steps=am3_steps, seed=seed)
        support_labels = torch.arange(ways).repeat_interleave(n_shots)
        query_labels = torch.arange(ways).repeat_interleave(queries)
        acc: dict[str, list[float]] = {ZERO_SHOT: [], PROTOTYPE: [], AM3_NAME: []}
        with torch.no_grad():
            for i in range(episodes):
                support, query, classes = sampler.indices(i)
                s, q = z_all[support], z_all[query]
                semantic = description_map.transform(features.episode(classes, query, queries))
                proto = -squared_distances(q, class_means(s, support_labels, ways))
                am3 = head.scores(s, support_labels, q, ways,
                                  context=EpisodeContext(class_semantics=semantic))
                zero = zero_shot_logits(q, semantic)
                for name, logits in ((ZERO_SHOT, zero), (PROTOTYPE, proto), (AM3_NAME, am3)):
                    acc[name].append(float((logits.argmax(1) == query_labels).float().mean()))
        key = f"{n_shots}-shot"
        report.results[key] = {
            AM3_NAME: _result(acc[AM3_NAME], AM3_NAME, ways, n_shots, queries, seed, digest),
            PROTOTYPE: _result(acc[PROTOTYPE], PROTOTYPE, ways, n_shots, queries, seed, digest),
        }
        if "0-shot" not in report.results:
            report.results["0-shot"] = {
                ZERO_SHOT: _result(acc[ZERO_SHOT], ZERO_SHOT, ways, 0, queries, seed, digest)}
        diff = paired_difference(acc[AM3_NAME], acc[PROTOTYPE])
        report.gains[key] = (diff.mean, diff.ci95)
    return report


def format_zero_shot(report: ZeroShotReport) -> str:
    """Plain-text table of a `ZeroShotReport` with chance level and the AM3 gains."""
    lines = [f"{report.ways}-way zero-shot and few+zero-shot on unseen classes, described by "
             f"{report.source} (mean accuracy, 95% interval):"]
    for key in sorted(report.results, key=lambda k: int(k.split("-")[0])):
        for name, r in report.results[key].items():
            lines.append(f"  {key:<7} {name:<40} {100 * r.accuracy:6.2f} ± {100 * r.ci95:.2f}"
                         f"  ({r.episodes} episodes)")
    lines.append(f"  chance: {100 / report.ways:.1f}%")
    for key, (mean, ci) in report.gains.items():
        lines.append(f"  AM3 minus prototypes alone at {key}: {100 * mean:+.2f} points "
                     f"(paired 95% interval ±{100 * ci:.2f})")
    return "\n".join(lines)
