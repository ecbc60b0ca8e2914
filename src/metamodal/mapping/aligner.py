"""`Aligner`: the trainable part of a cross-modal alignment (temperature, regression maps)
and its loss over the per-modality embeddings of a batch."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.errors import ConfigError
from metamodal.hints import is_number
from metamodal.mapping.contrastive import margin_alignment_loss, masked_info_nce
from metamodal.mapping.regression import (
    REGRESSION_LOSSES,
    RegressionMap,
    regression_errors,
    regression_loss,
    stacked_maps,
)

OBJECTIVES = ("infonce", "margin", "regression")
MAX_MARGIN = 1e3
"""The largest margin: far above the distances of the joint space (1e308 made the loss NaN)."""
POSITIVES = ("instance", "class")


def parse_direction(direction: str) -> tuple[str, str]:
    """``"caption->image"`` -> ``("caption", "image")``; `ConfigError` otherwise."""
    source, arrow, target = direction.partition("->")
    if not arrow or not source.strip() or not target.strip():
        raise ConfigError(f"a mapping direction is SOURCE->TARGET, got {direction!r}",
                          column="align_direction", fix="e.g. caption->image")
    if source.strip() == target.strip():
        raise ConfigError(f"a mapping direction joins two modalities, got {direction!r}",
                          column="align_direction", fix="e.g. caption->image")
    return source.strip(), target.strip()


class Aligner(nn.Module):
    """Aligns the encoders of two or more modalities into one joint space.

    The joint space is the space of the encoders' outputs (every encoder maps its modality to
    ``dim``): after alignment, the embeddings of a sample's image and of its caption are close.
    The ``objective`` shapes the encoders:

    - ``"infonce"``: symmetric InfoNCE with a learnable temperature over every pair of
      modalities, on the samples that have both (CLIP, Radford et al. 2021);
    - ``"margin"``: the margin-based contrastive loss of the Siamese learner (Hadsell et al.
      2006) with the same sample in two modalities as the positive pair;
    - ``"regression"``: ``f(X) ~ Y`` for the ``direction`` ``X->Y`` under ``regression_loss``
      (MSE or cosine): the source encoder and ``f`` learn to predict the target encoder's
      (detached) embeddings.

    Whatever the objective, one `RegressionMap` per ordered pair ``a->b`` learns to predict
    ``b``'s embedding from ``a``'s (on detached embeddings, so the maps never pull the
    encoders); `impute` uses them to fill in a missing modality.

    Args:
        modalities: the aligned modalities (two or more).
        dim: the encoders' output width.
        objective: one of `OBJECTIVES`.
        temperature: initial InfoNCE temperature (CLIP: 0.07).
        learn_temperature: train the temperature (through its logarithm).
        margin: margin of the ``"margin"`` objective.
        regression_loss: ``"mse"`` or ``"cosine"`` for the maps and the regression objective.
        direction: ``"X->Y"`` for the regression objective (default: first -> second).
        positives: ``"instance"`` (a sample's own other modality is its only positive, as in
            CLIP) or ``"class"`` (every sample of its class is; needs labels in `loss`). Use
            ``"class"`` when modalities share class-level but no per-sample information.

    Example:
        >>> aligner = Aligner(["a", "b"], dim=4)
        >>> parts = {"a": torch.randn(6, 4), "b": torch.randn(6, 4)}
        >>> present = {"a": torch.ones(6, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool)}
        >>> bool(aligner.loss(parts, present) > 0), sorted(aligner.maps)
        (True, ['a->b', 'b->a'])
    """

    def __init__(
        self,
        modalities: Sequence[str],
        *,
        dim: int,
        objective: str = "infonce",
        temperature: float = 0.07,
        learn_temperature: bool = True,
        margin: float = 1.0,
        regression_loss: str = "mse",
        direction: str | None = None,
        positives: str = "instance",
    ) -> None:
        super().__init__()
        names = list(dict.fromkeys(modalities)) if not isinstance(modalities, str) else []
        if len(names) < 2 or not all(isinstance(name, str) for name in names):
            raise ConfigError(f"alignment needs two or more modalities, got {names}",
                              column="align_modalities",
                              fix="name at least two modalities, e.g. image,caption")
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown alignment objective {objective!r}",
                              column="align_objective", fix=f"use one of: {', '.join(OBJECTIVES)}")
        if regression_loss not in REGRESSION_LOSSES:
            raise ConfigError(f"unknown regression loss {regression_loss!r}",
                              column="align_regression_loss",
                              fix=f"use one of: {', '.join(REGRESSION_LOSSES)}")
        if positives not in POSITIVES:
            raise ConfigError(f"unknown positives {positives!r}", column="align_positives",
                              fix=f"use one of: {', '.join(POSITIVES)}")
        if not (is_number(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}",
                              column="align_temperature", fix="e.g. 0.07")
        if not (is_number(margin) and 0 <= margin <= MAX_MARGIN):
            raise ConfigError(f"margin must be a number from 0 to {MAX_MARGIN:g}, got "
                              f"{margin!r}", column="align_margin", fix="e.g. 1.0")
        if not isinstance(learn_temperature, bool):
            raise ConfigError(f"learn_temperature must be true or false, got "
                              f"{learn_temperature!r}", column="align_learn_temperature",
                              fix="true (learned) or false (fixed)")
        if direction is not None and not isinstance(direction, str):
            raise ConfigError(f"a mapping direction is SOURCE->TARGET, got {direction!r}",
                              column="align_direction", fix="e.g. caption->image")
        self.modalities = names
        self.dim = dim
        self.objective = objective
        self.margin = margin
        self.regression_kind = regression_loss
        self.positives = positives
        self.direction = parse_direction(direction) if direction else (names[0], names[1])
        if objective == "regression" and not set(self.direction) <= set(names):
            raise ConfigError(f"direction {direction!r} names a modality that is not aligned",
                              column="align_direction",
                              fix=f"use two of: {', '.join(names)}")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.maps = nn.ModuleDict({f"{a}->{b}": RegressionMap(dim)
                                   for a, b in itertools.permutations(names, 2)})
        self.options: dict[str, Any] = {
            "modalities": names, "dim": dim, "objective": objective, "temperature": temperature,
            "learn_temperature": learn_temperature, "margin": margin,
            "regression_loss": regression_loss, "direction": "->".join(self.direction),
            "positives": positives,
        }

    @property
    def temperature(self) -> float:
        """The current InfoNCE temperature."""
        return float(torch.exp(-self.log_scale.detach()))

    def pairs(self) -> list[tuple[str, str]]:
        """The unordered modality pairs the objective aligns."""
        if self.objective == "regression":
            return [self.direction]
        return list(itertools.combinations(self.modalities, 2))

    def loss(self, parts: Mapping[str, Tensor], present: Mapping[str, Tensor],
             labels: Tensor | None = None) -> Tensor:
        """The alignment loss of one batch: the objective averaged over modality pairs, plus
        the regression maps' loss (which trains only the maps).

        Args:
            parts: modality name -> encoder outputs ``[B, dim]`` (`Backbone.encode`).
            present: modality name -> bool ``[B]``.
            labels: long ``[B]`` classes (needed with ``positives="class"``).

        Returns:
            A scalar; pairs with fewer than two samples having both modalities add nothing.
        """
        if self.positives == "class" and labels is None:
            raise ConfigError("class-level positives need the samples' labels",
                              column="align_positives", fix="pass labels= to Aligner.loss")
        if self.objective == "infonce":
            return self._info_nce(parts, present, labels) + self._maps_loss(parts, present)
        objective = next(iter(parts.values())).new_zeros(())
        used = 0
        for a, b in self.pairs():
            rows = (present[a] & present[b]).nonzero().squeeze(1)
            if len(rows) < 2:
                continue
            xa, xb = parts[a][rows], parts[b][rows]
            if self.objective == "margin":
                objective = objective + margin_alignment_loss(xa, xb, margin=self.margin)
            else:
                prediction = self.maps[f"{a}->{b}"](xa)
                objective = objective + regression_loss(prediction, xb.detach(),
                                                        self.regression_kind)
            used += 1
        return objective / max(used, 1) + self._maps_loss(parts, present)

    def _info_nce(self, parts: Mapping[str, Tensor], present: Mapping[str, Tensor],
                  labels: Tensor | None) -> Tensor:
        """`info_nce` averaged over the modality pairs with at least two samples having
        both, every pair at once (`masked_info_nce`)."""
        pairs = self.pairs()
        keep = torch.stack([present[a] & present[b] for a, b in pairs])  # [P, B]
        positive = (labels.unsqueeze(1) == labels.unsqueeze(0)
                    if self.positives == "class" and labels is not None else None)
        losses = masked_info_nce(torch.stack([parts[a] for a, _ in pairs]),
                                 torch.stack([parts[b] for _, b in pairs]), self.log_scale,
                                 keep, positive)
        return losses.sum() / (keep.sum(1) >= 2).sum().clamp_min(1)

    def _maps_loss(self, parts: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """The regression maps' loss on detached embeddings, averaged over the ordered pairs
        with a sample having both (the one the regression objective trains with the encoder
        left out): every map at once, their weights stacked into batched products."""
        ordered = [(a, b) for a, b in itertools.permutations(self.modalities, 2)
                   if not (self.objective == "regression" and (a, b) == self.direction)]
        if not ordered:
            return next(iter(parts.values())).new_zeros(())
        maps = [self.maps[f"{a}->{b}"] for a, b in ordered]
        source = torch.stack([parts[a].detach() for a, _ in ordered])  # [Q, B, D]
        target = torch.stack([parts[b].detach() for _, b in ordered])
        keep = torch.stack([present[a] & present[b] for a, b in ordered])  # [Q, B]
        errors = regression_errors(stacked_maps(maps, source), target,
                                   self.regression_kind)  # [Q, B]
        counts = keep.sum(1)
        per_map = torch.where(keep, errors, 0.0).sum(1) / counts.clamp_min(1)
        used = counts >= 1
        return torch.where(used, per_map, 0.0).sum() / used.sum().clamp_min(1)

    def map(self, source: str, target: str, x: Tensor) -> Tensor:
        """``f_{source->target}(x)``: ``[N, dim]`` embeddings of ``source`` mapped into the
        embedding of ``target``."""
        return self.maps[f"{source}->{target}"](x)

    def impute(
        self, parts: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Fill in each missing aligned modality from the present ones.

        A sample that lacks aligned modality ``m`` but has other aligned modalities gets, as
        ``m``'s embedding, the mean of ``f_{a->m}(parts[a])`` over its present aligned ``a``;
        it then counts as present. Modalities that are not aligned pass through unchanged.

        Args:
            parts: modality name -> ``[B, dim]``; present: modality name -> bool ``[B]``.

        Returns:
            ``(parts, present)`` with the imputed rows filled in.
        """
        parts = dict(parts)
        present = dict(present)
        names = [m for m in self.modalities if m in parts]
        filled_parts, filled_present = dict(parts), dict(present)
        for m in names:
            missing = ~present[m]
            if not bool(missing.any()):
                continue
            total = torch.zeros_like(parts[m])
            count = torch.zeros(parts[m].shape[0], 1, dtype=parts[m].dtype,
                                device=parts[m].device)
            for a in names:
                if a == m:
                    continue
                use = (present[a] & missing).unsqueeze(1).to(parts[m].dtype)
                total = total + use * self.map(a, m, parts[a])
                count = count + use
            imputed = count.squeeze(1) > 0
            filled_parts[m] = torch.where(imputed.unsqueeze(1), total / count.clamp_min(1),
                                          parts[m])
            filled_present[m] = present[m] | imputed
        return filled_parts, filled_present
