"""`Embeddings`: what a `FewShotModel` makes of a batch before a head compares samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Embeddings:
    """Embedded samples: the fused vectors, which modalities each sample had, and the
    per-modality encoder outputs.

    Args:
        z: fused embeddings ``[B, D]``; for late fusion the per-modality embeddings stacked as
            ``[B, M, D]`` (in the order of ``modalities``).
        present: bool ``[B, M]``: ``present[i, m]`` is True when sample ``i`` has modality ``m``.
        parts: modality name -> encoder output ``[B, D]`` (rows of absent samples are zeros and
            must not be used), or ``None``; used by cross-modal losses.
        modalities: the modality names, the column order of ``present`` (and of ``z`` for late
            fusion); defaults to the keys of ``parts``.

    Example:
        >>> e = Embeddings(torch.randn(4, 8), torch.ones(4, 2, dtype=torch.bool),
        ...                {"a": torch.randn(4, 8), "b": torch.randn(4, 8)})
        >>> len(e.index(torch.tensor([0, 3]))), e.modalities
        (2, ['a', 'b'])
        >>> len(Embeddings.cat([e, e]))
        8
    """

    z: Tensor
    present: Tensor
    parts: dict[str, Tensor] | None = None
    modalities: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.modalities and self.parts is not None:
            self.modalities = list(self.parts)

    def __len__(self) -> int:
        return self.z.shape[0]

    @property
    def late(self) -> bool:
        """True when ``z`` holds one embedding per modality (``[B, M, D]``)."""
        return self.z.dim() == 3

    def index(self, indices: Tensor) -> Embeddings:
        """Rows ``indices`` (long ``[K]``) as new `Embeddings` of length K."""
        parts = None if self.parts is None else {
            name: part.index_select(0, indices) for name, part in self.parts.items()
        }
        return Embeddings(
            self.z.index_select(0, indices),
            self.present.index_select(0, indices),
            parts,
            list(self.modalities),
        )

    def split(self, sizes: Sequence[int]) -> list[Embeddings]:
        """Consecutive blocks of ``sizes`` rows (summing to ``len(self)``), e.g. an episode's
        support and query, as `Embeddings` whose tensors are views (nothing is copied).

        Example:
            >>> e = Embeddings(torch.arange(4.0).view(4, 1), torch.ones(4, 1, dtype=torch.bool))
            >>> support, query = e.split([1, 3])
            >>> support.z.flatten().tolist(), query.z.flatten().tolist()
            ([0.0], [1.0, 2.0, 3.0])
        """
        if sum(sizes) != len(self) or min(sizes, default=0) < 0:
            raise ValueError(f"split sizes {list(sizes)} do not add up to {len(self)} rows")
        blocks = []
        start = 0
        for size in sizes:
            rows = slice(start, start + size)
            start += size
            parts = None if self.parts is None else {
                name: part[rows] for name, part in self.parts.items()
            }
            blocks.append(Embeddings(self.z[rows], self.present[rows], parts,
                                     list(self.modalities)))
        return blocks

    @staticmethod
    def cat(items: Sequence[Embeddings]) -> Embeddings:
        """Concatenate along the sample axis; ``parts`` is kept only when every item has it.

        Example:
            >>> e = Embeddings(torch.zeros(2, 3), torch.ones(2, 1, dtype=torch.bool))
            >>> Embeddings.cat([e, e]).z.shape
            torch.Size([4, 3])
        """
        if not items:
            raise ValueError("Embeddings.cat needs at least one item")
        parts = None
        if all(item.parts is not None for item in items):
            parts = {
                name: torch.cat([item.parts[name] for item in items])  # type: ignore[index]
                for name in items[0].parts  # type: ignore[union-attr]
            }
        return Embeddings(
            torch.cat([item.z for item in items]),
            torch.cat([item.present for item in items]),
            parts,
            list(items[0].modalities),
        )

    def detach(self) -> Embeddings:
        """The same embeddings cut from the autograd graph."""
        parts = None if self.parts is None else {
            name: part.detach() for name, part in self.parts.items()
        }
        return Embeddings(self.z.detach(), self.present, parts, list(self.modalities))

    def to(self, device: torch.device | str) -> Embeddings:
        """The embeddings on ``device``."""
        parts = None if self.parts is None else {
            name: part.to(device) for name, part in self.parts.items()
        }
        return Embeddings(
            self.z.to(device), self.present.to(device), parts, list(self.modalities)
        )
