"""`Backbone`: the per-modality encoders and a fusion module as one `nn.Module`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import all_present
from metamodal.encoders import Encoder
from metamodal.errors import ConfigError, ModalityError
from metamodal.learners.embeddings import Embeddings


def _zeroes_absent(encoder: nn.Module) -> bool:
    """Whether ``encoder``'s output rows of absent samples are exactly zero, and pass no
    gradient, by construction: an `Encoder` that keeps `Encoder.forward`."""
    return isinstance(encoder, Encoder) and type(encoder).forward is Encoder.forward


class Backbone(nn.Module):
    """Encoders and fusion as one module: ``backbone(batch) -> Embeddings``.

    Each modality has its own encoder (``[B, ...] -> [B, dim]``); the fusion module combines the
    per-modality embeddings, given which samples have which modality, into one embedding per
    sample (``[B, D]``; late fusion keeps one per modality, ``[B, M, D]``). It is what a learner
    adapts or compares through: a plain `nn.Module` whose `forward` is `embed`, so
    ``torch.func.functional_call(backbone, params, (batch,))`` runs it with other weights.

    Args:
        encoders: modality name -> encoder module (``forward(ModalityBatch) -> [B, dim]``).
        fusion: fusion module (``forward(embeddings, present) -> [B, D]``; with ``late = True``
            it returns ``[B, M, D]`` and has ``combine(logits [Q, M, W], valid [Q, M])``).

    The modality order (``modalities``, the columns of ``Embeddings.present``) is the fusion's
    ``modalities`` when it has that attribute, else the order of ``encoders``.

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> class Mean(nn.Module):
        ...     def forward(self, embeddings, present):
        ...         return sum(embeddings.values()) / len(embeddings)
        >>> class Enc(nn.Module):  # any module mapping a ModalityBatch to [B, dim]
        ...     def forward(self, b): return b.values
        >>> backbone = Backbone({"x": Enc()}, Mean())
        >>> batch = {"x": ModalityBatch(torch.eye(3), torch.ones(3, dtype=torch.bool))}
        >>> backbone(batch).z.shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion: nn.Module,
    ) -> None:
        super().__init__()
        order = list(getattr(fusion, "modalities", None) or encoders)
        if sorted(order) != sorted(encoders):
            raise ConfigError(
                f"the fusion combines modalities {order} but the encoders are for "
                f"{list(encoders)}",
                fix="build the fusion with modalities= the encoders' modality names",
            )
        self.encoders = nn.ModuleDict({name: encoders[name] for name in order})
        self.fusion = fusion

    @property
    def modalities(self) -> list[str]:
        """The modality names the model uses, in its order."""
        return list(self.encoders)

    @property
    def late(self) -> bool:
        """True with late fusion: one embedding (and one set of logits) per modality."""
        return bool(getattr(self.fusion, "late", False))

    def _check_names(self, names: Iterable[str], what: str, known: list[str]) -> None:
        """Raise `ModalityError` when ``names`` holds a modality not in ``known`` (the model's
        modalities), or is empty; ``what`` names the input in the message."""
        names = list(names)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ModalityError(
                f"{what} has modalities the model does not know: {', '.join(unknown)}; "
                f"the model knows: {', '.join(known)}",
                fix=f"leave out {', '.join(unknown)} (keep only {', '.join(known)}), "
                "or train a model that uses them",
            )
        if not names:
            raise ModalityError(
                f"{what} has no modality",
                fix=f"give at least one of the model's modalities: {', '.join(known)}",
            )

    def encode(
        self, batch: Mapping[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Run each modality's encoder: the per-modality embeddings that `fuse` combines.

        Args:
            batch: modality name -> `ModalityBatch`, all of one size ``B``. A modality of the
                model that the batch lacks counts as absent for every sample.

        Returns:
            ``(parts, present)``, both keyed by every modality of the model in its order:
            ``parts[m]`` ``[B, dim]`` is the encoder's output (zero where absent) and
            ``present[m]`` bool ``[B]`` says which samples have ``m``.

        Raises:
            ModalityError: the batch has a modality the model does not know, or none at all,
                or its modalities differ in sample count.

        Example:
            >>> from metamodal.model import FewShotModel
            >>> model = FewShotModel.build(kinds={"m": "tabular"},
            ...                            input_info={"m": {"features": 3}}, dim=8).backbone
            >>> from metamodal.data.batch import ModalityBatch
            >>> parts, present = model.encode(
            ...     {"m": ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))})
            >>> parts["m"].shape, present["m"].tolist()
            (torch.Size([4, 8]), [True, True, True, True])
        """
        known = self.modalities
        self._check_names(batch, "the input", known)
        sizes = {name: len(mb) for name, mb in batch.items()}
        if len(set(sizes.values())) > 1:
            raise ModalityError(
                f"the modalities of one batch have different sample counts: {sizes}",
                fix="give every modality one row per sample (absent ones with present=False)",
            )
        size = next(iter(sizes.values()))
        parts: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        for name in known:
            if name not in batch:
                continue
            mb = batch[name]
            mask = mb.present.to(torch.bool)
            encoder = self.encoders[name]
            out = encoder(mb)
            # nothing to zero when the encoder did (see `_zeroes_absent`) or all are present
            if not _zeroes_absent(encoder) and not all_present(mask):
                out = torch.where(mask.unsqueeze(1), out, torch.zeros((), dtype=out.dtype))
            parts[name] = out
            present[name] = mask
        reference = next(iter(parts.values()))
        for name in known:
            if name not in parts:
                parts[name] = reference.new_zeros(size, reference.shape[1])
                present[name] = torch.zeros(size, dtype=torch.bool, device=reference.device)
        return {name: parts[name] for name in known}, {name: present[name] for name in known}

    def fuse(
        self, parts: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> Embeddings:
        """Fuse per-modality embeddings (from `encode`, or cached) into `Embeddings`.

        This is the second half of `forward`: with per-modality embeddings computed once (e.g.
        by frozen encoders over a whole store), an episode only needs its rows indexed and
        fused, without running an encoder again.

        Args:
            parts: modality name -> embeddings ``[B, dim]``; rows where the modality is absent
                are ignored (the fusion masks them).
            present: modality name -> bool ``[B]``, for the same modalities as ``parts``. A
                modality of the model that neither holds counts as absent for every sample.

        Returns:
            `Embeddings` with ``z`` ``[B, D]`` (``[B, M, D]`` for late fusion), ``present``
            ``[B, M]`` and ``parts`` (every modality of the model, in its order).

        Raises:
            ModalityError: ``parts`` and ``present`` name different modalities, one the model
                does not know, or none; or their row counts differ.

        Example:
            >>> from metamodal.model import FewShotModel
            >>> model = FewShotModel.build(kinds={"a": "tabular", "b": "tabular"}, input_info={
            ...     "a": {"features": 3}, "b": {"features": 2}}, dim=8, fusion="mean").backbone
            >>> parts = {"a": torch.randn(5, 8), "b": torch.randn(5, 8)}
            >>> present = {"a": torch.ones(5, dtype=torch.bool),
            ...            "b": torch.tensor([True, False, True, True, False])}
            >>> fused = model.fuse(parts, present)  # e.g. cached encoder outputs
            >>> fused.z.shape, fused.present.shape
            (torch.Size([5, 8]), torch.Size([5, 2]))
        """
        if parts.keys() != present.keys():
            raise ModalityError(
                f"parts has modalities {sorted(parts)} but present has {sorted(present)}",
                fix="give one presence mask per modality embedding",
            )
        known = self.modalities
        self._check_names(parts, "parts", known)
        reference = next(iter(parts.values()))
        size = reference.shape[0]
        if any(p.shape[0] != size for p in parts.values()) or any(
            m.shape[0] != size for m in present.values()
        ):
            sizes = {name: (part.shape[0], present[name].shape[0]) for name, part in parts.items()}
            raise ModalityError(
                f"parts and present of one batch have different row counts: {sizes} "
                "(parts, present)",
                fix="give every modality one row per sample (absent ones with present=False)",
            )
        fused_parts: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for name in known:
            if name in parts:
                mask = present[name]
                fused_parts[name] = parts[name]
                masks[name] = mask if mask.dtype == torch.bool else mask.to(torch.bool)
            else:
                fused_parts[name] = reference.new_zeros(size, reference.shape[1])
                masks[name] = torch.zeros(size, dtype=torch.bool, device=reference.device)
        return self._fuse(fused_parts, masks)

    def _fuse(self, parts: dict[str, Tensor], present: dict[str, Tensor]) -> Embeddings:
        """`fuse` of checked inputs: ``parts`` (``[B, dim]``) and bool ``present`` (``[B]``)
        for every modality of the model, in its order."""
        z = self.fusion(parts, present)
        masks = list(present.values())
        stacked = masks[0].unsqueeze(1) if len(masks) == 1 else torch.stack(masks, dim=1)
        return Embeddings(z, stacked, parts, list(parts))

    def forward(self, batch: Mapping[str, Any]) -> Embeddings:
        """Encode every modality of ``batch`` and fuse them: `encode`, then `fuse`.

        Args:
            batch: modality name -> `ModalityBatch`, all of one size ``B``. A modality of the
                model that the batch lacks counts as absent for every sample.

        Returns:
            `Embeddings` with ``z`` ``[B, D]`` (``[B, M, D]`` for late fusion), ``present``
            ``[B, M]`` and ``parts`` (each encoder's output ``[B, dim]``, zero where absent).

        Raises:
            ModalityError: the batch has a modality the model does not know, or none at all.
        """
        parts, present = self.encode(batch)  # checked and complete: fused without checks
        return self._fuse(parts, present)
