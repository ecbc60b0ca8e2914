"""Few-shot evaluation protocols: score a model on many episodes, embedding each sample once
where the learner allows it.

When the model's learner compares embeddings of the unadapted backbone (metric learners,
``capabilities().embeds_once``), a sample's embedding depends on that sample alone, so evaluation
embeds each sample that any episode needs exactly once (in batches, without gradients, in eval
mode) and then runs every episode's ``logits`` on those precomputed embeddings: 600 episodes
cost 600 small calls instead of 600 passes of the encoders. When the learner adapts the
network per task (the MAML family), each episode's support and query batches go through
``adapt_predict``.

The model is anything with the interface of ``metamodal.model.FewShotModel``:

- ``modalities: list[str]`` (optional; without it, every modality of the store is used);
- ``capabilities() -> LearnerCapabilities`` (optional; without it the model is evaluated
  from embeddings);
- with ``embeds_once``: ``embed(batch) -> Embeddings`` (or a plain tensor ``[B, D]``) and
  ``logits(support, support_labels, query, ways) -> Tensor [Q, ways]``;
- without it: ``adapt_predict(support_batch, support_labels, query_batch, ways) -> [Q, ways]``.

Modalities left out of an evaluation (``modalities``) or hidden for a fraction of the samples
(``drop``) are masked in the batches themselves, so both paths see the same inputs.
Everything runs under `torch.no_grad`: a learner that adapts by gradient steps turns
gradients back on for that itself (``torch.enable_grad()``), as `metamodal.learners.FineTune`
and the MAML family do.

The protocol follows Vinyals et al. (2016), "Matching Networks for One Shot Learning": mean
accuracy over many test episodes drawn from held-out classes, with a 95% confidence interval.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from metamodal.data.batch import Episode, TensorStore, batch_to
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import ConfigError, DatasetError, MetamodalError, ModalityError
from metamodal.evaluate.stats import confusion_matrices, macro_f1_from_confusion, mean_ci95
from metamodal.learners.embeddings import Embeddings

PROGRESS_DELAY_S = 1.0
"""Progress bars appear only once the work has run this long (seconds)."""


@dataclass
class EvalResult:
    """The outcome of evaluating a model on a set of few-shot episodes.

    Args:
        accuracy: mean per-episode query accuracy, in ``0..1``.
        ci95: half width of the 95% confidence interval of ``accuracy`` (``nan`` for one
            episode; see `metamodal.evaluate.stats.mean_ci95`).
        macro_f1: mean per-episode macro-F1, in ``0..1``.
        episodes: number of episodes.
        ways: classes per episode (``None`` when fixed episodes differ).
        shots: support samples per class (``None`` when episodes differ or are unbalanced).
        queries: query samples per class (``None`` when episodes differ or are unbalanced).
        seed: seed of the episode sampler and of the modality drop.
        accuracies: per-episode accuracies, ``episodes`` of them, in episode order; two results
            with the same ``episode_digest`` can be compared episode by episode
            (`metamodal.evaluate.stats.paired_difference`).
        name: what was evaluated ("protonet+gated", "only:image", ...).
        modalities: the modalities the model was allowed to see.
        drop: modality -> fraction of samples for which it was hidden, if any.
        episode_digest: fingerprint of the exact episodes (sample indices and labels).

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.89, 600, 5, 1, 15, 0, name="protonet")
        >>> r.to_dict()["accuracy"], r.to_dict()["shots"]
        (0.9, 1)
    """

    accuracy: float
    ci95: float
    macro_f1: float
    episodes: int
    ways: int | None
    shots: int | None
    queries: int | None
    seed: int
    accuracies: list[float] = field(default_factory=list)
    name: str | None = None
    modalities: list[str] | None = None
    drop: dict[str, float] | None = None
    episode_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-able dict (non-finite numbers become ``None``)."""
        return {
            "name": self.name,
            "accuracy": _finite_or_none(self.accuracy),
            "ci95": _finite_or_none(self.ci95),
            "macro_f1": _finite_or_none(self.macro_f1),
            "episodes": self.episodes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "modalities": None if self.modalities is None else list(self.modalities),
            "drop": None if self.drop is None else dict(self.drop),
            "episode_digest": self.episode_digest,
            "accuracies": [_finite_or_none(a) for a in self.accuracies],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild a result from `to_dict` output (``None`` numbers become ``nan``).

        Raises:
            ConfigError: a required key (accuracy, ci95, episodes, ways, shots) is missing.
        """
        missing = [k for k in ("accuracy", "ci95", "episodes", "ways", "shots") if k not in data]
        if missing:
            raise ConfigError(
                f"result lacks {', '.join(missing)}", fix="pass a dict written by to_dict()"
            )
        return cls(
            accuracy=_nan_if_none(data["accuracy"]),
            ci95=_nan_if_none(data["ci95"]),
            macro_f1=_nan_if_none(data.get("macro_f1")),
            episodes=int(data["episodes"]),
            ways=data["ways"],
            shots=data["shots"],
            queries=data.get("queries"),
            seed=int(data.get("seed", 0)),
            accuracies=[_nan_if_none(a) for a in data.get("accuracies") or []],
            name=data.get("name"),
            modalities=data.get("modalities"),
            drop=data.get("drop"),
            episode_digest=data.get("episode_digest"),
        )

    def renamed(self, name: str) -> EvalResult:
        """A copy of the result under another name."""
        return replace(self, name=name)


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


# ----------------------------------------------------------------------------- embeddings


def _cat_embeddings(parts: Sequence[Embeddings | Tensor]) -> Embeddings | Tensor:
    """Join embeddings (`Embeddings` or plain ``[B, D]`` tensors) along the sample axis."""
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))
    return parts[0] if len(parts) == 1 else Embeddings.cat(list(parts))


def _index_embeddings(emb: Any, idx: Tensor) -> Any:
    if isinstance(emb, Tensor):
        return emb.index_select(0, idx)
    return emb.index(idx)


def _detach(emb: Any) -> Any:
    detach = getattr(emb, "detach", None)
    return detach() if callable(detach) else emb


def _model_modalities(model: Any, store: TensorStore) -> list[str]:
    """The modalities both the model uses and the store holds, in the model's order."""
    wanted = getattr(model, "modalities", None)
    if wanted is None:
        return list(store.modalities)
    names = [m for m in wanted if m in store.modalities]
    if not names:
        raise ModalityError(
            f"the data has none of the model's modalities ({', '.join(wanted)}); "
            f"it has: {', '.join(store.modalities)}",
            fix="evaluate on data that carries at least one modality the model was trained on",
        )
    return names


def _resolve_selection(
    usable: list[str], modalities: Sequence[str] | None, drop: Mapping[str, float] | None
) -> list[str]:
    """Check ``modalities`` and ``drop`` against the usable ones; return the selection."""
    if isinstance(modalities, str):
        modalities = [modalities]
    selected = list(usable) if modalities is None else list(dict.fromkeys(modalities))
    if not selected:
        raise ModalityError("no modality selected", fix=f"choose from: {', '.join(usable)}")
    for name in [*selected, *(drop or {})]:
        if name not in usable:
            raise ModalityError(
                f"modality {name!r} is not used by the model or not present in the data",
                fix=f"choose from: {', '.join(usable)}",
            )
    for name, rate in (drop or {}).items():
        if not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(
                f"drop rate {rate} of modality {name!r} is outside 0..1",
                fix="give the fraction of samples to hide, between 0 and 1",
            )
    return selected


def select_modalities(
    model: Any,
    store: TensorStore,
    modalities: Sequence[str] | None = None,
    drop: Mapping[str, float] | None = None,
) -> list[str]:
    """The modalities an evaluation shows the model, after checking the request.

    Args:
        model: a few-shot model; its ``modalities`` attribute (if any) lists what it uses.
        store: the decoded samples.
        modalities: the requested subset (default: every modality both model and data have).
        drop: modality -> drop rate, checked the same way (names usable, rates in ``0..1``).

    Returns:
        the selected modality names, in request order.

    Raises:
        ModalityError: a name is not used by the model or absent from the data, or the
            selection is empty.
        ConfigError: a drop rate is outside ``0..1``.

    Example:
        >>> select_modalities(model, store, ["image"])  # doctest: +SKIP
        ['image']
    """
    return _resolve_selection(_model_modalities(model, store), modalities, drop)


def _drop_seed(seed: int, modality: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(modality.encode("utf-8"))) % (2**63 - 1)


def drop_mask(num_rows: int, rows: Tensor, rate: float, seed: int, modality: str) -> Tensor:
    """Which of ``rows`` hide ``modality``: exactly ``round(rate * #unique rows)`` of them.

    Each store row gets a random key from a generator seeded by ``(seed, modality)``; the rows
    with the smallest keys are dropped. The choice is therefore the same for every model, nested
    across rates (what 25% hides, 50% hides too) and different for each modality.

    Args:
        num_rows: number of rows in the store ``N``.
        rows: long ``[K]`` store rows (duplicates allowed; they agree).
        rate: fraction in ``0..1`` of the unique rows to drop.
        seed: drop seed.
        modality: modality name.

    Returns:
        bool ``[K]``, True where the modality is hidden.

    Example:
        >>> drop_mask(10, torch.arange(10), 0.3, seed=0, modality="image").sum().item()
        3
    """
    unique = rows.unique()
    count = int(round(float(rate) * unique.numel()))
    if count == 0:
        return torch.zeros(rows.shape, dtype=torch.bool)
    gen = torch.Generator().manual_seed(_drop_seed(seed, modality))
    keys = torch.rand(num_rows, generator=gen, dtype=torch.float64)
    dropped = unique[torch.argsort(keys[unique], stable=True)[:count]]
    return torch.isin(rows, dropped)


@contextmanager
def _inference(model: Any) -> Iterator[None]:
    """Eval mode and no gradients for the block; the model's training mode is restored."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def _progress(iterable: Iterable[Any], *, enabled: bool, total: int, desc: str) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, delay=PROGRESS_DELAY_S, leave=False)


def _hidden_rows(
    store: TensorStore, rows: Tensor, drop: Mapping[str, float] | None, seed: int
) -> dict[str, Tensor]:
    """Modality -> bool ``[N]`` over the store: True where `drop_mask` hides it among
    ``rows`` (decided on all of them at once, so the fraction is exact)."""
    hidden = {}
    for name, rate in (drop or {}).items():
        if rate > 0:
            mask = torch.zeros(len(store), dtype=torch.bool)
            mask[rows] = drop_mask(len(store), rows, rate, seed, name)
            hidden[name] = mask
    return hidden


def _masked_batch(
    store: TensorStore,
    rows: Tensor,
    names: Sequence[str],
    selected: Sequence[str],
    hidden: Mapping[str, Tensor],
) -> dict[str, Any]:
    """The store rows ``rows`` as a batch of ``names``, with modalities outside ``selected``
    absent for every sample and those in ``hidden`` absent where it says so."""
    batch = store.batch(rows, names)
    for name in names:
        mb = batch[name]
        if name not in selected:
            batch[name] = mb.with_present(torch.zeros_like(mb.present))
        elif name in hidden:
            batch[name] = mb.with_present(mb.present & ~hidden[name][rows])
    return batch


def embed_store(
    model: Any,
    store: TensorStore,
    indices: Tensor,
    modalities: Sequence[str] | None = None,
    drop: Mapping[str, float] | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Any:
    """Embed the store rows ``indices`` once, in batches, without gradients, in eval mode.

    The model's training mode is restored afterwards. Modalities outside ``modalities`` are
    passed as absent (``present`` all False, values zeroed); with ``drop``, each listed modality
    is hidden for exactly ``round(rate * #unique indices)`` of the samples, chosen by
    `drop_mask` from ``seed`` (the same samples for every model).

    Args:
        model: a few-shot model (``embed(batch) -> Embeddings``), already on ``device``.
        store: the decoded samples.
        indices: long ``[K]`` store rows to embed.
        modalities: the modalities the model may see; default: all the model uses.
        drop: modality -> fraction of samples (``0..1``) for which it is hidden.
        seed: seed of the drop choice.
        batch_size: samples per ``embed`` call.
        device: where the batches are sent.
        progress: show a progress bar if embedding takes longer than a second.

    Returns:
        the embeddings of the K rows, in the order of ``indices`` (``Embeddings`` or a tensor
        ``[K, D]``, whatever the model's ``embed`` returns).

    Raises:
        ModalityError: a modality in ``modalities`` or ``drop`` is not usable.
        ConfigError: a drop rate is outside ``0..1`` or ``batch_size < 1``.

    Example:
        >>> emb = embed_store(model, store, torch.arange(len(store)))  # doctest: +SKIP
    """
    rows = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
    names = _model_modalities(model, store)
    selected = _resolve_selection(names, modalities, drop)
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} < 1", fix="use a positive batch size")
    hidden = _hidden_rows(store, rows, drop, seed)
    chunks = list(torch.split(rows, batch_size))
    parts = []
    with _inference(model):
        for chunk in _progress(chunks, enabled=progress, total=len(chunks), desc="embed"):
            batch = _masked_batch(store, chunk, names, selected, hidden)
            parts.append(_detach(model.embed(batch_to(batch, device))))
    return _cat_embeddings(parts)


# ----------------------------------------------------------------------------- episodes


@dataclass
class _IndexEpisodes:
    """Episodes as store rows and labels (what the scoring loop consumes)."""

    support: list[Tensor]
    query: list[Tensor]
    support_labels: list[Tensor]
    query_labels: list[Tensor]
    ways: list[int]
    known_shape: tuple[int, int, int] | None = None

    def digest(self, store_size: int) -> str:
        h = hashlib.sha1(str(store_size).encode())
        for parts in zip(
            self.support, self.support_labels, self.query, self.query_labels, strict=True
        ):
            for t in parts:
                h.update(t.to(torch.int64).numpy().tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def shape(self) -> tuple[int | None, int | None, int | None]:
        """(ways, shots, queries) when every episode is balanced and alike, else None."""
        if self.known_shape is not None:
            return self.known_shape
        ways = set(self.ways)
        shots: set[int | None] = set()
        queries: set[int | None] = set()
        for w, sl, ql in zip(self.ways, self.support_labels, self.query_labels, strict=True):
            shots.add(_per_class(sl, w))
            queries.add(_per_class(ql, w))
        return _only(ways), _only(shots), _only(queries)


def _only(values: set[int | None]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def _per_class(labels: Tensor, ways: int) -> int | None:
    counts = torch.bincount(labels, minlength=ways)
    return int(counts[0]) if bool((counts == counts[0]).all()) else None


def _sampled_episodes(
    store: TensorStore,
    classes: Sequence[str],
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    episodes: int,
) -> _IndexEpisodes:
    sampler = EpisodeSampler(store, list(classes), ways, shots, queries, seed, episodes)
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)
    plan = _IndexEpisodes([], [], [], [], [])
    for i in range(episodes):
        support, query, _ = sampler.indices(i)
        plan.support.append(torch.as_tensor(support, dtype=torch.long).cpu())
        plan.query.append(torch.as_tensor(query, dtype=torch.long).cpu())
        plan.support_labels.append(support_labels)
        plan.query_labels.append(query_labels)
        plan.ways.append(ways)
    plan.known_shape = (ways, shots, queries)
    return plan


def _file_episodes(store: TensorStore, episodes: Sequence[Episode]) -> _IndexEpisodes:
    index_of = store.index_of()
    plan = _IndexEpisodes([], [], [], [], [])
    for number, ep in enumerate(episodes):
        label = ep.name or str(number)
        rows = []
        for ids in (ep.support_ids, ep.query_ids):
            unknown = [s for s in ids if s not in index_of]
            if unknown:
                raise DatasetError(
                    f"episode {label!r} names samples that are not in the data: "
                    f"{', '.join(map(str, unknown[:5]))}",
                    fix="evaluate on the dataset the episode file was written for",
                )
            rows.append(torch.tensor([index_of[s] for s in ids], dtype=torch.long))
        s_lab = torch.as_tensor(ep.support_labels, dtype=torch.long).cpu()
        q_lab = torch.as_tensor(ep.query_labels, dtype=torch.long).cpu()
        ways = ep.ways
        if (
            s_lab.numel() != rows[0].numel()
            or q_lab.numel() != rows[1].numel()
            or (s_lab.numel() and (s_lab.min() < 0 or s_lab.max() >= ways))
            or (q_lab.numel() and (q_lab.min() < 0 or q_lab.max() >= ways))
        ):
            raise DatasetError(
                f"episode {label!r} has labels that do not match its samples or classes",
                fix="give one label in 0..ways-1 per support and query sample",
            )
        if q_lab.numel() == 0:
            raise DatasetError(
                f"episode {label!r} has no query samples", fix="give every episode a query set"
            )
        plan.support.append(rows[0])
        plan.query.append(rows[1])
        plan.support_labels.append(s_lab)
        plan.query_labels.append(q_lab)
        plan.ways.append(ways)
    return plan


# ----------------------------------------------------------------------------- scoring


def _embeds_once(model: Any) -> bool:
    """Whether ``model`` is evaluated from embeddings (`_predict_from_embeddings`): its
    ``capabilities()`` say ``embeds_once``, or it has no ``capabilities``."""
    capabilities = getattr(model, "capabilities", None)
    return capabilities is None or capabilities().embeds_once


def _score(
    model: Any,
    store: TensorStore,
    plan: _IndexEpisodes,
    *,
    modalities: Sequence[str] | None,
    drop: Mapping[str, float] | None,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
    name: str | None,
) -> EvalResult:
    n_episodes = len(plan.ways)
    if n_episodes == 0:
        raise ConfigError("no episodes to evaluate", fix="evaluate at least one episode")
    selected = select_modalities(model, store, modalities, drop)
    drop = {m: float(r) for m, r in drop.items()} if drop else None

    episodes = zip(plan.support, plan.support_labels, plan.query, plan.ways, strict=True)
    episodes = _progress(episodes, enabled=progress, total=n_episodes, desc="episodes")
    if _embeds_once(model):
        preds = _predict_from_embeddings(model, store, plan, episodes, selected, drop, seed,
                                         batch_size, device, progress)
    else:
        preds = _predict_per_episode(model, store, plan, episodes, selected, drop, seed, device)

    pred = torch.cat(preds).cpu()
    target = torch.cat(plan.query_labels)
    sizes = torch.tensor([q.numel() for q in plan.query_labels])
    group = torch.repeat_interleave(torch.arange(n_episodes), sizes)
    correct = torch.bincount(group, weights=(pred == target).double(), minlength=n_episodes)
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


def _check_logits(logits: Tensor, queries: int, ways: int) -> None:
    if tuple(logits.shape) != (queries, ways):
        raise MetamodalError(
            f"the model returned logits of shape {tuple(logits.shape)}, expected "
            f"[{queries}, {ways}] (queries, ways)"
        )


def _predict_from_embeddings(
    model: Any, store: TensorStore, plan: _IndexEpisodes, episodes: Iterable[Any],
    selected: list[str], drop: Mapping[str, float] | None, seed: int, batch_size: int,
    device: torch.device | str, progress: bool,
) -> list[Tensor]:
    """Embed every sample the episodes need once, then run each episode's ``logits``."""
    needed = torch.cat(plan.support + plan.query).unique()
    emb = embed_store(model, store, needed, selected, drop, seed=seed, batch_size=batch_size,
                      device=device, progress=progress)
    position = torch.full((len(store),), -1, dtype=torch.long)
    position[needed] = torch.arange(needed.numel())
    position = position.to(device)
    preds: list[Tensor] = []
    with _inference(model):
        for support, s_lab, query, ways in episodes:
            s_emb = _index_embeddings(emb, position[support.to(device)])
            q_emb = _index_embeddings(emb, position[query.to(device)])
            logits = model.logits(s_emb, s_lab.to(device), q_emb, ways)
            _check_logits(logits, query.numel(), ways)
            preds.append(logits.detach().argmax(-1))
    return preds


def _predict_per_episode(
    model: Any, store: TensorStore, plan: _IndexEpisodes, episodes: Iterable[Any],
    selected: list[str], drop: Mapping[str, float] | None, seed: int,
    device: torch.device | str,
) -> list[Tensor]:
    """Run each episode's support and query batches through ``adapt_predict``."""
    names = _model_modalities(model, store)
    needed = torch.cat(plan.support + plan.query).unique()
    hidden = _hidden_rows(store, needed, drop, seed)
    preds: list[Tensor] = []
    with _inference(model):
        for support, s_lab, query, ways in episodes:
            s_batch = batch_to(_masked_batch(store, support, names, selected, hidden), device)
            q_batch = batch_to(_masked_batch(store, query, names, selected, hidden), device)
            logits = model.adapt_predict(s_batch, s_lab.to(device), q_batch, ways)
            _check_logits(logits, query.numel(), ways)
            preds.append(logits.detach().argmax(-1))
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
    plan = _sampled_episodes(store, classes, ways, shots, queries, seed, episodes)
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

    Returns:
        `EvalResult` over these episodes.

    Raises:
        DatasetError: an episode names an id missing from ``store`` or has bad labels.

    Example:
        >>> eps = read_episode_file("episodes.jsonl", store)  # doctest: +SKIP
        >>> evaluate_episodes(model, store, eps).accuracy  # doctest: +SKIP
    """
    plan = _file_episodes(store, episodes)
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
    )
