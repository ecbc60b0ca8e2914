"""The fusion interface, the fusion registry, and helpers for masked modalities.

A fusion module combines per-modality embeddings ``{name: [B, dim]}`` with presence masks
``{name: bool [B]}`` into one embedding per sample. Absent modalities are never read as data:
every fusion first replaces absent rows by zeros (`Fusion.stack`), then treats them through the
masks, so whatever values an absent row holds (even NaN) cannot change the output. A sample
with no modality present at all gets an all-zero output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import all_present
from metamodal.errors import ConfigError, ModalityError
from metamodal.registry import Registry


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over the entries where ``mask`` is True; others get weight 0.

    A slice with no True entry gets all-zero weights (and no NaN, forward or backward).

    Args:
        scores: float ``[..., M, ...]``.
        mask: bool, broadcastable to ``scores``.
        dim: the axis to normalise over.

    Example:
        >>> masked_softmax(torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]]),
        ...                torch.tensor([[True, True, False], [False, False, False]]))
        tensor([[0.5000, 0.5000, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    mask = mask.expand_as(scores)
    low = torch.finfo(scores.dtype).min
    filled = torch.where(mask, scores, torch.full((), low, dtype=scores.dtype))
    weights = torch.softmax(filled, dim=dim)
    return torch.where(mask, weights, torch.zeros((), dtype=scores.dtype))


class Fusion(nn.Module):
    """Base class of the fusion modules: checks the inputs and stacks them with their masks.

    Args:
        modalities: the modality names, in a fixed order (the order of stacked outputs).
        dim: the size of every modality's embedding (and, except where a fusion says
            otherwise, of the output).

    Attributes:
        late: True only for late fusion, whose ``forward`` returns per-modality embeddings
            ``[B, M, dim]`` and which combines per-modality logits with ``combine``.
        out_dim: the size of the fused embedding.

    Example:
        >>> from metamodal.fusion import fusions
        >>> fusion = fusions.create("mean", modalities=["a", "b"], dim=4)
        >>> z, mask = fusion.stack({"a": torch.ones(2, 4)}, {"a": torch.tensor([True, False])})
        >>> z.shape, mask.tolist()
        (torch.Size([2, 2, 4]), [[True, False], [False, False]])
    """

    late: bool = False

    def __init__(self, *, modalities: Sequence[str], dim: int) -> None:
        super().__init__()
        modalities = list(modalities)
        if not modalities or len(set(modalities)) != len(modalities):
            raise ConfigError(
                f"{type(self).__name__} needs distinct modality names, got {modalities!r}",
                fix="pass the list of modalities the model uses, each once",
            )
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(
                f"{type(self).__name__}: dim must be a positive integer, got {dim!r}",
                fix="set dim to the encoders' embedding size, e.g. 64",
            )
        self.modalities = modalities
        self.dim = dim
        self.out_dim = dim

    def stack(
        self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Stack embeddings in ``self.modalities`` order, absent rows zeroed.

        A modality missing from ``embeddings`` is absent for every sample; one missing from
        ``present`` is present for every sample.

        Args:
            embeddings: modality -> ``[B, dim]``.
            present: modality -> bool ``[B]``.

        Returns:
            ``z`` ``[B, M, dim]`` (zeros where absent) and ``mask`` bool ``[B, M]``.
        """
        columns, masks = self.columns(embeddings, present)
        if len(columns) == 1:  # one modality: views, no copy
            mask, z = masks[0].unsqueeze(1), columns[0].unsqueeze(1)
        else:
            mask, z = torch.stack(masks, dim=1), torch.stack(columns, dim=1)
        if all_present(mask):  # nothing to zero
            return z, mask
        return torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype)), mask

    def columns(
        self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The checked inputs of `stack`, before stacking and zeroing: one embedding ``[B,
        dim]`` (as given, absent rows not zeroed) and one bool mask ``[B]`` per modality, in
        ``self.modalities`` order.

        Raises:
            ModalityError: a modality the fusion was not built for, none at all, or an
                embedding that is not ``[B, dim]``.
        """
        unknown = sorted(set(embeddings) - set(self.modalities))
        if unknown:
            raise ModalityError(
                f"fusion got modalities it was not built for: {', '.join(unknown)}",
                fix=f"use only {', '.join(self.modalities)}, or build a model that has them",
            )
        if not embeddings:
            raise ModalityError(
                "fusion got no embeddings at all",
                fix=f"give at least one of: {', '.join(self.modalities)}",
            )
        first = next(iter(embeddings.values()))
        size = first.shape[0]
        columns, masks = [], []
        for name in self.modalities:
            if name not in embeddings:
                columns.append(first.new_zeros(size, self.dim))
                masks.append(torch.zeros(size, dtype=torch.bool, device=first.device))
                continue
            z = embeddings[name]
            if z.dim() != 2 or z.shape[0] != size or z.shape[1] != self.dim:
                raise ModalityError(
                    f"fusion expects [{size}, {self.dim}] embeddings, got "
                    f"{tuple(z.shape)} for {name!r}",
                    fix="give every modality's embedding the fusion's dim and batch size",
                )
            mask = present.get(name)
            if mask is None:
                mask = torch.ones(size, dtype=torch.bool, device=z.device)
            columns.append(z)
            masks.append(mask.to(device=z.device, dtype=torch.bool))
        return columns, masks

    @staticmethod
    def zero_empty(out: Tensor, mask: Tensor) -> Tensor:
        """``out`` ``[B, ...]`` with the rows of samples that have no modality (``mask`` ``[B,
        M]`` all False) set to zeros."""
        keep = mask.any(dim=1).view(-1, *([1] * (out.dim() - 1)))
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype))


fusions: Registry[Fusion] = Registry("fusion")
"""Fusion classes by name: ``fusions.create("gated", modalities=["image", "text"], dim=64)``."""


def build_fusion(name: str, *, modalities: Sequence[str], dim: int, **hyper: Any) -> Fusion:
    """Build fusion ``name``, raising `ConfigError` for unknown names or hyper-parameters.

    Example:
        >>> build_fusion("gated", modalities=["a", "b"], dim=8, hidden=4).out_dim
        8
    """
    fusions.check_options(name, hyper, options_key="fusion_options")
    return fusions.create(name, options_key="fusion_options", modalities=modalities, dim=dim,
                          **hyper)
