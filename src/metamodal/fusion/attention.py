"""Attention fusion: a small transformer over one token per present modality plus a CLS token."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.errors import OptionError
from metamodal.fusion.base import Fusion, fusions
from metamodal.registry import MAX_LAYERS, require_option

POOLS = ("cls", "mean")


@fusions.register("attention")
class AttentionFusion(Fusion):
    """Self-attention across modality tokens; the CLS token's output is the fused embedding.

    Each present modality is a token (its embedding plus a learned modality-type embedding); a
    learned CLS token is prepended, as in BERT (Devlin et al., 2019, "BERT: Pre-training of
    Deep Bidirectional Transformers for Language Understanding"), and a transformer encoder
    (Vaswani et al., 2017, "Attention Is All You Need") runs over them, in the manner of
    multimodal transformers such as Nagrani et al., 2021, "Attention Bottlenecks for
    Multimodal Fusion". Absent modalities are masked out as keys (``src_key_padding_mask``);
    the CLS token is always present. ``pool="mean"`` averages the present modality tokens'
    outputs instead of taking the CLS output. A sample with no modality gets zeros.

    The layers are `nn.TransformerEncoderLayer` modules (post-norm, ReLU). With gradients on,
    and under vmap over tasks, they run through `_encoder_layer`: the same computation written
    with plain tensor operations, which can be differentiated twice (second-order MAML through
    the fusion; the CPU's fused attention kernel has no double backward) and batched by
    `torch.func.vmap` (``under_task_vmap``, set by
    `metamodal.learners.task_batching.vmap_ready`).

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``); must be divisible by ``heads``.
        heads: attention heads.
        layers: transformer encoder layers.
        feedforward: width of the feed-forward layer, as a multiple of ``dim``.
        dropout: dropout inside the transformer.
        pool: ``cls`` or ``mean``.

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]``.

    Example:
        >>> fusion = AttentionFusion(modalities=["a", "b", "c"], dim=8, heads=2)
        >>> present = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([1, 0, 1]).bool()}
        >>> fusion({"a": torch.randn(3, 8), "b": torch.randn(3, 8)}, present).shape
        torch.Size([3, 8])
    """

    under_task_vmap: bool = False
    """True while the fusion runs under `torch.func.vmap` over tasks: the plain-tensor layers
    then run even without gradients (the fused kernels have no vmap rule)."""

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        heads: int = 4,
        layers: int = 1,
        feedforward: int = 2,
        dropout: float = 0.0,
        pool: str = "cls",
    ) -> None:
        super().__init__(modalities=modalities, dim=dim)
        if heads < 1 or dim % heads:
            raise OptionError(
                f"attention: dim {dim} is not divisible by heads={heads}",
                fix="choose heads that divide dim (e.g. 1, 2 or 4)",
            )
        if pool not in POOLS:
            raise OptionError(f"attention: unknown pool {pool!r}", fix="use cls or mean")
        require_option(1 <= layers <= MAX_LAYERS and feedforward >= 1 and 0 <= dropout < 1,
                       "attention", f"layers in 1..{MAX_LAYERS}, feedforward >= 1 and "
                       f"0 <= dropout < 1, got {layers}, {feedforward}, {dropout}",
                       fix="use e.g. layers=1, feedforward=2")
        self.pool = pool
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.type_embedding = nn.Parameter(torch.randn(len(self.modalities), dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=feedforward * dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``."""
        z, mask = self.stack(embeddings, present)
        size = z.shape[0]
        zero = torch.zeros((), dtype=z.dtype)
        tokens = torch.where(mask.unsqueeze(-1), z + self.type_embedding.to(z.dtype), zero)
        tokens = torch.cat([self.cls.expand(size, 1, self.dim).to(z.dtype), tokens], dim=1)
        padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        if torch.is_grad_enabled() or self.under_task_vmap:
            out = tokens
            for layer in self.encoder.layers:
                out = _encoder_layer(layer, out, padding)
        else:  # torch's fused kernels: the same values, faster without gradients or vmap
            out = self.encoder(tokens, src_key_padding_mask=padding)
        if self.pool == "cls":
            fused = out[:, 0]
        else:
            keep = mask.unsqueeze(-1)
            total = torch.where(keep, out[:, 1:], torch.zeros((), dtype=out.dtype)).sum(1)
            fused = total / keep.sum(1).clamp_min(1).to(out.dtype)
        return self.zero_empty(fused, mask)


def _self_attention(attention: nn.MultiheadAttention, x: Tensor, padding: Tensor) -> Tensor:
    """Multi-head self-attention of ``x`` ``[B, T, D]`` over the keys where ``padding`` (bool
    ``[B, T]``) is False, with ``attention``'s weights: what it computes as
    ``attention(x, x, x, key_padding_mask=padding)[0]``. Every row needs one unpadded key."""
    size, tokens, dim = x.shape
    heads = attention.num_heads
    q, k, v = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    q, k, v = (t.view(size, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)  # [B, heads, T, T]
    scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    weights = F.dropout(scores.softmax(-1), attention.dropout, attention.training)
    out = (weights @ v).transpose(1, 2).reshape(size, tokens, dim)
    return attention.out_proj(out)


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: Tensor, padding: Tensor) -> Tensor:
    """``layer(x, src_key_padding_mask=padding)`` for a post-norm layer: ``x`` ``[B, T, D]``,
    ``padding`` bool ``[B, T]``."""
    x = layer.norm1(x + layer.dropout1(_self_attention(layer.self_attn, x, padding)))
    feedforward = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
    return layer.norm2(x + layer.dropout2(feedforward))
