"""The joint space of a model: per-modality encoder outputs of stored samples, optionally with
missing modalities imputed through an `Aligner`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore, batch_to
from metamodal.learners.base import LearnerCapabilities
from metamodal.learners.embeddings import Embeddings
from metamodal.mapping.aligner import Aligner


@torch.no_grad()
def encode_store(
    backbone: nn.Module, store: TensorStore, indices: Tensor, *,
    batch_size: int = 512, device: torch.device | str = "cpu",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-modality embeddings of the store rows ``indices``, in eval mode, without gradients.

    Args:
        backbone: a `metamodal.model.Backbone` (``encode(batch) -> (parts, present)``).
        store: the decoded samples.
        indices: long ``[K]`` rows.
        batch_size: rows per encoder call; device: where the batches go.

    Returns:
        ``(parts, present)``: modality -> ``[K, dim]`` on the CPU (zero where absent) and
        modality -> bool ``[K]``.
    """
    was_training = backbone.training
    backbone.eval()
    parts: dict[str, list[Tensor]] = {}
    present: dict[str, list[Tensor]] = {}
    try:
        for chunk in torch.split(torch.as_tensor(indices, dtype=torch.long), batch_size):
            batch = {name: mb for name, mb in store.batch(chunk).items()
                     if name in backbone.modalities}
            p, m = backbone.encode(batch_to(batch, device))
            for name in p:
                parts.setdefault(name, []).append(p[name].cpu())
                present.setdefault(name, []).append(m[name].cpu())
    finally:
        backbone.train(was_training)
    return ({k: torch.cat(v) for k, v in parts.items()},
            {k: torch.cat(v) for k, v in present.items()})


class ImputingModel(nn.Module):
    """A few-shot model that fills in missing modalities before fusion.

    ``embed(batch)`` encodes each modality, imputes every missing aligned modality from the
    present ones through the aligner's regression maps (`Aligner.impute`) and fuses; ``logits``
    is the wrapped model's. It has the interface `metamodal.evaluate.evaluate` expects, so
    imputation and masking are compared on the same episodes.

    Args:
        model: a `metamodal.model.FewShotModel` with a metric learner.
        aligner: the alignment trained with it.

    Example:
        >>> imputing = ImputingModel(run.model, load_alignment(run.path))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, aligner: Aligner) -> None:
        super().__init__()
        self.model = model
        self.aligner = aligner

    @property
    def modalities(self) -> list[str]:
        """The wrapped model's modalities."""
        return list(self.model.modalities)

    def capabilities(self) -> LearnerCapabilities:
        """The wrapped model's capabilities (imputation needs ``embeds_once``: it fills in
        embeddings)."""
        return self.model.capabilities()

    def embed(self, batch: Mapping[str, Any]) -> Embeddings:
        """Fused `Embeddings` of ``batch`` with missing aligned modalities imputed."""
        backbone = self.model.backbone
        parts, present = backbone.encode(batch)
        parts, present = self.aligner.impute(parts, present)
        return backbone.fuse(parts, present)

    def logits(self, support: Embeddings, support_labels: Tensor, query: Embeddings,
               ways: int) -> Tensor:
        """The wrapped model's ``logits`` ``[Q, ways]``."""
        return self.model.logits(support, support_labels, query, ways)
