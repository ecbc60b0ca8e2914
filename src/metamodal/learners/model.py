"""`FewShotModel`: per-modality encoders, a fusion module and a few-shot head, composed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode, cat_batches
from metamodal.encoders import DEFAULT_ENCODERS, build_encoder, check_hyperparameters
from metamodal.errors import ConfigError, ModalityError
from metamodal.fusion.base import build_fusion
from metamodal.learners.base import check_support, learners
from metamodal.learners.embeddings import Embeddings


class FewShotModel(nn.Module):
    """A few-shot classifier over multimodal samples: encoders -> fusion -> head.

    Each modality has its own encoder (``[B, ...] -> [B, dim]``); the fusion module combines the
    per-modality embeddings, given which samples have which modality, into one embedding per
    sample (``[B, D]``; late fusion keeps one per modality, ``[B, M, D]``); the head compares
    query and support embeddings of an episode into query logits ``[Q, ways]``.

    Args:
        encoders: modality name -> encoder module (``forward(ModalityBatch) -> [B, dim]``).
        fusion: fusion module (``forward(embeddings, present) -> [B, D]``; with ``late = True``
            it returns ``[B, M, D]`` and has ``combine(logits [Q, M, W], valid [Q, M])``).
        head: a few-shot head (see `metamodal.learners.base.Head`).
        spec: the arguments of `FewShotModel.build` that made this model, if it was built so.

    Most users call `FewShotModel.build`. The modality order (``modalities``, the columns of
    ``Embeddings.present``) is the fusion's ``modalities`` when it has that attribute, else the
    order of ``encoders``.

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> from metamodal.learners.protonet import ProtoNet
        >>> class Mean(nn.Module):
        ...     def forward(self, embeddings, present):
        ...         return sum(embeddings.values()) / len(embeddings)
        >>> class Enc(nn.Module):  # any module mapping a ModalityBatch to [B, dim]
        ...     def forward(self, b): return b.values
        >>> model = FewShotModel({"x": Enc()}, Mean(), ProtoNet())
        >>> batch = {"x": ModalityBatch(torch.eye(3), torch.ones(3, dtype=torch.bool))}
        >>> e = model.embed(batch)
        >>> model.logits(e, torch.tensor([0, 1, 2]), e, 3).argmax(1).tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion: nn.Module,
        head: nn.Module,
        spec: dict[str, Any] | None = None,
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
        self.head = head
        self.spec = copy.deepcopy(spec) if spec is not None else None

    @property
    def modalities(self) -> list[str]:
        """The modality names the model uses, in its order."""
        return list(self.encoders)

    @property
    def late(self) -> bool:
        """True with late fusion: one embedding (and one set of logits) per modality."""
        return bool(getattr(self.fusion, "late", False))

    @property
    def training_mode(self) -> str:
        """The head's training mode: ``"episodic"`` or ``"supervised"``."""
        return str(getattr(self.head, "training_mode", "episodic"))

    def embed(self, batch: Mapping[str, Any]) -> Embeddings:
        """Encode every modality of ``batch`` and fuse them.

        Args:
            batch: modality name -> `ModalityBatch`, all of one size ``B``. A modality of the
                model that the batch lacks counts as absent for every sample.

        Returns:
            `Embeddings` with ``z`` ``[B, D]`` (``[B, M, D]`` for late fusion), ``present``
            ``[B, M]`` and ``parts`` (each encoder's output ``[B, dim]``, zero where absent).

        Raises:
            ModalityError: the batch has a modality the model does not know, or none at all.
        """
        known = self.modalities
        unknown = [name for name in batch if name not in self.encoders]
        if unknown:
            raise ModalityError(
                f"the input has modalities the model does not know: {', '.join(unknown)}; "
                f"the model knows: {', '.join(known)}",
                fix=f"leave out {', '.join(unknown)} (keep only {', '.join(known)}), "
                "or train a model that uses them",
            )
        if not batch:
            raise ModalityError(
                "the input has no modality",
                fix=f"give at least one of the model's modalities: {', '.join(known)}",
            )
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
            out = self.encoders[name](mb)
            parts[name] = torch.where(mask.unsqueeze(1), out, torch.zeros((), dtype=out.dtype))
            present[name] = mask
        reference = next(iter(parts.values()))
        for name in known:
            if name not in parts:
                parts[name] = reference.new_zeros(size, reference.shape[1])
                present[name] = torch.zeros(size, dtype=torch.bool, device=reference.device)
        parts = {name: parts[name] for name in known}
        present = {name: present[name] for name in known}
        z = self.fusion(parts, present)
        return Embeddings(z, torch.stack([present[n] for n in known], dim=1), parts, known)

    def embed_episode(self, episode: Episode) -> tuple[Embeddings, Embeddings]:
        """Embed an episode's support and query sets (in one pass when they carry the same
        modalities, so normalisation layers see the whole episode); returns (support, query)."""
        support, query = episode.support, episode.query
        if set(support) != set(query):
            return self.embed(support), self.embed(query)
        n_support = len(episode.support_labels)
        both = self.embed(cat_batches([support, query]))
        total = len(both)
        device = both.z.device
        return (
            both.index(torch.arange(n_support, device=device)),
            both.index(torch.arange(n_support, total, device=device)),
        )

    def logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int
    ) -> Tensor:
        """Query logits ``[Q, ways]`` of an episode.

        With late fusion the head runs once per modality ``m`` on the support samples that
        have ``m``; ``valid[q, m]`` is True when query ``q`` has ``m`` and every class has at
        least one support sample with ``m``; the fusion's ``combine`` merges the per-modality
        logits ``[Q, M, ways]`` over the valid ones.

        Args:
            support: embeddings of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: embeddings of the ``Q`` query samples.
            ways: number of classes.

        Raises:
            InsufficientSamplesError: some class has no support sample.
        """
        check_support(support_labels, ways)
        if not self.late:
            return self.head(support.z, support_labels, query.z, ways)
        per_modality: list[Tensor] = []
        valid: list[Tensor] = []
        n_query = len(query)
        for m in range(support.present.shape[1]):
            has = support.present[:, m]
            counts = torch.bincount(support_labels[has], minlength=ways)
            if bool((counts > 0).all()):
                rows = has.nonzero().squeeze(1)
                per_modality.append(
                    self.head(
                        support.z[rows, m], support_labels[rows], query.z[:, m], ways
                    )
                )
                valid.append(query.present[:, m])
            else:
                per_modality.append(query.z.new_zeros(n_query, ways))
                valid.append(torch.zeros_like(query.present[:, m]))
        return self.fusion.combine(torch.stack(per_modality, 1), torch.stack(valid, 1))

    def episode_logits(self, episode: Episode) -> Tensor:
        """Query logits ``[ways*queries, ways]`` of ``episode``."""
        support, query = self.embed_episode(episode)
        return self.logits(support, episode.support_labels, query, episode.ways)

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The episode's training loss (the head's ``loss`` on the query logits plus its
        ``extra_loss`` on the embeddings) and the query logits ``[Q, ways]``."""
        support, query = self.embed_episode(episode)
        logits = self.logits(support, episode.support_labels, query, episode.ways)
        total = self.head.loss(logits, episode.query_labels)
        extra = getattr(self.head, "extra_loss", None)
        if extra is not None:
            total = total + extra(support, episode.support_labels, query, episode.query_labels)
        return total, logits

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
            learner: learner (head) registry name.
            encoder_options: modality name -> encoder hyper-parameters.
            fusion_options: the fusion's hyper-parameters.
            learner_options: the head's hyper-parameters.

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
        head = learners.create(learner, dim=int(fusion_module.out_dim), **learner_options)
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
        return cls(built, fusion_module, head, spec=spec)
