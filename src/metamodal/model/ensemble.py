"""`EnsembleModel`: several trained few-shot models whose calibrated class probabilities are
combined into one prediction (model-level fusion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode
from metamodal.errors import ConfigError
from metamodal.fusion.late import LateFusion
from metamodal.learners.base import (
    EpisodeContext,
    LearnerCapabilities,
    class_modality_counts,
)
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.protonet import PrototypeRefinement, soft_assignment

METHODS = ("mean", "stack")
"""How members are combined: ``mean`` averages their temperature-calibrated probabilities;
``stack`` takes a weighted sum of their calibrated log-probabilities (a learned logarithmic
opinion pool) and renormalises it."""


def shown_any(modalities: Mapping[str, Any], size: int, device: torch.device | str) -> Tensor:
    """bool ``[size]``: whether a sample carries at least one of ``modalities`` (a mapping of
    name to anything with a ``present`` mask ``[size]``: a batch, or a store's columns)."""
    seen = torch.zeros(size, dtype=torch.bool, device=device)
    for column in modalities.values():
        seen |= column.present.to(device=device, dtype=torch.bool)
    return seen


def compares_per_modality(model: Any) -> bool:
    """Whether ``model`` (a `metamodal.model.FewShotModel`) compares each modality on its own,
    and a modality only where every class of the episode has a support sample carrying it: a
    metric learner of late fusion (`metamodal.learners.base.MetricLearner.late_logits`). A
    query that carries no such modality gets no score from it at all."""
    fusion = getattr(getattr(model, "backbone", None), "fusion", None)
    return isinstance(fusion, LateFusion) and model.capabilities().embeds_once


def compared(member: Any, query: Mapping[str, Any], support: Mapping[str, Any],
             support_labels: Tensor, ways: int, size: int) -> Tensor:
    """bool ``[size]``: the queries ``member`` can compare with the support samples (``query``
    and ``support``: its own modalities' batches, possibly none): for one that
    `compares_per_modality`, those that carry a modality every class's support samples carry;
    for another, those that carry one of its modalities, where some support sample carries one
    too."""
    device = support_labels.device
    if not compares_per_modality(member):
        return shown_any(query, size, device) & bool(
            shown_any(support, len(support_labels), device).any())
    names = [name for name in query if name in support]
    if not names:
        return torch.zeros(size, dtype=torch.bool, device=device)
    held = torch.stack([support[n].present.to(device, torch.bool) for n in names], 1)
    every = (class_modality_counts(held, support_labels, ways) > 0).all(0)  # [M]
    carried = torch.stack([query[n].present.to(device, torch.bool) for n in names], 1)
    return (carried & every).any(1)


def refines(member: Any) -> bool:
    """Whether ``member`` (a `metamodal.model.FewShotModel`) has prototypes that joint
    transduction can refine (its learner's ``refinement``, as
    `metamodal.learners.protonet.ProtoNet`'s) and embeds every sample once."""
    return (hasattr(getattr(member, "learner", None), "refinement")
            and member.capabilities().embeds_once)


def takes_joint_steps(member: Any) -> bool:
    """Whether ``member`` takes part in joint transduction with steps of its own: it has
    prototypes to refine (`refines`) and its ``transduction`` is not 0."""
    return refines(member) and bool(member.test_time.transduction)


def check_joint_steps(members: Sequence[Any], labels: Sequence[str]) -> None:
    """`ConfigError` keyed ``joint_transduction`` unless a member with prototypes takes
    transduction steps (`takes_joint_steps`; without one, joint
    transduction would change nothing); its fix names the members (``labels``, one per
    member) that would take steps.

    Example:
        >>> from metamodal.runs import load_run
        >>> check_joint_steps([load_run("runs/maml").model, load_run("runs/a").model],
        ...                   ["runs/maml", "runs/a"])  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        metamodal.errors.ConfigError: key joint_transduction: ...
    """
    if any(takes_joint_steps(model) for model in members):
        return
    refining = [label for model, label in zip(members, labels, strict=True) if refines(model)]
    if not refining:
        raise ConfigError("joint transduction takes the members' transduction steps together, "
                          "and no member has prototypes to refine (ProtoNet)",
                          column="joint_transduction",
                          fix="leave out --joint-transduction, or combine a ProtoNet run")
    raise ConfigError("joint transduction takes the members' transduction steps together, "
                      "and no member with prototypes (ProtoNet) has any",
                      column="joint_transduction",
                      fix=f"give --transduction 10 (taken by the members with prototypes: "
                      f"{', '.join(refining)}; the others keep their logits), or leave out "
                      "--joint-transduction")


def votes(logits: Tensor, seen: Tensor) -> Tensor:
    """A member's logits ``[Q, ways]`` as `combine_log_probs` takes them: float, and zero on
    the queries it does not see (``seen`` bool ``[Q]``, its row of ``available`` there)."""
    return torch.where(seen.unsqueeze(1), logits.float(), torch.zeros((), device=logits.device))


def combine_log_probs(
    logits: Tensor, available: Tensor, temperatures: Tensor, weights: Tensor,
    method: Literal["mean", "stack"],
) -> Tensor:
    """Combine the members' logits of one episode into log-probabilities.

    Args:
        logits: ``[M, Q, ways]``: member ``m``'s logits of the ``Q`` queries.
        available: bool ``[M, Q]``: whether member ``m`` saw at least one of its modalities
            in query ``q`` (a member that saw none does not vote on that query; a query no
            member saw gets the uniform distribution).
        temperatures: ``[M]`` positive: member ``m``'s probabilities are
            ``softmax(logits[m] / temperatures[m])`` (Guo et al. 2017, "On Calibration of
            Modern Neural Networks").
        weights: ``[M]`` non-negative: ``mean`` uses them as mixture weights (renormalised
            over the available members), ``stack`` as the exponents of a logarithmic opinion
            pool ``p(y) ∝ prod_m p_m(y)^w_m`` (Genest & Zidek 1986, "Combining Probability
            Distributions"; Wolpert 1992, "Stacked Generalization", for fitting them on
            held-out data).
        method: ``mean`` or ``stack``.

    Returns:
        ``[Q, ways]`` log-probabilities (each row's ``exp`` sums to one).

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
        >>> ones = torch.ones(2, 1, dtype=torch.bool)
        >>> combine_log_probs(logits, ones, torch.ones(2), torch.ones(2), "mean").exp()
        tensor([[0.6904, 0.3096]])
    """
    log_p = torch.log_softmax(logits.float() / temperatures.view(-1, 1, 1), dim=-1)
    w = weights.view(-1, 1).to(log_p) * available.to(log_p)  # [M, Q]
    ways = logits.shape[-1]
    if method == "mean":
        total = w.sum(0)  # [Q]
        share = torch.where(total > 0, w / total.clamp(min=1e-12),
                            torch.full_like(w, 1.0 / w.shape[0]))
        mixed = torch.logsumexp(log_p + share.clamp(min=1e-30).log().unsqueeze(-1), dim=0)
        uniform = torch.full_like(mixed, -torch.log(torch.tensor(float(ways))).item())
        return torch.where((total > 0).unsqueeze(-1), mixed, uniform)
    if method == "stack":
        pooled = (w.unsqueeze(-1) * log_p).sum(0)  # [Q, ways]
        return torch.log_softmax(pooled, dim=-1)
    raise ConfigError(f"unknown ensemble method {method!r}", column="method",
                      fix=f"use one of: {', '.join(METHODS)}")


class EnsembleModel(nn.Module):
    """Several trained few-shot models (`FewShotModel`s, possibly of different learners,
    fusions and modalities) that predict as one: each member sees only its own modalities,
    and its temperature-calibrated class probabilities are combined by `combine_log_probs`.

    It has the interface of `metamodal.model.FewShotModel` that evaluation, prediction and
    serving use: ``modalities`` (the union of the members', in first-seen order), ``late``
    (False: one set of logits), `capabilities`, `embed`, `adapt_predict`,
    `episode_logits`. Its logits are the log of the combined probabilities. An ensemble is
    not trained (its members are); its combination is fitted by
    `metamodal.runs.ensemble.fit_ensemble` on validation episodes.

    Args:
        members: the trained models.
        method: ``mean`` or ``stack`` (see `METHODS`).
        temperatures: ``[M]`` each member's fitted temperature (default ones).
        weights: ``[M]`` each member's weight (default ones).

    Attributes:
        joint_transduction: in evaluation mode, the members' transduction steps take each
            query's assignment from the ensemble's combined probabilities (`refine_jointly`);
            False (each member refines alone) by default; set from the run's ``[ensemble]``
            table.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> a = FewShotModel.build(kinds={"x": "tabular"}, input_info={"x": {"features": 3}},
        ...                        dim=8, fusion="mean")
        >>> b = FewShotModel.build(kinds={"y": "tabular"}, input_info={"y": {"features": 2}},
        ...                        dim=8, fusion="mean")
        >>> from metamodal.data.batch import ModalityBatch
        >>> on = torch.ones(3, dtype=torch.bool)
        >>> batch = {"x": ModalityBatch(torch.eye(3), on),
        ...          "y": ModalityBatch(torch.randn(3, 2), on)}
        >>> ensemble = EnsembleModel([a, b], "mean").eval()
        >>> ensemble.modalities, ensemble.adapt_predict(batch, torch.arange(3), batch, 3).shape
        (['x', 'y'], torch.Size([3, 3]))
    """

    def __init__(self, members: Sequence[nn.Module], method: Literal["mean", "stack"] = "mean",
                 temperatures: Sequence[float] | Tensor | None = None,
                 weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}",
                              column="runs", fix="give two or more trained runs")
        if method not in METHODS:
            raise ConfigError(f"unknown ensemble method {method!r}", column="method",
                              fix=f"use one of: {', '.join(METHODS)}")
        self.members = nn.ModuleList(members)
        self.method = method
        count = len(members)
        t = torch.ones(count) if temperatures is None else torch.as_tensor(
            temperatures, dtype=torch.float32).clone()
        w = torch.ones(count) if weights is None else torch.as_tensor(
            weights, dtype=torch.float32).clone()
        for name, values in (("temperatures", t), ("weights", w)):
            if values.shape != (count,) or not bool(torch.isfinite(values).all()):
                raise ConfigError(f"{name} must be {count} finite numbers, got "
                                  f"{values.tolist()}", column=name,
                                  fix="re-run `metamodal ensemble` to fit them")
        if not bool((t > 0).all()):
            raise ConfigError(f"temperatures must be positive, got {t.tolist()}",
                              column="temperatures",
                              fix="re-run `metamodal ensemble` to fit them")
        if not bool((w >= 0).all()) or not bool((w > 0).any()):
            raise ConfigError(f"weights must be non-negative and not all zero, got "
                              f"{w.tolist()}", column="weights",
                              fix="re-run `metamodal ensemble` to fit them")
        # not in the state dict: the run's config.toml is where the combination is kept
        self.register_buffer("temperatures", t, persistent=False)
        self.register_buffer("weights", w, persistent=False)
        self.joint_transduction = False

    @property
    def modalities(self) -> list[str]:
        """The union of the members' modalities, in first-seen order."""
        names: list[str] = []
        for member in self.members:
            names += [m for m in member.modalities if m not in names]
        return names

    @property
    def refines_jointly(self) -> bool:
        """Whether evaluation takes joint transduction steps: ``joint_transduction`` is on and
        a member with prototypes takes transduction steps (`takes_joint_steps`); without
        one, the members' logits are their own, as with ``joint_transduction`` off."""
        return self.joint_transduction and any(takes_joint_steps(m) for m in self.members)

    @property
    def late(self) -> bool:
        """False: an ensemble gives one set of logits per sample."""
        return False

    @property
    def spec(self) -> None:
        """None: an ensemble is not built from registry names (its members are)."""
        return None

    def capabilities(self) -> LearnerCapabilities:
        """Episodic, adapting per episode (``embeds_once`` False: each member adapts to the
        episode's support batch through its own `adapt_predict`); ``uses_class_semantics``
        when a member's learner does."""
        caps = [member.capabilities() for member in self.members]
        return LearnerCapabilities(
            training="episodic", embeds_once=False, batches_tasks=False,
            uses_class_semantics=any(c.uses_class_semantics for c in caps))

    def _own(self, member: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``batch`` that ``member`` sees: its own modalities."""
        return {name: batch[name] for name in member.modalities if name in batch}

    def member_logits(
        self, support: Mapping[str, Any], support_labels: Tensor, query: Mapping[str, Any],
        ways: int, context: EpisodeContext | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Each member's raw logits of the episode, on its own modalities; with
        ``joint_transduction`` in evaluation mode, its prototypes refined jointly
        (`refine_jointly`).

        Returns:
            ``(logits [M, Q, ways], available bool [M, Q])``; a member that sees none of its
            modalities in the query batch (or in the support batch) is unavailable for
            those queries and its logits there are zeros.
        """
        size = len(next(iter(query.values())))
        device = support_labels.device
        joint = self.joint_transduction and not self.training
        rows: list[Tensor] = []
        seen: list[Tensor] = []
        refinements: list[PrototypeRefinement | None] = []
        for member in self.members:
            own_q, own_s = self._own(member, query), self._own(member, support)
            q_seen = compared(member, own_q, own_s, support_labels, ways, size)
            refinement = None
            if not bool(q_seen.any()):
                logits = torch.zeros(size, ways, device=device)
                q_seen = torch.zeros(size, dtype=torch.bool, device=device)
            elif joint and refines(member):
                refinement = member.refinement(member.embed(own_s), support_labels,
                                               member.embed(own_q), ways, context)
                logits = refinement.logits()
            else:
                logits = member.adapt_predict(own_s, support_labels, own_q, ways, context)
            rows.append(votes(logits, q_seen))
            seen.append(q_seen)
            refinements.append(refinement)
        logits, available = torch.stack(rows), torch.stack(seen)
        if joint:
            logits = self.refine_jointly(logits, available, refinements)
        return logits, available

    def refine_jointly(self, logits: Tensor, available: Tensor,
                       refinements: Sequence[PrototypeRefinement | None]) -> Tensor:
        """Joint transduction: the members' soft k-means steps (each member's own
        ``transduction`` steps, balanced or not by its own ``transduction_balance``) take
        every query's assignment from the *ensemble's* combined probabilities, so that one
        member's confidence moves the others' prototypes too.

        Args:
            logits: ``[M, Q, ways]`` the members' logits before any step (as `votes`).
            available: bool ``[M, Q]``.
            refinements: per member, its `PrototypeRefinement` of the episode (before any
                step), or None for a member whose logits stay as they are (one with no
                prototypes, or unavailable in the episode).

        Returns:
            ``[M, Q, ways]`` the members' logits after their steps.
        """
        logits = logits.clone()
        steps = [0 if r is None else member.test_time.transduction
                 for r, member in zip(refinements, self.members, strict=True)]
        for step in range(max(steps, default=0)):
            combined = self.combine(logits, available)  # [Q, ways] log-probabilities
            for m, refinement in enumerate(refinements):
                if refinement is None or step >= steps[m]:
                    continue
                weights = soft_assignment(combined, balance=self.members[m].test_time
                                          .transduction_balance)
                refinement.step(weights * available[m].unsqueeze(1).to(weights.dtype))
                logits[m] = votes(refinement.logits(), available[m])
        return logits

    def combine(self, logits: Tensor, available: Tensor) -> Tensor:
        """``[Q, ways]`` log-probabilities from `member_logits`' output (`combine_log_probs`
        with this ensemble's temperatures, weights and method)."""
        return combine_log_probs(logits, available, self.temperatures, self.weights,
                                 self.method)

    def adapt_predict(
        self, support: Mapping[str, Any], support_labels: Tensor, query: Mapping[str, Any],
        ways: int, context: EpisodeContext | None = None,
    ) -> Tensor:
        """The log of the combined class probabilities ``[Q, ways]`` (arguments as
        `metamodal.model.FewShotModel.adapt_predict`)."""
        return self.combine(*self.member_logits(support, support_labels, query, ways, context))

    def forward(self, support: Mapping[str, Any], support_labels: Tensor,
                query: Mapping[str, Any], ways: int,
                context: EpisodeContext | None = None) -> Tensor:
        """Same as `adapt_predict`."""
        return self.adapt_predict(support, support_labels, query, ways, context)

    def episode_logits(self, episode: Episode,
                       context: EpisodeContext | None = None) -> Tensor:
        """The combined log-probabilities ``[ways*queries, ways]`` of ``episode``."""
        return self.adapt_predict(episode.support, episode.support_labels, episode.query,
                                  episode.ways, context)

    def logits(self, support: Embeddings, support_labels: Tensor, query: Embeddings,
               ways: int, context: EpisodeContext | None = None) -> Tensor:
        """Not available: an ensemble adapts each member to the samples themselves.

        Raises:
            ConfigError: always (use `adapt_predict`).
        """
        raise ConfigError("an ensemble adapts each member to the episode's samples and "
                          "cannot work from precomputed embeddings",
                          fix="call adapt_predict(support_batch, support_labels, "
                          "query_batch, ways)")

    def loss(self, episode: Episode, context: EpisodeContext | None = None) -> Any:
        """Not available: an ensemble is not trained (its members are).

        Raises:
            ConfigError: always.
        """
        raise ConfigError("an ensemble is not trained; its members are",
                          fix="train the members with `metamodal train`, then combine them "
                          "with `metamodal ensemble`")

    def embed(self, batch: Mapping[str, Any]) -> Embeddings:
        """Each member's unadapted embedding, L2-normalised and concatenated: ``z``
        ``[B, sum of members' dims]`` (a late-fusion member's per-modality embeddings are
        averaged over the modalities a sample has), ``present`` ``[B, len(modalities)]``.
        Used where single samples are compared (nearest examples) and to check values are
        finite; predictions go through `adapt_predict`."""
        names = self.modalities
        size = len(next(iter(batch.values())))
        parts = []
        for member in self.members:
            own = self._own(member, batch)
            if not own:
                continue
            emb = member.embed(own)
            z = emb.z
            if z.dim() == 3:
                mask = emb.present.to(z).unsqueeze(-1)  # [B, M, 1]
                z = (z * mask).sum(1) / mask.sum(1).clamp(min=1)
            parts.append(torch.nn.functional.normalize(z.float(), dim=-1))
        present = torch.stack([
            batch[name].present.to(torch.bool) if name in batch
            else torch.zeros(size, dtype=torch.bool) for name in names], dim=1)
        return Embeddings(torch.cat(parts, dim=1), present.to(parts[0].device), None,
                          list(names))
