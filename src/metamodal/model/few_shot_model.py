"""`FewShotModel`: a `Backbone` (per-modality encoders and a fusion module) and a learner."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch  # noqa: F401  (the docstring examples use it)
from torch import Tensor, nn

from metamodal.data.augment import Augmentation
from metamodal.data.batch import Episode, cat_batches
from metamodal.encoders import DEFAULT_ENCODERS, build_encoder
from metamodal.errors import ConfigError, DatasetError
from metamodal.fusion.base import build_fusion
from metamodal.learners.base import (
    EpisodeContext,
    LearnerCapabilities,
    MetricLearner,
    embed_pair,
    learners,
)
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.protonet import PrototypeRefinement
from metamodal.learners.task_batching import obstacles
from metamodal.model.backbone import Backbone
from metamodal.model.test_time import TestTime, averaged_embedding, check_test_time


class FewShotModel(nn.Module):
    """A few-shot classifier over multimodal samples: a `Backbone` (encoders + fusion) and the
    `Learner` that owns each episode.

    Args:
        backbone: the encoders and fusion, ``backbone(batch) -> Embeddings``.
        learner: the learner (see `metamodal.learners.base.Learner`).
        spec: the arguments of `FewShotModel.build` that made this model, if it was built so.

    Most users call `FewShotModel.build`. What the model does at test time beyond embedding
    (test-time augmentation, transduction) is set by `set_test_time` and kept in
    ``test_time``.

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
        self.test_time = TestTime()
        self.tta_augmentation: Augmentation | None = None
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

    def capabilities(self) -> LearnerCapabilities:
        """What the model can do: its learner's `capabilities`, with ``batches_tasks`` only
        when every encoder can run under vmap over tasks too.

        ``training`` says how the trainer trains it (``"episodic"`` or ``"supervised"``),
        ``embeds_once`` whether evaluation may embed each sample once (`embed`, then
        `logits`) instead of running each episode through `adapt_predict`, and
        ``uses_class_semantics`` whether episodes need an `EpisodeContext` with the classes'
        descriptions (AM3).

        Example:
            >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {
            ...     "features": 3}}, dim=8, fusion="mean", learner="maml")
            >>> caps = model.capabilities()
            >>> caps.training, caps.embeds_once, caps.batches_tasks
            ('episodic', False, True)
        """
        learner = self.learner.capabilities()
        if learner.batches_tasks and obstacles(self.learner, self.backbone):
            return replace(learner, batches_tasks=False)
        return learner

    def set_test_time(self, test_time: TestTime, augmentation: Augmentation | None = None, *,
                      source: str | None = None) -> None:
        """Use ``test_time`` in evaluation mode (`metamodal.model.test_time`): ``tta``
        transformed copies of each sample, drawn by ``augmentation``, averaged into its
        embedding (`embed`); ``transduction`` soft k-means steps in the learner, balanced over
        the classes with ``transduction_balance``; ``fusion_confidence`` and
        ``fusion_reliability`` in late fusion's mix.

        Raises:
            ConfigError: settings out of range, ``tta`` without transforms, transduction (or
                its balance) with a learner that has no prototypes, or ``fusion_confidence`` /
                ``fusion_reliability`` without late fusion (the key named, and ``source``).
        """
        check_test_time(test_time, self.learner, augmentation, source=source,
                        fusion=self.backbone.fusion)
        self.test_time = test_time
        self.tta_augmentation = augmentation if test_time.tta else None
        if hasattr(self.learner, "transduction"):
            self.learner.transduction = test_time.transduction
            self.learner.balance = test_time.transduction_balance
        if self.late:
            self.backbone.fusion.confidence = float(test_time.fusion_confidence)
            self.backbone.fusion.reliability = float(test_time.fusion_reliability)

    def embed(self, batch: Mapping[str, Any]) -> Embeddings:
        """The backbone's embeddings of ``batch`` (see `Backbone.forward`); in evaluation
        mode with test-time augmentation, the mean over the sample and its copies
        (`metamodal.model.test_time.averaged_embedding`)."""
        if self.training or self.tta_augmentation is None:
            return self.backbone(batch)
        return averaged_embedding(self.backbone, batch, self.test_time.tta,
                                  self.tta_augmentation)

    def logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from precomputed embeddings (learners whose capabilities
        say ``embeds_once``: the metric learners); ``context`` as in the learner's `logits`.

        Raises:
            ConfigError: the learner adapts weights per task and needs the samples themselves
                (use `adapt_predict`).
        """
        self._require_embeds_once()
        return self.learner.logits(self.backbone, support, support_labels, query, ways, context)

    def logits_many(self, episodes: Sequence[tuple[Embeddings, Tensor, Embeddings]],
                    ways: int) -> list[Tensor]:
        """`logits` of several ``ways``-way episodes (support embeddings, support labels,
        query embeddings), one ``[Q, ways]`` tensor each, computed together where the learner
        can (`metamodal.learners.base.MetricLearner.logits_many`; a learner without it: one
        by one)."""
        self._require_embeds_once()
        many = getattr(self.learner, "logits_many", None)
        if many is None:
            return [self.learner.logits(self.backbone, s, labels, q, ways)
                    for s, labels, q in episodes]
        return many(self.backbone, episodes, ways)

    def _require_embeds_once(self) -> None:
        if not self.capabilities().embeds_once:
            raise ConfigError(
                f"learner {type(self.learner).__name__} adapts the network per task and cannot "
                "work from precomputed embeddings",
                fix="call adapt_predict(support_batch, support_labels, query_batch, ways)",
            )

    def adapt_predict(
        self,
        support: Mapping[str, Any],
        support_labels: Tensor,
        query: Mapping[str, Any],
        ways: int,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Adapt to a labelled support batch and return the query logits ``[Q, ways]``.

        Args:
            support: modality name -> `ModalityBatch` of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: modality name -> `ModalityBatch` of the ``Q`` query samples.
            ways: number of classes.
            context: what the episode tells the learner beyond its samples (the class
                semantics AM3 needs; see `EpisodeContext`).

        In evaluation mode with test-time augmentation, support and query are embedded by
        `embed` (each sample averaged with its copies), as evaluation from embeddings does.
        """
        if self.tta_augmentation is not None and not self.training:  # a metric learner
            return self.logits(self.embed(support), support_labels, self.embed(query), ways,
                               context)
        return self.learner(self.backbone, support, support_labels, query, ways, context)

    def refinement(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int,
        context: EpisodeContext | None = None,
    ) -> PrototypeRefinement | None:
        """The episode's prototypes, from precomputed embeddings (as `logits`), ready for
        soft k-means steps whose assignments come from outside (an ensemble's joint
        transduction, `metamodal.model.EnsembleModel`), or None when the learner has no
        prototypes to refine. Its ``logits()`` before any step are `logits`' without
        transduction."""
        refine = getattr(self.learner, "refinement", None)
        if refine is None:
            return None
        return refine(self.backbone, support, support_labels, query, ways, context)

    def episode_logits(self, episode: Episode,
                       context: EpisodeContext | None = None) -> Tensor:
        """Query logits ``[ways*queries, ways]`` of ``episode`` (``context`` as in
        `adapt_predict`)."""
        return self.adapt_predict(episode.support, episode.support_labels, episode.query,
                                  episode.ways, context)

    def loss(self, episode: Episode,
             context: EpisodeContext | None = None) -> tuple[Tensor, Tensor]:
        """The episode's training loss and the query logits ``[Q, ways]`` (the learner's
        `loss`; ``context`` as in `adapt_predict`).

        Raises:
            DatasetError: a query label lies outside ``0..ways-1``.
        """
        try:
            return self.learner.loss(self.backbone, episode, context)
        except IndexError:  # checked only on failure: no device sync on the training path
            _check_query_labels(episode)
            raise

    def loss_and_parts(self, episode: Episode) -> tuple[
            Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """`loss` and the logits, and every sample's per-modality encoder outputs, for a
        further loss on them (the cross-modal alignment): ``(loss, logits, parts, present)``
        where ``parts[m]`` ``[S+Q, dim]`` (support then query rows, with gradients) and bool
        ``present[m]`` ``[S+Q]`` are as `Backbone.encode` returns them.

        A metric learner's own embeddings of the episode are returned (one pass of the
        encoders); other learners (MAML adapts its weights to each episode) have the samples
        encoded once more with the backbone's own weights.

        Raises:
            DatasetError: a query label lies outside ``0..ways-1``.
        """
        if not isinstance(self.learner, MetricLearner):
            loss, logits = self.loss(episode)
            return (loss, logits,
                    *self.backbone.encode(cat_batches([episode.support, episode.query])))
        try:
            support, query = embed_pair(self.backbone, episode.support, episode.query)
            loss, logits = self.learner.embedded_loss(self.backbone, support, query, episode)
        except IndexError:
            _check_query_labels(episode)
            raise
        both = Embeddings.cat([support, query])
        assert both.parts is not None  # a backbone's embeddings always carry their parts
        present = {m: both.present[:, i] for i, m in enumerate(both.modalities)}
        return loss, logits, both.parts, present

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
        learners.check_options(learner, learner_options, options_key="learner_options")
        learner_module = learners.create(learner, options_key="learner_options",
                                         dim=int(fusion_module.out_dim), **learner_options)
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


def _check_query_labels(episode: Episode) -> None:
    """Raise `DatasetError` when a query label of ``episode`` lies outside ``0..ways-1``."""
    labels = episode.query_labels
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= episode.ways):
        raise DatasetError(
            f"query labels must lie in 0..{episode.ways - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}",
            fix="number the episode's classes 0..ways-1 in query_labels") from None
