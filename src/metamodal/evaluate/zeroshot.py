"""Zero-shot and few+zero-shot evaluation from class descriptions: nearest mapped description,
ProtoNet, and AM3 (prototype mixed with the mapped description) on the same test episodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore
from metamodal.data.episodes import EpisodeSampler
from metamodal.evaluate.protocol import EvalResult, _sampled_episodes, embed_store
from metamodal.evaluate.stats import mean_ci95, paired_difference
from metamodal.learners.am3 import AM3, class_semantics
from metamodal.learners.base import class_means, squared_distances
from metamodal.mapping.descriptions import require_descriptions
from metamodal.mapping.zeroshot import fit_am3, fit_description_map, zero_shot_logits

ZERO_SHOT = "zero-shot: nearest mapped description"
PROTOTYPE = "prototypes alone (ProtoNet)"
AM3_NAME = "few+zero-shot: AM3"


@dataclass
class ZeroShotReport:
    """Results by setting (``"0-shot"``, ``"1-shot"``, ``"5-shot"``) and method, and the paired
    gain of AM3 over the prototypes alone at each shot count (mean, 95% half width)."""

    results: dict[str, dict[str, EvalResult]] = field(default_factory=dict)
    gains: dict[str, tuple[float, float]] = field(default_factory=dict)
    ways: int = 5

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"ways": self.ways, "chance": 1 / self.ways,
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


def evaluate_zero_shot(
    model: nn.Module,
    store: TensorStore,
    train_classes: Sequence[str],
    test_classes: Sequence[str],
    descriptions: Mapping[str, str],
    *,
    ways: int = 5,
    shots: Sequence[int] = (1, 5),
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    am3_steps: int = 500,
    device: torch.device | str = "cpu",
) -> ZeroShotReport:
    """Zero-shot and few+zero-shot accuracy on test episodes, with 95% intervals.

    Every sample is embedded once by ``model`` (its fused embedding). A `DescriptionMap`
    (bag-of-words -> ridge) is fitted from the training classes' descriptions to their
    prototypes; each test class's description is mapped into the embedding space. Then, on the
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
        ways, shots, queries, episodes, seed: the episodes (one set per shot count; the
            zero-shot row uses the first shot count's episodes and ignores their support).
        am3_steps: meta-training episodes of the AM3 head.
        device: where the encoders run.

    Raises:
        DatasetError: a class has no description.
    """
    require_descriptions(descriptions, list(train_classes) + list(test_classes))
    keep = set(train_classes) | set(test_classes)
    rows = torch.tensor([i for i, label in enumerate(store.labels) if label in keep])
    emb = embed_store(model, store, rows, device=device)
    z_all = torch.zeros(len(store), _fused(emb).shape[1])
    z_all[rows] = _fused(emb).cpu().float()
    train_set = set(train_classes)
    train_rows = [i for i in rows.tolist() if store.labels[i] in train_set]
    labels = [store.labels[i] for i in train_rows]
    description_map, crossed = fit_description_map(descriptions, z_all[train_rows], labels,
                                                   list(train_classes))
    index = {c: k for k, c in enumerate(train_classes)}
    train_labels = torch.tensor([index[c] for c in labels])
    test_semantic = description_map.transform([descriptions[c] for c in test_classes])
    semantic_of = {c: test_semantic[k] for k, c in enumerate(test_classes)}
    report = ZeroShotReport(ways=ways)
    for n_shots in shots:
        sampler = EpisodeSampler(store, list(test_classes), ways, n_shots, queries, seed,
                                 episodes)
        digest = _sampled_episodes(store, test_classes, ways, n_shots, queries, seed,
                                   episodes).digest(len(store))
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
                semantic = torch.stack([semantic_of[c] for c in classes])
                proto = -squared_distances(q, class_means(s, support_labels, ways))
                with class_semantics(semantic):
                    am3 = head.scores(s, support_labels, q, ways)
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
    lines = [f"{report.ways}-way zero-shot and few+zero-shot on unseen classes "
             "(mean accuracy, 95% interval):"]
    for key in sorted(report.results, key=lambda k: int(k.split("-")[0])):
        for name, r in report.results[key].items():
            lines.append(f"  {key:<7} {name:<40} {100 * r.accuracy:6.2f} ± {100 * r.ci95:.2f}"
                         f"  ({r.episodes} episodes)")
    lines.append(f"  chance: {100 / report.ways:.1f}%")
    for key, (mean, ci) in report.gains.items():
        lines.append(f"  AM3 minus prototypes alone at {key}: {100 * mean:+.2f} points "
                     f"(paired 95% interval ±{100 * ci:.2f})")
    return "\n".join(lines)
