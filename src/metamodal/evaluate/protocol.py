"""Few-shot evaluation protocols: score a model on many episodes, embedding each sample once
where the learner allows it.

When the model's learner compares embeddings of the unadapted backbone (metric learners,
``capabilities().embeds_once``), a sample's embedding depends on that sample alone, so evaluation
embeds each sample that any episode needs exactly once (in batches, without gradients, in eval
mode; `metamodal.evaluate.embedding.embed_store`) and then runs every episode's ``logits`` on
those precomputed embeddings: 600 episodes cost 600 small calls instead of 600 passes of the
encoders. When the learner adapts the network per task (the MAML family), each episode's
support and query batches go through ``adapt_predict``. An ensemble
(`metamodal.model.EnsembleModel`) whose members all embed once is evaluated member by member
from their own embeddings, the members' logits combined per episode; with ``drop``, or with a
member that adapts per task, it goes episode by episode through its own ``adapt_predict``.

The model is anything with the interface of ``metamodal.model.FewShotModel``:

- ``modalities: list[str]`` (optional; without it, every modality of the store is used);
- ``capabilities() -> LearnerCapabilities`` (optional; without it the model is evaluated
  from embeddings);
- with ``embeds_once``: ``embed(batch) -> Embeddings`` (or a plain tensor ``[B, D]``) and
  ``logits(support, support_labels, query, ways) -> Tensor [Q, ways]``, and optionally
  ``logits_many(episodes, ways) -> list[Tensor]`` for several episodes at once;
- without it: ``adapt_predict(support_batch, support_labels, query_batch, ways) -> [Q, ways]``.

Modalities left out of an evaluation (``modalities``) or hidden for a fraction of the samples
(``drop``) are masked in the batches themselves, so both paths see the same inputs.
Everything runs under `torch.no_grad`: a learner that adapts by gradient steps turns
gradients back on for that itself (``torch.enable_grad()``), as `metamodal.learners.FineTune`
and the MAML family do.

The episodes come from `metamodal.evaluate.episode_plans`, the result is an
`metamodal.evaluate.result.EvalResult` (both also importable from here).

With a ``shard`` (a process of a job of several, `metamodal.train.distributed.Job`), each
process predicts every ``world_size``-th episode from its ``rank`` on, and the predictions are
gathered, so that every process returns the result of all the episodes (a ``drop``
evaluation is not shared out: which samples it hides depends on all the episodes' samples).

The protocol follows Vinyals et al. (2016), "Matching Networks for One Shot Learning": mean
accuracy over many test episodes drawn from held-out classes, with a 95% confidence interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from metamodal.data.batch import Episode, TensorStore, batch_to
from metamodal.errors import ConfigError, MetamodalError
from metamodal.evaluate.embedding import (
    drop_mask,
    embed_store,
    evaluation_mode,
    hidden_rows,
    index_embeddings,
    masked_batch,
    model_modalities,
    progress_bar,
    select_modalities,
)
from metamodal.evaluate.episode_plans import EpisodePlan, file_episodes, sampled_episodes
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.stats import confusion_matrices, macro_f1_from_confusion, mean_ci95
from metamodal.model.ensemble import refines, shown_any, votes

EPISODE_CHUNK = 100
"""The most episodes handed to a model's ``logits_many`` at once."""

__all__ = ["EvalResult", "drop_mask", "embed_store", "episode_logits", "evaluate",
           "evaluate_episodes", "select_modalities"]


class EpisodeShard(Protocol):
    """A process's part of an evaluation shared out over several processes: its ``rank``,
    the ``world_size``, and ``all_gather_object(value)``, which returns every process's
    ``value`` in rank order (`metamodal.train.distributed.Job` is one)."""

    rank: int
    world_size: int

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        ...


def _embeds_once(model: Any) -> bool:
    """Whether ``model`` is evaluated from embeddings (`_predict_from_embeddings`): its
    ``capabilities()`` say ``embeds_once``, or it has no ``capabilities``."""
    capabilities = getattr(model, "capabilities", None)
    return capabilities is None or capabilities().embeds_once


def _score(
    model: Any,
    store: TensorStore,
    plan: EpisodePlan,
    *,
    modalities: Sequence[str] | None,
    drop: Mapping[str, float] | None,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
    name: str | None,
    shard: EpisodeShard | None = None,
) -> EvalResult:
    n_episodes = len(plan.ways)
    if n_episodes == 0:
        raise ConfigError("no episodes to evaluate", fix="evaluate at least one episode")
    selected = select_modalities(model, store, modalities, drop)
    drop = {m: float(r) for m, r in drop.items()} if drop else None

    unseen = unseen_classes(store, plan, selected, drop, seed)
    if shard is None or shard.world_size == 1 or drop:
        logits = _plan_logits(model, store, plan, selected, drop, seed, batch_size, device,
                              progress)
        predicted = [_known(x, u).argmax(-1).cpu() for x, u in zip(logits, unseen, strict=True)]
    else:
        predicted = _shared_predictions(model, store, plan, selected, seed, batch_size, device,
                                        progress, shard, unseen)
    pred = torch.cat(predicted)
    target = torch.cat(plan.query_labels)
    known = ~torch.cat([u[labels] for u, labels in zip(unseen, plan.query_labels, strict=True)])
    sizes = torch.tensor([q.numel() for q in plan.query_labels])
    group = torch.repeat_interleave(torch.arange(n_episodes), sizes)
    correct = torch.bincount(group, weights=((pred == target) & known).double(),
                             minlength=n_episodes)
    accuracies = (correct / sizes).tolist()
    confusion = confusion_matrices(pred, target, group, n_episodes, max(plan.ways))
    f1 = macro_f1_from_confusion(confusion)

    accuracy, ci95 = mean_ci95(accuracies)
    ways, shots, queries = plan.shape()
    return EvalResult(
        accuracy=accuracy,
        ci95=ci95,
        macro_f1=f1.mean().item(),
        episodes=n_episodes,
        ways=ways,
        shots=shots,
        queries=queries,
        seed=seed,
        accuracies=accuracies,
        name=name,
        modalities=selected,
        drop=drop,
        episode_digest=plan.digest(len(store)),
    )


def unseen_classes(store: TensorStore, plan: EpisodePlan, selected: Sequence[str],
                   drop: Mapping[str, float] | None, seed: int) -> list[Tensor]:
    """Per episode, bool ``[ways]``: the classes none of whose support samples shows the model
    one of ``selected`` (those ``drop`` hides, as the embedding hides them, not counted). The
    model knows nothing of such a class: it is predicted for no query, and its own queries
    count as wrong, whatever the order of the classes (a warning says how many episodes)."""
    rows = torch.cat(plan.support + plan.query).unique()
    hidden = hidden_rows(store, rows, drop, seed)
    shown = torch.zeros(len(store), dtype=torch.bool)
    for name in selected:
        present = store.modalities[name].present.bool().cpu()
        shown |= present & ~hidden[name] if name in hidden else present
    unseen = [torch.bincount(labels[shown[support]], minlength=ways) == 0
              for support, labels, ways in zip(plan.support, plan.support_labels, plan.ways,
                                                strict=True)]
    count = sum(bool(u.any()) for u in unseen)
    if count:
        warnings.warn(f"{count} of {len(unseen)} episodes hold a class none of whose support "
                      f"samples shows the model {', '.join(selected)}: no query is predicted "
                      "as it, and its queries count as wrong", stacklevel=3)
    return unseen


def _known(logits: Tensor, unseen: Tensor) -> Tensor:
    """``logits`` ``[Q, ways]`` with the ``unseen`` classes (bool ``[ways]``) at the lowest
    value, so that no query is predicted as one (all of them unseen: all equal)."""
    return logits.masked_fill(unseen.to(logits.device), torch.finfo(logits.dtype).min)


def _plan_logits(model: Any, store: TensorStore, plan: EpisodePlan, selected: list[str],
                 drop: Mapping[str, float] | None, seed: int, batch_size: int,
                 device: torch.device | str, progress: bool) -> list[Tensor]:
    """Each episode's query logits ``[Q, ways]`` (detached), embedding once where the model
    allows it."""
    if _members_embed_once(model, drop):
        return _ensemble_from_members(model, store, plan, selected, seed, batch_size, device,
                                      progress)
    episodes = zip(plan.support, plan.support_labels, plan.query, plan.ways, strict=True)
    episodes = progress_bar(episodes, enabled=progress, total=len(plan.ways), desc="episodes")
    if _embeds_once(model):
        return _predict_from_embeddings(model, store, plan, episodes, selected, drop, seed,
                                        batch_size, device, progress)
    return _predict_per_episode(model, store, plan, episodes, selected, drop, seed, device)


def _members_embed_once(model: Any, drop: Mapping[str, float] | None) -> bool:
    """Whether ``model`` is an ensemble (``members`` and ``combine``, as
    `metamodal.model.EnsembleModel`) of models that all embed once, evaluated without
    ``drop``: then `_ensemble_from_members` evaluates it."""
    members = getattr(model, "members", None)
    return (members is not None and hasattr(model, "combine") and not drop
            and all(_embeds_once(member) for member in members))


def _ensemble_from_members(model: Any, store: TensorStore, plan: EpisodePlan,
                           selected: list[str], seed: int, batch_size: int,
                           device: torch.device | str, progress: bool) -> list[Tensor]:
    """An ensemble's combined log-probabilities ``[Q, ways]`` of each episode, every member's
    logits computed from its own embeddings (each sample embedded once per member, not once
    per episode) and combined by ``model.combine``; with ``model.joint_transduction``, the
    prototypes of the members that have them refined jointly first
    (`metamodal.model.EnsembleModel.refine_jointly`). As
    `metamodal.model.EnsembleModel.member_logits` does episode by episode, a member takes
    part in an episode whose support shows it one of its selected modalities, for the
    queries that show it one."""
    n = len(plan.ways)
    members = list(model.members)
    joint = bool(getattr(model, "joint_transduction", False))
    logits = [[torch.zeros(q.numel(), w, device=device)
               for q, w in zip(plan.query, plan.ways, strict=True)] for _ in members]
    available = [[torch.zeros(q.numel(), dtype=torch.bool, device=device) for q in plan.query]
                 for _ in members]
    refinements: list[list[Any]] = [[None] * n for _ in members]
    for k, member in enumerate(members):
        own = [name for name in selected if name in member.modalities]
        seen = shown_any({name: store.modalities[name] for name in own}, len(store), "cpu")
        usable = [i for i in range(n)
                  if bool(seen[plan.support[i]].any()) and bool(seen[plan.query[i]].any())]
        if not usable:
            continue
        if joint and refines(member):
            refined = _plan_refinements(member, store, plan.subset(usable), own, seed,
                                        batch_size, device, progress)
            part = [r.logits() for r in refined]
            for i, r in zip(usable, refined, strict=True):
                refinements[k][i] = r
        else:
            part = _plan_logits(member, store, plan.subset(usable), own, None, seed,
                                batch_size, device, progress)
        for i, one in zip(usable, part, strict=True):
            shown = seen[plan.query[i]].to(device)
            logits[k][i] = votes(one, shown)
            available[k][i] = shown
    combined = []
    for i in range(n):
        rows = torch.stack([member_rows[i] for member_rows in logits])
        seen_by = torch.stack([member_seen[i] for member_seen in available])
        if joint:
            rows = model.refine_jointly(rows, seen_by, [r[i] for r in refinements])
        combined.append(model.combine(rows, seen_by).detach())
    return combined


def _embedded_once(model: Any, store: TensorStore, plan: EpisodePlan, selected: list[str],
                   drop: Mapping[str, float] | None, seed: int, batch_size: int,
                   device: torch.device | str, progress: bool) -> tuple[Any, Tensor]:
    """The embeddings of every sample the episodes of ``plan`` need, each embedded once
    (`embed_store`), and long ``[len(store)]`` ``position``: a store row's index among them
    (-1 for rows no episode needs), on ``device``."""
    needed = torch.cat(plan.support + plan.query).unique()
    emb = embed_store(model, store, needed, selected, drop, seed=seed, batch_size=batch_size,
                      device=device, progress=progress)
    position = torch.full((len(store),), -1, dtype=torch.long)
    position[needed] = torch.arange(needed.numel())
    return emb, position.to(device)


def _plan_refinements(model: Any, store: TensorStore, plan: EpisodePlan, selected: list[str],
                      seed: int, batch_size: int, device: torch.device | str,
                      progress: bool) -> list[Any]:
    """Each episode's `metamodal.learners.protonet.PrototypeRefinement` by ``model`` (a
    `metamodal.model.FewShotModel` whose learner has prototypes), from embeddings of every
    sample the episodes need, each embedded once."""
    emb, position = _embedded_once(model, store, plan, selected, None, seed, batch_size,
                                   device, progress)
    with evaluation_mode(model):
        return [model.refinement(index_embeddings(emb, position[support.to(device)]),
                                 labels.to(device),
                                 index_embeddings(emb, position[query.to(device)]), ways)
                for support, labels, query, ways in zip(plan.support, plan.support_labels,
                                                        plan.query, plan.ways, strict=True)]


def _shared_predictions(model: Any, store: TensorStore, plan: EpisodePlan,
                        selected: list[str], seed: int, batch_size: int,
                        device: torch.device | str, progress: bool,
                        shard: EpisodeShard, unseen: list[Tensor]) -> list[Tensor]:
    """Each episode's predicted query labels ``[Q]`` (CPU), never one of its ``unseen``
    classes: this process predicts episodes ``rank, rank + world_size, ...``, and every
    process gets all of them."""
    n, world = len(plan.ways), shard.world_size
    mine = list(range(shard.rank, n, world))
    predicted = []
    if mine:
        logits = _plan_logits(model, store, plan.subset(mine), selected, None, seed, batch_size,
                              device, progress and shard.rank == 0)
        predicted = [_known(x, unseen[i]).argmax(-1).cpu()
                     for i, x in zip(mine, logits, strict=True)]
    everyone = shard.all_gather_object(predicted)
    ordered: list[Tensor] = [torch.empty(0)] * n
    for rank, theirs in enumerate(everyone):
        for i, p in zip(range(rank, n, world), theirs, strict=True):
            ordered[i] = p
    return ordered


def episode_logits(
    model: Any,
    store: TensorStore,
    plan: EpisodePlan,
    *,
    modalities: Sequence[str] | None = None,
    drop: Mapping[str, float] | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[Tensor]:
    """The query logits of every episode of ``plan``, exactly as `evaluate` computes them
    before taking the argmax (the same inputs, masking and embedding path; a class none of
    whose support samples shows the model a modality at the lowest value, `unseen_classes`).

    Args:
        model: a few-shot model (see the module docstring), already on ``device``.
        store: the decoded samples.
        plan: the episodes (`metamodal.evaluate.episode_plans.sampled_episodes` or
            `file_episodes`).
        modalities, drop, seed, batch_size, device, progress: as in `evaluate`.

    Returns:
        one detached tensor ``[Q_i, ways_i]`` per episode, on ``device``.

    Example:
        >>> plan = sampled_episodes(store, split.val, 5, 1, 15, 0, 100)  # doctest: +SKIP
        >>> logits = episode_logits(model, store, plan)  # doctest: +SKIP
    """
    if not plan.ways:
        raise ConfigError("no episodes to evaluate", fix="evaluate at least one episode")
    selected = select_modalities(model, store, modalities, drop)
    drop = {m: float(r) for m, r in drop.items()} if drop else None
    unseen = unseen_classes(store, plan, selected, drop, seed)
    logits = _plan_logits(model, store, plan, selected, drop, seed, batch_size, device, progress)
    return [_known(x, u) for x, u in zip(logits, unseen, strict=True)]


def _check_logits(logits: Tensor, queries: int, ways: int) -> None:
    if tuple(logits.shape) != (queries, ways):
        raise MetamodalError(
            f"the model returned logits of shape {tuple(logits.shape)}, expected "
            f"[{queries}, {ways}] (queries, ways)"
        )


def _predict_from_embeddings(
    model: Any, store: TensorStore, plan: EpisodePlan, episodes: Iterable[Any],
    selected: list[str], drop: Mapping[str, float] | None, seed: int, batch_size: int,
    device: torch.device | str, progress: bool,
) -> list[Tensor]:
    """Embed every sample the episodes need once, then run the episodes' ``logits``: up to
    `EPISODE_CHUNK` consecutive episodes of the same ways at a time through the model's
    ``logits_many`` where it has one (a learner that fits per episode fits them together),
    one by one otherwise."""
    emb, position = _embedded_once(model, store, plan, selected, drop, seed, batch_size,
                                   device, progress)
    many = getattr(model, "logits_many", None)
    preds: list[Tensor] = []
    chunk: list[tuple[Any, Tensor, Any]] = []  # (support, labels, query) embeddings

    def flush(ways: int) -> None:
        if many is not None:
            logits = many(chunk, ways)
        else:
            logits = [model.logits(s, labels, q, ways) for s, labels, q in chunk]
        for (_, _, q), one in zip(chunk, logits, strict=True):
            _check_logits(one, len(q), ways)
            preds.append(one.detach())
        chunk.clear()

    with evaluation_mode(model):
        chunk_ways = 0
        for support, s_lab, query, ways in episodes:
            if chunk and (ways != chunk_ways or len(chunk) == EPISODE_CHUNK):
                flush(chunk_ways)
            chunk_ways = ways
            chunk.append((index_embeddings(emb, position[support.to(device)]),
                          s_lab.to(device), index_embeddings(emb, position[query.to(device)])))
        if chunk:
            flush(chunk_ways)
    return preds


def _predict_per_episode(
    model: Any, store: TensorStore, plan: EpisodePlan, episodes: Iterable[Any],
    selected: list[str], drop: Mapping[str, float] | None, seed: int,
    device: torch.device | str,
) -> list[Tensor]:
    """Run each episode's support and query batches through ``adapt_predict``."""
    names = model_modalities(model, store)
    needed = torch.cat(plan.support + plan.query).unique()
    hidden = hidden_rows(store, needed, drop, seed)
    preds: list[Tensor] = []
    with evaluation_mode(model):
        for support, s_lab, query, ways in episodes:
            s_batch = batch_to(masked_batch(store, support, names, selected, hidden), device)
            q_batch = batch_to(masked_batch(store, query, names, selected, hidden), device)
            logits = model.adapt_predict(s_batch, s_lab.to(device), q_batch, ways)
            _check_logits(logits, query.numel(), ways)
            preds.append(logits.detach())
    return preds


def evaluate(
    model: Any,
    store: TensorStore,
    classes: Sequence[str],
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    drop: Mapping[str, float] | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
    name: str | None = None,
    shard: EpisodeShard | None = None,
) -> EvalResult:
    """Mean accuracy (with 95% CI) of a few-shot model over episodes drawn from ``classes``.

    Episodes come from ``metamodal.data.episodes.EpisodeSampler`` with this ``seed``, so the
    same seed gives the same episodes for every model and paired comparisons
    (`metamodal.evaluate.stats.paired_difference`) are valid. Every sample any episode needs is
    embedded once (`embed_store`); then each episode's ``model.logits`` runs on those embeddings.

    Args:
        model: a few-shot model (see the module docstring), already on ``device``.
        store: the decoded samples.
        classes: the class labels to draw episodes from (usually the test split).
        ways: classes per episode.
        shots: support samples per class.
        queries: query samples per class.
        episodes: number of episodes (600 is the literature's usual count).
        seed: seed of the episodes and of the modality drop.
        modalities: only these modalities are shown to the model; the others are passed as
            absent. Default: every modality the model uses.
        drop: modality -> fraction of samples (``0..1``) for which it is hidden, support and
            query alike, chosen deterministically from ``seed`` (see `drop_mask`); samples that
            lack the modality anyway may be among them.
        batch_size: samples per ``embed`` call.
        device: where batches and embeddings live.
        progress: show progress bars when the work takes longer than a second.
        name: a name to record in the result.
        shard: this process's part when several processes share the episodes out (see the
            module docstring); every process returns the whole result.

    Returns:
        `EvalResult` with accuracy, its 95% CI, mean macro-F1 and per-episode accuracies.

    Raises:
        InsufficientSamplesError: a class has fewer than ``shots + queries`` samples.
        ModalityError: ``modalities`` or ``drop`` names a modality the model cannot use.
        ConfigError: invalid counts or rates.

    Example:
        >>> r = evaluate(model, store, split.test, ways=5, shots=1)  # doctest: +SKIP
        >>> print(f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}")  # doctest: +SKIP
    """
    for label, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if value < 1:
            raise ConfigError(f"{label} = {value} < 1", fix=f"use at least one for {label}")
    if episodes < 1:
        raise ConfigError(f"episodes = {episodes} < 1", fix="evaluate at least one episode")
    plan = sampled_episodes(store, classes, ways, shots, queries, seed, episodes)
    return _score(
        model,
        store,
        plan,
        modalities=modalities,
        drop=drop,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        name=name,
        shard=shard,
    )


def evaluate_episodes(
    model: Any,
    store: TensorStore,
    episodes: Sequence[Episode],
    *,
    modalities: Sequence[str] | None = None,
    drop: Mapping[str, float] | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
    name: str | None = None,
    shard: EpisodeShard | None = None,
) -> EvalResult:
    """Evaluate on a fixed list of episodes (e.g. from an episode file), exactly as given.

    Samples are looked up in ``store`` by their ids (``Episode.support_ids`` /
    ``query_ids``) and embedded once; the episodes' own decoded batches are not used. Episodes
    may differ in ways and sizes; then the result's ``ways``/``shots``/``queries`` are ``None``.

    Args:
        model: a few-shot model (see the module docstring), already on ``device``.
        store: the decoded samples, holding every id the episodes name.
        episodes: the episodes (``read_episode_file(path, store)``).
        modalities: only these modalities are shown to the model (see `evaluate`).
        drop: modality -> fraction of samples for which it is hidden (see `evaluate`).
        seed: seed of the modality drop (recorded in the result).
        batch_size: samples per ``embed`` call.
        device: where batches and embeddings live.
        progress: show progress bars when the work takes longer than a second.
        name: a name to record in the result.
        shard: this process's part when several processes share the episodes out.

    Returns:
        `EvalResult` over these episodes.

    Raises:
        DatasetError: an episode names an id missing from ``store`` or has bad labels.

    Example:
        >>> eps = read_episode_file("episodes.jsonl", store)  # doctest: +SKIP
        >>> evaluate_episodes(model, store, eps).accuracy  # doctest: +SKIP
    """
    plan = file_episodes(store, episodes)
    return _score(
        model,
        store,
        plan,
        modalities=modalities,
        drop=drop,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        name=name,
        shard=shard,
    )
