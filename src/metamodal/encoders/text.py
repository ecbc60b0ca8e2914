"""Text encoders over token ids ``[B, L]`` (0 = padding): bag of embeddings and TextCNN.

The bidirectional GRU, which fits text as well as numeric sequences, lives in
`metamodal.encoders.sequence` (registered as ``gru``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.layers import length_mask, masked_max, masked_mean, resolve_lengths
from metamodal.errors import ModalityError, OptionError
from metamodal.registry import require_option


def token_mask(values: Tensor, lengths: Tensor | None) -> Tensor:
    """Bool ``[B, L]``: True at real tokens (before the length and not the padding id 0).

    Example:
        >>> token_mask(torch.tensor([[5, 7, 0, 3]]), torch.tensor([2])).tolist()
        [[True, True, False, False]]
    """
    mask = values != 0
    if lengths is not None:
        mask = mask & length_mask(lengths.to(values.device), values.shape[1])
    return mask


class TokenEmbedding(nn.Module):
    """Token ids ``[B, L]`` -> embeddings ``[B, L, E]``, zero at padding and beyond the length.

    Args:
        vocab_size: number of token ids (0 = padding, 1 = unknown).
        embedding_dim: size ``E`` of each token's embedding.

    Example:
        >>> emb = TokenEmbedding(10, 4)
        >>> emb(torch.tensor([[3, 0]]), None)[0, 1].abs().sum().item()
        0.0
    """

    def __init__(self, vocab_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)

    def forward(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed token ids ``[B, L]`` (lengths ``[B]`` or ``None``) -> ``[B, L, E]``."""
        mask = token_mask(values, lengths)
        ids = torch.where(mask, values, torch.zeros((), dtype=values.dtype))
        return self.table(ids) * mask.unsqueeze(-1).to(self.table.weight.dtype)


class _TextEncoder(Encoder):
    """Shared checks of the text encoders."""

    def __init__(self, *, dim: int, input_info: Mapping[str, Any], name: str) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.vocab_size,) = require_info(name, input_info, "vocab_size")
        self._name = name

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is token ids, long ``[B, L]``."""
        if batch.values.dim() != 2 or batch.values.is_floating_point():
            raise ModalityError(
                f"encoder {self._name!r} takes token ids, long [B, L]; got "
                f"{batch.values.dtype} {tuple(batch.values.shape)}",
                fix="decode the modality with the text loader",
            )


@register_encoder("bag", ["text"])
class BagOfEmbeddings(_TextEncoder):
    """Mean of the token embeddings of a text (padding left out), then an MLP to ``dim``.

    The order-free baseline of text classification (Joulin et al., 2017, "Bag of Tricks for
    Efficient Text Classification"), strong and fast on short captions and titles.

    Args:
        dim: output size.
        input_info: ``{"vocab_size", ...}`` from the text loader.
        embedding_dim: size of the token embeddings.
        hidden: width of the MLP's hidden layer; 0 for a single linear map.

    Shapes:
        token ids ``[B, L]`` (+ lengths ``[B]``) -> ``[B, dim]``.

    Example:
        >>> enc = BagOfEmbeddings(dim=8, input_info={"vocab_size": 20, "max_length": 6})
        >>> batch = ModalityBatch(torch.tensor([[4, 5, 0], [7, 0, 0]]),
        ...                       torch.ones(2, dtype=torch.bool), torch.tensor([2, 1]))
        >>> enc(batch).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        embedding_dim: int = 64,
        hidden: int = 64,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info, name="bag")
        require_option(embedding_dim >= 1 and hidden >= 0, "bag",
                       f"embedding_dim >= 1 and hidden >= 0, got {embedding_dim}, {hidden}",
                       fix="use e.g. embedding_dim=64, hidden=64 (0: one linear map)")
        self.embed = TokenEmbedding(self.vocab_size, embedding_dim)
        if hidden > 0:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )
        else:
            self.head = nn.Linear(embedding_dim, dim)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed token ids ``[n, L]`` -> ``[n, dim]``."""
        mask = token_mask(values, lengths)
        return self.head(masked_mean(self.embed(values, lengths), mask))


@register_encoder("textcnn", ["text"])
class TextCNN(_TextEncoder):
    """Convolutions of several widths over token embeddings, max-pooled over time (TextCNN).

    Kim, 2014, "Convolutional Neural Networks for Sentence Classification": for each width
    ``k`` a 1-D convolution with ``filters`` filters and ReLU, then the maximum over the
    positions; the pooled features of all widths are concatenated and mapped to ``dim``. The
    convolutions are "wide" (padded by ``k - 1``) and the maximum is taken only over windows
    that hold at least one real token, so texts shorter than ``k`` work and padding never
    changes the output.

    Args:
        dim: output size.
        input_info: ``{"vocab_size", ...}`` from the text loader.
        embedding_dim: size of the token embeddings.
        filters: filters per width.
        widths: the convolution widths (3, 4, 5 in the paper).
        dropout: dropout on the pooled features.

    Shapes:
        token ids ``[B, L]`` (+ lengths ``[B]``) -> ``[B, dim]``.

    Example:
        >>> enc = TextCNN(dim=8, input_info={"vocab_size": 20, "max_length": 6}, filters=4)
        >>> batch = ModalityBatch(torch.tensor([[4, 5, 0], [7, 0, 0]]),
        ...                       torch.ones(2, dtype=torch.bool), torch.tensor([2, 1]))
        >>> enc(batch).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        embedding_dim: int = 64,
        filters: int = 64,
        widths: Sequence[int] = (3, 4, 5),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info, name="textcnn")
        require_option(embedding_dim >= 1 and filters >= 1 and 0 <= dropout < 1, "textcnn",
                       f"embedding_dim, filters >= 1 and 0 <= dropout < 1, got {embedding_dim}, "
                       f"{filters}, {dropout}", fix="use e.g. embedding_dim=64, filters=64")
        self.widths = [int(k) for k in widths]
        if not self.widths or min(self.widths) < 1:
            raise OptionError(
                f"textcnn needs positive convolution widths, got {widths!r}",
                fix="use e.g. widths=[3, 4, 5]",
            )
        self.embed = TokenEmbedding(self.vocab_size, embedding_dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(embedding_dim, filters, k, padding=k - 1) for k in self.widths
        )
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(filters * len(self.widths), dim)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed token ids ``[n, L]`` -> ``[n, dim]``."""
        lengths = token_mask(values, lengths).sum(1) if lengths is None else lengths
        lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
        x = self.embed(values, lengths).transpose(1, 2)  # [n, E, L]
        pooled = []
        for k, conv in zip(self.widths, self.convs, strict=True):
            feature = torch.relu(conv(x)).transpose(1, 2)  # [n, L + k - 1, filters]
            pooled.append(masked_max(feature, length_mask(lengths + k - 1, feature.shape[1])))
        return self.project(self.dropout(torch.cat(pooled, dim=1)))
