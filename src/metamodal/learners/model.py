"""`FewShotModel`: a `Backbone` (per-modality encoders and a fusion module) and a learner."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode, all_present
from metamodal.encoders import DEFAULT_ENCODERS, Encoder, build_encoder, check_hyperparameters
from metamodal.errors import ConfigError, ModalityError
from metamodal.fusion.base import build_fusion
from metamodal.learners.base import learners
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


class FewShotModel(nn.Module):
    """A few-shot classifier over multimodal samples: a `Backbone` (encoders + fusion) and the
    `Learner` that owns each episode.

    Args:
        backbone: the encoders and fusion, ``backbone(batch) -> Embeddings``.
        learner: the learner (see `metamodal.learners.base.Learner`).
        spec: the arguments of `FewShotModel.build` that made this model, if it was built so.

    Most users call `FewShotModel.build`.

    Example:
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="protonet")
        >>> from metamodal.data.batch import ModalityBatch
        >>> batch = {"m": ModalityBatch(torch.eye(3), torch.ones(3, dtype=torch.bool))}
        >>> model.eval().adapt_predict(batch, torch.tensor([0, 1, 2]), batch, 3).shape
        torch.Size([3, 3])
    """

    def __init__(
        self, backbone: Backbone, learner: nn.Module, spec: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.learner = learner
        self.spec = copy.deepcopy(spec) if spec is not None else None
        check = getattr(learner, "check_backbone", None)
        if check is not None:
            check(backbone)

    @property
    def modalities(self) -> list[str]:
        """The modality names the model uses, in its order."""
        return self.backbone.modalities

    @property
    def late(self) -> bool:
        """True with late fusion: one embedding (and one set of logits) per modality."""
        return self.backbone.late

    @property
    def training_mode(self) -> str:
        """The learner's training mode: ``"episodic"`` or ``"supervised"``."""
        return str(getattr(self.learner, "training_mode", "episodic"))

    @property
    def caches_embeddings(self) -> bool:
        """True when the learner compares embeddings of the unadapted backbone only, so that
        evaluation may embed each sample once (`embed`, then `logits`)."""
        return bool(getattr(self.learner, "caches_embeddings", True))

    def embed(self, batch: Mapping[str, Any]) -> Embeddings:
        """The backbone's embeddings of ``batch`` (see `Backbone.forward`)."""
        return self.backbone(batch)

    def logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from precomputed embeddings (metric learners only).

        Raises:
            ConfigError: the learner adapts weights per task and needs the samples themselves
                (use `adapt_predict`).
        """
        if not self.caches_embeddings:
            raise ConfigError(
                f"learner {type(self.learner).__name__} adapts the network per task and cannot "
                "work from precomputed embeddings",
                fix="call adapt_predict(support_batch, support_labels, query_batch, ways)",
            )
        return self.learner.logits(self.backbone, support, support_labels, query, ways)

    def adapt_predict(
        self,
        support: Mapping[str, Any],
        support_labels: Tensor,
        query: Mapping[str, Any],
        ways: int,
    ) -> Tensor:
        """Adapt to a labelled support batch and return the query logits ``[Q, ways]``.

        Args:
            support: modality name -> `ModalityBatch` of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: modality name -> `ModalityBatch` of the ``Q`` query samples.
            ways: number of classes.
        """
        return self.learner(self.backbone, support, support_labels, query, ways)

    def episode_logits(self, episode: Episode) -> Tensor:
        """Query logits ``[ways*queries, ways]`` of ``episode``."""
        return self.adapt_predict(episode.support, episode.support_labels, episode.query,
                                  episode.ways)

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The episode's training loss and the query logits ``[Q, ways]`` (the learner's
        `loss`)."""
        return self.learner.loss(self.backbone, episode)

    @classmethod
    def build(
        cls,
        *,
        kinds: Mapping[str, str],
        input_info: Mapping[str, Mapping[str, Any]],
        dim: int = 64,
        encoders: Mapping[str, str] | None = None,
        fusion: str = "gated",
        learner: str = "protonet",
        encoder_options: Mapping[str, Mapping[str, Any]] | None = None,
        fusion_options: Mapping[str, Any] | None = None,
        learner_options: Mapping[str, Any] | None = None,
    ) -> FewShotModel:
        """Build a model from registry names; ``FewShotModel.build(**model.spec)`` rebuilds it.

        Args:
            kinds: modality name -> kind (``image``, ``text``, ``audio``, ``sequence``,
                ``tabular``), in the order the model will use.
            input_info: modality name -> its loader's ``input_info()``.
            dim: embedding size of every encoder (and of the fusion's input).
            encoders: modality name -> encoder registry name; modalities left out get
                ``DEFAULT_ENCODERS[kind]``.
            fusion: fusion registry name.
            learner: learner registry name.
            encoder_options: modality name -> encoder hyper-parameters.
            fusion_options: the fusion's hyper-parameters.
            learner_options: the learner's hyper-parameters.

        Raises:
            UnknownNameError: an encoder, fusion or learner name is not registered (the message
                lists the registered names).
            ConfigError: an encoder does not fit its modality's kind, a modality named in
                ``encoders`` / ``encoder_options`` / ``input_info`` is not in ``kinds``, or a
                hyper-parameter is unknown.

        Example:
            >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {
            ...     "features": 3}}, dim=8, fusion="mean")
            >>> model.spec["encoders"], FewShotModel.build(**model.spec).modalities
            ({'m': 'mlp'}, ['m'])
        """
        names = list(kinds)
        if not names:
            raise ConfigError(
                "a model needs at least one modality", column="modalities",
                fix="give kinds={modality name: kind} with one entry or more",
            )
        encoders = dict(encoders or {})
        encoder_options = {k: dict(v) for k, v in (encoder_options or {}).items()}
        for key, given in (
            ("encoders", encoders), ("encoder_options", encoder_options),
        ):
            stray = [name for name in given if name not in kinds]
            if stray:
                raise ConfigError(
                    f"{key} names modalities the model does not use: {', '.join(stray)}",
                    column=key, fix=f"use only: {', '.join(names)}",
                )
        missing_info = [name for name in names if name not in input_info]
        if missing_info:
            raise ConfigError(
                f"no input_info for modalities {', '.join(missing_info)}", column="input_info",
                fix="pass each modality loader's input_info() (Preprocessor.input_info())",
            )
        resolved = {
            name: encoders.get(name) or DEFAULT_ENCODERS.get(kinds[name]) for name in names
        }
        built = {
            name: build_encoder(
                kinds[name], resolved[name], dim=dim, input_info=input_info[name],
                modality=name, **encoder_options.get(name, {}),
            )
            for name in names
        }
        fusion_options = dict(fusion_options or {})
        fusion_module = build_fusion(fusion, modalities=names, dim=dim, **fusion_options)
        learner_options = dict(learner_options or {})
        check_hyperparameters("learner", learner, learners.get(learner), learner_options)
        learner_module = learners.create(learner, dim=int(fusion_module.out_dim),
                                         **learner_options)
        spec = {
            "kinds": dict(kinds),
            "input_info": {name: dict(input_info[name]) for name in names},
            "dim": dim,
            "encoders": resolved,
            "fusion": fusion,
            "learner": learner,
            "encoder_options": {name: encoder_options.get(name, {}) for name in names},
            "fusion_options": fusion_options,
            "learner_options": learner_options,
        }
        return cls(Backbone(built, fusion_module), learner_module, spec=spec)
