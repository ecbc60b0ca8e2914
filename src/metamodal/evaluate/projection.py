"""A 2-D picture of the joint space: PCA of the per-modality embeddings of test samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore
from metamodal.mapping.joint import encode_store
from metamodal.ops import l2_normalize


@dataclass
class Projection:
    """Points of the joint space projected to 2-D.

    Args:
        coords: ``[P, 2]`` coordinates (first two principal components).
        classes: class label of each point (``P``).
        modalities: modality of each point (``P``).
        explained: fraction of the variance the two components explain.
    """

    coords: Tensor
    classes: list[str]
    modalities: list[str]
    explained: float

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"coords": self.coords.tolist(), "classes": self.classes,
                "modalities": self.modalities, "explained": self.explained}


def joint_projection(
    model: nn.Module, store: TensorStore, classes: Sequence[str], *,
    modalities: Sequence[str] | None = None, max_classes: int = 8, max_per_class: int = 12,
    device: torch.device | str = "cpu",
) -> Projection:
    """PCA (Pearson 1901) of the L2-normalised encoder outputs of test samples, every present
    modality of a sample being one point, so that aligned modalities of a class fall together.

    Args:
        model: a `FewShotModel`; store: decoded samples; classes: classes to draw from (the
            first ``max_classes``, at most ``max_per_class`` samples each).
        modalities: the modalities to show (default: all of the model's).
        device: where the encoders run.

    Example:
        >>> p = joint_projection(run.model, store, split.test)  # doctest: +SKIP
        >>> p.coords.shape[1]  # doctest: +SKIP
        2
    """
    chosen = list(classes)[:max_classes]
    rows: list[int] = []
    for label in chosen:
        rows += [i for i, lab in enumerate(store.labels) if lab == label][:max_per_class]
    parts, present = encode_store(model.backbone, store, torch.tensor(rows), device=device)
    names = list(modalities or model.modalities)
    points, point_classes, point_modalities = [], [], []
    for name in names:
        keep = present[name].nonzero().squeeze(1)
        points.append(l2_normalize(parts[name][keep]))
        point_classes += [store.labels[rows[i]] for i in keep.tolist()]
        point_modalities += [name] * len(keep)
    x = torch.cat(points).double()
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    coords = (x @ vh[:2].T).float()
    explained = float(s[:2].pow(2).sum() / s.pow(2).sum().clamp_min(1e-12))
    return Projection(coords, point_classes, point_modalities, explained)
