"""What an evaluation shows the model, and the embeddings of the samples it needs.

The modalities a model sees are chosen here (`select_modalities`): those it uses and the data
holds, or the subset the user names; the others are passed as absent. A modality can also be
hidden for a fraction of the samples (`drop_mask`), chosen from a seed so that every model
loses the same samples. `embed_store` embeds the store rows an evaluation needs once, in
batches, without gradients, in eval mode.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from metamodal.data.batch import TensorStore, batch_to
from metamodal.errors import ConfigError, ModalityError
from metamodal.learners.embeddings import Embeddings

PROGRESS_DELAY_S = 1.0
"""Progress bars appear only once the work has run this long (seconds)."""




def cat_embeddings(parts: Sequence[Embeddings | Tensor]) -> Embeddings | Tensor:
    """Join embeddings (`Embeddings` or plain ``[B, D]`` tensors) along the sample axis.

    Example:
        >>> cat_embeddings([torch.zeros(2, 3), torch.ones(1, 3)]).shape
        torch.Size([3, 3])
    """
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))
    return parts[0] if len(parts) == 1 else Embeddings.cat(list(parts))


def index_embeddings(emb: Any, idx: Tensor) -> Any:
    """The rows ``idx`` (long ``[K]``) of embeddings (`Embeddings` or a ``[B, D]`` tensor).

    Example:
        >>> index_embeddings(torch.arange(6.0).view(3, 2), torch.tensor([2])).tolist()
        [[4.0, 5.0]]
    """
    if isinstance(emb, Tensor):
        return emb.index_select(0, idx)
    return emb.index(idx)


def _detach(emb: Any) -> Any:
    detach = getattr(emb, "detach", None)
    return detach() if callable(detach) else emb


def model_modalities(model: Any, store: TensorStore) -> list[str]:
    """The modalities both the model uses and the store holds, in the model's order (every
    modality of the store for a model without a ``modalities`` attribute).

    Raises:
        ModalityError: the store holds none of the model's modalities.

    Example:
        >>> model_modalities(object(), TensorStore([], [], {}, {}))
        []
    """
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
    usable: list[str], modalities: Sequence[str] | None, drop: Mapping[str, float] | None,
    present: Sequence[str] | None = None,
) -> list[str]:
    """Check ``modalities`` and ``drop`` against the usable ones; return the selection: the
    requested (or, by default, usable) modalities that ``present`` lists, i.e. that some sample
    carries; by default all usable ones when none is, on request an error."""
    if isinstance(modalities, str):
        modalities = [modalities]
    if modalities is None:
        selected = [m for m in usable if present is None or m in present] or list(usable)
    else:
        selected = list(dict.fromkeys(modalities))
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
    if modalities is not None and present is not None:
        carried = [m for m in selected if m in present]
        if not carried:
            raise ModalityError(
                f"no sample of the data carries {', '.join(map(repr, selected))}",
                fix="select a modality the data has: "
                f"{', '.join(m for m in usable if m in present) or 'none'}")
        selected = carried  # a modality the data lacks entirely is absent anyway
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
        modalities: the requested subset; the others are shown as absent. Default: every
            modality that the model uses. Either way a modality that no sample of the data
            carries is left out of the selection (it would be absent anyway).
        drop: modality -> drop rate, checked the same way (names usable, rates in ``0..1``).

    Returns:
        the selected modality names, in request order.

    Raises:
        ModalityError: a name is not used by the model or absent from the data, the
            selection is empty, or no sample carries any requested modality.
        ConfigError: a drop rate is outside ``0..1``.

    Example:
        >>> select_modalities(model, store, ["image"])  # doctest: +SKIP
        ['image']
    """
    return _resolve_selection(model_modalities(model, store), modalities, drop,
                              present_modalities(store))


def present_modalities(store: TensorStore) -> list[str]:
    """The modalities of ``store`` that at least one sample carries, in store order.

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> m = lambda present: ModalityBatch(torch.zeros(2, 1), torch.tensor(present))
        >>> store = TensorStore(["a", "b"], ["x", "y"],
        ...                     {"i": m([True, False]), "s": m([False, False])}, {})
        >>> present_modalities(store)
        ['i']
    """
    return [name for name, batch in store.modalities.items() if bool(batch.present.any())]


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
def evaluation_mode(model: Any) -> Iterator[None]:
    """Eval mode and no gradients for the block; the model's training mode is restored.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> with evaluation_mode(layer):
        ...     layer.training, torch.is_grad_enabled()
        (False, False)
        >>> layer.training
        True
    """
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def progress_bar(iterable: Iterable[Any], *, enabled: bool, total: int,
                 desc: str) -> Iterable[Any]:
    """``iterable`` behind a tqdm bar that appears after `PROGRESS_DELAY_S` (when enabled).

    Example:
        >>> list(progress_bar([1, 2], enabled=False, total=2, desc="x"))
        [1, 2]
    """
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, delay=PROGRESS_DELAY_S, leave=False)


def hidden_rows(
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


def masked_batch(
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
    names = model_modalities(model, store)
    selected = _resolve_selection(names, modalities, drop, present_modalities(store))
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} < 1", fix="use a positive batch size")
    hidden = hidden_rows(store, rows, drop, seed)
    chunks = list(torch.split(rows, batch_size))
    parts = []
    with evaluation_mode(model):
        for chunk in progress_bar(chunks, enabled=progress, total=len(chunks), desc="embed"):
            batch = masked_batch(store, chunk, names, selected, hidden)
            parts.append(_detach(model.embed(batch_to(batch, device))))
    return cat_embeddings(parts)


