"""Cross-modal retrieval evaluation: Recall@1/5/10 and median rank in both directions, at the
instance and the class level, on class-disjoint test samples, beside a random baseline and
closed-form linear maps (ridge, CCA) fitted on the meta-train samples."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore
from metamodal.errors import DatasetError, ModalityError
from metamodal.evaluate.stats import mean_ci95
from metamodal.mapping.joint import encode_store
from metamodal.mapping.linear import cca, ridge_map
from metamodal.mapping.retrieval import RECALL_AT, RetrievalRanks, retrieval_ranks, similarity

ALIGNED = "aligned encoders"
RANDOM = "baseline: random"
CEILING = "ceiling: ranks by the shared attributes"
LEVELS = ("instance", "class")


@dataclass
class RetrievalRow:
    """One method, direction and level: Recall@K (mean and 95% interval over queries) and the
    median rank."""

    method: str
    direction: str
    level: str
    recall: dict[int, tuple[float, float]]
    median_rank: float
    queries: int
    targets: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``recall@K`` and ``recall@K_ci95`` for each K, and the rest."""
        out: dict[str, Any] = {"method": self.method, "direction": self.direction,
                               "level": self.level, "median_rank": self.median_rank,
                               "queries": self.queries, "targets": self.targets}
        for k, (mean, ci) in self.recall.items():
            out[f"recall@{k}"] = mean
            out[f"recall@{k}_ci95"] = ci
        return out


@dataclass
class RetrievalReport:
    """Every row of a retrieval evaluation, and the top matches of the aligned method."""

    query_modality: str
    target_modality: str
    rows: list[RetrievalRow] = field(default_factory=list)
    matches: list[dict[str, Any]] = field(default_factory=list)

    def row(self, method: str, direction: str, level: str) -> RetrievalRow:
        """The row of ``method`` in ``direction`` (``"caption->image"``) at ``level``."""
        for r in self.rows:
            if (r.method, r.direction, r.level) == (method, direction, level):
                return r
        raise KeyError((method, direction, level))

    def table(self) -> str:
        """The class-level and the instance-level tables (`format_retrieval_table`)."""
        return "\n".join(format_retrieval_table(self, level) for level in ("class", "instance"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``rows`` and ``matches``)."""
        return {"query_modality": self.query_modality, "target_modality": self.target_modality,
                "rows": [r.to_dict() for r in self.rows], "matches": self.matches}


def _row(method: str, direction: str, ranks: RetrievalRanks) -> list[RetrievalRow]:
    rows = []
    for level in LEVELS:
        recall = {k: mean_ci95(ranks.recall(k, level)) for k in RECALL_AT}
        rows.append(RetrievalRow(method, direction, level, recall, ranks.median_rank(level),
                                 len(ranks.instance), ranks.targets))
    return rows


def _paired(store: TensorStore, backbone: nn.Module, classes: Sequence[str], a: str, b: str,
            device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, list[str], list[str]]:
    """Embeddings of ``a`` and ``b`` of the samples of ``classes`` that have both, their class
    ids ``[N]``, their sample ids and the class label of each class id."""
    keep = set(classes)
    rows = torch.tensor([i for i, label in enumerate(store.labels) if label in keep],
                        dtype=torch.long)
    parts, present = encode_store(backbone, store, rows, device=device)
    both = (present[a] & present[b]).nonzero().squeeze(1)
    names = [store.labels[i] for i in rows[both].tolist()]
    index = {label: k for k, label in enumerate(dict.fromkeys(names))}
    labels = torch.tensor([index[n] for n in names], dtype=torch.long)
    ids = [store.ids[i] for i in rows[both].tolist()]
    return parts[a][both], parts[b][both], labels, ids, list(index)


def _ceiling_scores(labels: Tensor, classes: Sequence[str], shared: Mapping[str, Hashable],
                    generator: torch.Generator) -> Tensor:
    """``[N, N]`` scores of a ranking that knows what the two modalities of a class share:
    1 where query and target classes show the same values, plus a random tie-break below 1."""
    key_ids = {key: k for k, key in enumerate(dict.fromkeys(shared[c] for c in classes))}
    of_sample = torch.tensor([key_ids[shared[c]] for c in classes])[labels]  # [N]
    same = (of_sample.unsqueeze(1) == of_sample.unsqueeze(0)).to(torch.float64)
    return same + 0.5 * torch.rand(same.shape, generator=generator, dtype=torch.float64)


def evaluate_retrieval(
    model: nn.Module,
    store: TensorStore,
    test_classes: Sequence[str],
    fit_classes: Sequence[str],
    query_modality: str,
    target_modality: str,
    *,
    baselines: Mapping[str, nn.Module] | None = None,
    shared: Mapping[str, Hashable] | None = None,
    seed: int = 0,
    top: int = 5,
    device: torch.device | str = "cpu",
) -> RetrievalReport:
    """Retrieval between two modalities of the test samples, both directions, with baselines.

    The query set is every test sample that has both modalities, seen in the query modality;
    the targets are the same samples in the target modality. A query's *instance* hit is its
    own sample, a *class* hit any sample of its class. Methods:

    - ``aligned encoders``: cosine similarity of ``model``'s encoder outputs (the joint space);
    - ``baseline: random``: scores drawn at random (seeded);
    - for each ``baselines`` entry (name -> model with encoders for both modalities), a ridge
      map and CCA fitted on the ``fit_classes`` samples (meta-train) between those encoders'
      outputs, then cosine similarity in the mapped space (Hotelling 1936; Hardoon et al. 2004);
    - with ``shared`` (class -> what both modalities of that class reveal, known for generated
      data), ``ceiling: ranks by the shared attributes``: targets whose class shows the same
      values first, in random order. At the class level no map can do better when the two
      modalities share nothing else: it bounds every method on such data.

    Args:
        model: a `FewShotModel` whose encoders were aligned (``metamodal align``).
        store: the decoded samples; test_classes / fit_classes: class labels.
        query_modality, target_modality: the two modalities.
        baselines: encoders for the linear maps (e.g. the same architecture untrained, or a
            model trained without alignment).
        shared: class label -> the attribute values both modalities show (any hashable).
        seed: seeds the random rankings; top: target ids kept per query in ``matches``.
        device: where encoders run.

    Raises:
        ModalityError: a modality is not one of the model's.
        DatasetError: fewer than two test samples have both modalities.
    """
    for name in (query_modality, target_modality):
        if name not in model.modalities:
            raise ModalityError(f"the run has no modality {name!r}", column="modality",
                                fix=f"use one of: {', '.join(model.modalities)}")
    if query_modality == target_modality:
        raise ModalityError("query and target modality are the same", column="modality",
                            fix="retrieve between two different modalities")
    q, t, labels, ids, classes = _paired(store, model.backbone, test_classes, query_modality,
                                         target_modality, device)
    if len(labels) < 2:
        raise DatasetError(f"fewer than two test samples have both {query_modality} and "
                           f"{target_modality}", column=f"{query_modality},{target_modality}",
                           fix="evaluate on a split whose samples have both modalities")
    report = RetrievalReport(query_modality, target_modality)
    forward = f"{query_modality}->{target_modality}"
    backward = f"{target_modality}->{query_modality}"
    scores = similarity(q, t)
    report.rows += _row(ALIGNED, forward, retrieval_ranks(q, t, labels, scores))
    report.rows += _row(ALIGNED, backward, retrieval_ranks(t, q, labels, scores.T))
    generator = torch.Generator().manual_seed(seed)
    for direction in (forward, backward):
        noise = torch.rand(len(labels), len(labels), generator=generator)
        report.rows += _row(RANDOM, direction, retrieval_ranks(q, t, labels, noise))
    if shared is not None:
        unknown = [c for c in classes if c not in shared]
        if unknown:
            raise DatasetError(f"no shared attributes given for class {unknown[0]!r}",
                               column=unknown[0], fix="give every test class's attributes")
        for direction in (forward, backward):
            ceiling = _ceiling_scores(labels, classes, shared, generator)
            report.rows += _row(CEILING, direction, retrieval_ranks(q, t, labels, ceiling))
    for name, other in (baselines or {}).items():
        fq, ft, _, _, _ = _paired(store, other.backbone, fit_classes, query_modality,
                               target_modality, device)
        bq, bt, _, _, _ = _paired(store, other.backbone, test_classes, query_modality,
                               target_modality, device)
        w, b = ridge_map(fq, ft, alpha=1.0)
        report.rows += _row(f"baseline: ridge on {name}", forward,
                            retrieval_ranks(bq @ w + b, bt, labels))
        w, b = ridge_map(ft, fq, alpha=1.0)
        report.rows += _row(f"baseline: ridge on {name}", backward,
                            retrieval_ranks(bt @ w + b, bq, labels))
        pa, pb, ma, mb, _ = cca(fq, ft, k=max(2, fq.shape[1] // 2))
        cq, ct = (bq - ma) @ pa, (bt - mb) @ pb
        report.rows += _row(f"baseline: cca on {name}", forward, retrieval_ranks(cq, ct, labels))
        report.rows += _row(f"baseline: cca on {name}", backward, retrieval_ranks(ct, cq, labels))
    best = scores.topk(min(top, scores.shape[1]), dim=1).indices
    report.matches = [{"query": ids[i], "targets": [ids[j] for j in best[i].tolist()]}
                      for i in range(len(ids))]
    return report


def format_retrieval_table(report: RetrievalReport, level: str = "class") -> str:
    """A plain-text table of ``report`` at ``level``: Recall@1/5/10 (%, ± 95% interval) and
    the median rank, one line per method and direction."""
    lines = [f"{level}-level retrieval, {report.query_modality} <-> {report.target_modality} "
             f"(Recall@K in %, ± 95% interval over queries):"]
    width = max([len(r.method) for r in report.rows] + [6])
    lines.append(f"{'method':<{width}}  {'direction':<22}  "
                 + "  ".join(f"{'R@' + str(k):>12}" for k in RECALL_AT) + "  median rank")
    for r in report.rows:
        if r.level != level:
            continue
        cells = "  ".join(f"{100 * m:6.1f} ± {100 * c:3.1f}" for m, c in r.recall.values())
        lines.append(f"{r.method:<{width}}  {r.direction:<22}  {cells}  {r.median_rank:>11.0f}")
    lines.append(f"({report.rows[0].queries} queries and targets)")
    return "\n".join(lines)
