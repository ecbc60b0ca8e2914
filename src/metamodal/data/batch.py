"""Tensors that flow through the pipeline: per-modality batches, decoded stores and episodes.

Shapes by modality kind (``B`` = samples in the batch):

============  ===============================  ===========================
kind          ``values``                        ``lengths``
============  ===============================  ===========================
image         float ``[B, C, H, W]``            ``None``
text          long ``[B, L]`` (0 = padding)     long ``[B]`` tokens
audio         float ``[B, n_mels, frames]``     long ``[B]`` frames
sequence      float ``[B, T, D]``               long ``[B]`` steps
tabular       float ``[B, F]``                  ``None``
video         float ``[B, T, C, H, W]``         ``None``
============  ===============================  ===========================

The kinds themselves (loader, default encoder, inspection, augmentation) are
`metamodal.data.kinds`.

``present`` is a bool ``[B]`` mask: False where the sample lacks that modality (its ``values``
row is all zeros and must never be used as data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def all_present(present: Tensor) -> bool:
    """Whether every entry of the presence mask ``present`` (``[B]``, bool or 0/1) is True.

    The networks use it to skip the masking of absent rows when there are none (one
    device-to-host transfer on a GPU). Under `torch.func.vmap` and other transforms where the
    values cannot be read, and while `torch.compile` traces (a graph holds no branch on
    values), the answer is False, and callers take their general path, which masks absent
    rows.

    Example:
        >>> all_present(torch.ones(3, dtype=torch.bool)), all_present(torch.tensor([True, False]))
        (True, False)
    """
    if torch.compiler.is_compiling():
        return False
    try:
        return bool(present.all())
    except RuntimeError:  # values that cannot be read (e.g. under vmap)
        return False


@dataclass
class ModalityBatch:
    """One modality of a batch of samples.

    Args:
        values: padded values, ``[B, ...]`` (see the module docstring for each kind).
        present: bool ``[B]``, False where the sample lacks the modality.
        lengths: long ``[B]`` valid length along axis 1 (text, audio frames are axis 2 for
            audio: ``values[:, :, :length]``), or ``None`` for fixed-size kinds.

    Example:
        >>> b = ModalityBatch(torch.zeros(4, 3), torch.tensor([True, False, True, True]))
        >>> b.index(torch.tensor([0, 2])).values.shape
        torch.Size([2, 3])
    """

    values: Tensor
    present: Tensor
    lengths: Tensor | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    def index(self, indices: Tensor) -> ModalityBatch:
        """Rows ``indices`` (long ``[K]``) as a new batch of size K."""
        return ModalityBatch(
            self.values.index_select(0, indices),
            self.present.index_select(0, indices),
            None if self.lengths is None else self.lengths.index_select(0, indices),
        )

    def to(self, device: torch.device | str) -> ModalityBatch:
        """The batch on ``device``."""
        return ModalityBatch(
            self.values.to(device),
            self.present.to(device),
            None if self.lengths is None else self.lengths.to(device),
        )

    def with_present(self, present: Tensor) -> ModalityBatch:
        """The same values with another presence mask; absent rows are zeroed (values and
        lengths), as the loaders leave a missing cell.

        Example:
            >>> both = torch.tensor([True, True])
            >>> b = ModalityBatch(torch.ones(2, 3), both, torch.tensor([3, 2]))
            >>> c = b.with_present(torch.tensor([True, False]))
            >>> c.values.sum().item(), c.lengths.tolist()
            (3.0, [3, 0])
        """
        keep = present.view(-1, *([1] * (self.values.dim() - 1)))
        values = torch.where(keep, self.values, torch.zeros((), dtype=self.values.dtype))
        lengths = None if self.lengths is None else torch.where(present, self.lengths, 0)
        return ModalityBatch(values, present, lengths)


Batch = dict[str, ModalityBatch]
"""A multimodal batch: modality name -> `ModalityBatch`, all with the same B."""


def index_batch(batch: Mapping[str, ModalityBatch], indices: Tensor) -> Batch:
    """Rows ``indices`` (long ``[K]``) of every modality of ``batch``.

    Example:
        >>> b = {"m": ModalityBatch(torch.arange(4.0).view(4, 1), torch.ones(4, dtype=torch.bool))}
        >>> index_batch(b, torch.tensor([3, 0]))["m"].values.flatten().tolist()
        [3.0, 0.0]
    """
    return {name: mb.index(indices) for name, mb in batch.items()}


def batch_to(batch: Mapping[str, ModalityBatch], device: torch.device | str) -> Batch:
    """Every modality of ``batch`` moved to ``device``.

    Example:
        >>> b = {"m": ModalityBatch(torch.zeros(2, 1), torch.ones(2, dtype=torch.bool))}
        >>> batch_to(b, "cpu")["m"].values.device.type
        'cpu'
    """
    return {name: mb.to(device) for name, mb in batch.items()}


def cat_batches(batches: Sequence[Mapping[str, ModalityBatch]]) -> Batch:
    """Concatenate batches along B; values are zero-padded to the longest along every axis.

    Example:
        >>> ok = torch.ones(1, dtype=torch.bool)
        >>> a = {"t": ModalityBatch(torch.ones(1, 2), ok, torch.tensor([2]))}
        >>> b = {"t": ModalityBatch(torch.ones(1, 4), ok, torch.tensor([4]))}
        >>> joined = cat_batches([a, b])["t"]
        >>> joined.values.shape, joined.lengths.tolist()
        (torch.Size([2, 4]), [2, 4])
    """
    out: Batch = {}
    for name in batches[0]:
        parts = [b[name] for b in batches]
        shape = [max(p.values.shape[d] for p in parts) for d in range(parts[0].values.dim())]
        padded = []
        for p in parts:
            pad: list[int] = []
            for d in reversed(range(1, p.values.dim())):
                pad += [0, shape[d] - p.values.shape[d]]
            padded.append(torch.nn.functional.pad(p.values, pad))
        lengths = None if parts[0].lengths is None else torch.cat([p.lengths for p in parts])
        out[name] = ModalityBatch(
            torch.cat(padded), torch.cat([p.present for p in parts]), lengths
        )
    return out


@dataclass
class TensorStore:
    """Every sample of a dataset decoded once: what episodes are cut from by indexing.

    Args:
        ids: sample ids, ``N`` of them, in table order.
        labels: class label of each sample, ``N``.
        modalities: modality name -> `ModalityBatch` with ``B = N``.
        kinds: modality name -> kind (``image``, ``text``, ...).

    Example:
        >>> s = TensorStore(["a", "b"], ["x", "y"],
        ...                 {"m": ModalityBatch(torch.ones(2, 3), torch.ones(2, dtype=torch.bool))},
        ...                 {"m": "tabular"})
        >>> s.batch(torch.tensor([1]))["m"].values.shape
        torch.Size([1, 3])
    """

    ids: list[str]
    labels: list[str]
    modalities: dict[str, ModalityBatch]
    kinds: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Tensor, modalities: Sequence[str] | None = None) -> Batch:
        """The samples at ``indices`` (long ``[K]``), restricted to ``modalities`` if given."""
        names = list(self.modalities) if modalities is None else list(modalities)
        return {name: self.modalities[name].index(indices) for name in names}

    def class_indices(self) -> dict[str, Tensor]:
        """Class label -> long tensor of the sample indices of that class, in table order."""
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            groups.setdefault(label, []).append(i)
        return {label: torch.tensor(idx, dtype=torch.long) for label, idx in groups.items()}

    def index_of(self) -> dict[str, int]:
        """Sample id -> row index."""
        return {sid: i for i, sid in enumerate(self.ids)}


@dataclass
class Episode:
    """One few-shot task: ``ways`` classes, ``shots`` support and ``queries`` query samples each.

    Args:
        support: the support batch, ``B = ways * shots`` (grouped by class).
        query: the query batch, ``B = ways * queries``.
        support_labels: long ``[ways * shots]`` in ``0..ways-1``.
        query_labels: long ``[ways * queries]`` in ``0..ways-1``.
        classes: class names; ``classes[k]`` is the class of label ``k``.
        support_ids: sample ids of the support set.
        query_ids: sample ids of the query set.
        name: the episode's name (from an episode file) or its number.
        origin: ``(file, line)`` of an episode read from an episode file, for errors that
            concern the episode as a whole (one class, no query).
    """

    support: Batch
    query: Batch
    support_labels: Tensor
    query_labels: Tensor
    classes: list[str]
    support_ids: list[str]
    query_ids: list[str]
    name: str = ""
    origin: tuple[str, int] | None = None

    @property
    def ways(self) -> int:
        """The number of classes of the episode."""
        return len(self.classes)

    def to(self, device: torch.device | str) -> Episode:
        """The episode's tensors on ``device``."""
        return Episode(
            batch_to(self.support, device),
            batch_to(self.query, device),
            self.support_labels.to(device),
            self.query_labels.to(device),
            self.classes,
            self.support_ids,
            self.query_ids,
            self.name,
            self.origin,
        )
