"""Modality ablation: how much each modality contributes to a trained few-shot model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metamodal.data.batch import TensorStore
from metamodal.errors import ConfigError
from metamodal.evaluate.protocol import EvalResult, evaluate, select_modalities


def modality_ablation(
    model: Any, store: TensorStore, classes: Sequence[str], **eval_kwargs: Any
) -> list[EvalResult]:
    """Evaluate a model with all its modalities, with each one alone, and without each one.

    Every variant is evaluated with `evaluate` on the same episodes (same seed), so the
    per-episode accuracies can be compared pairwise
    (`metamodal.evaluate.stats.paired_difference`). Hidden modalities are passed as absent, as
    if the samples lacked them; a model trained for missing modalities degrades gracefully.
    Variants that show the model the same modalities are evaluated once (with two modalities,
    ``only:a`` is ``without:b``); variants that would show no modality are skipped.

    Args:
        model: a few-shot model (see `metamodal.evaluate.protocol`).
        store: the decoded samples.
        classes: the class labels to draw episodes from.
        **eval_kwargs: passed to `evaluate` (``ways``, ``shots``, ``queries``, ``episodes``,
            ``seed``, ``drop``, ``device``, ...). ``modalities``, if given, is the full set the
            ablation starts from.

    Returns:
        results named ``"all"``, then ``"only:<m>"`` for each modality, then ``"without:<m>"``
        for each modality (skipped when the model uses a single modality).

    Example:
        >>> for r in modality_ablation(model, store, split.test, episodes=600):  # doctest: +SKIP
        ...     print(r.name, r.accuracy)
    """
    if "name" in eval_kwargs:
        raise ConfigError("modality_ablation names its results itself", fix="drop name=")
    base = eval_kwargs.pop("modalities", None)
    full = select_modalities(model, store, base)
    variants: list[tuple[str, list[str]]] = [("all", full)]
    variants += [(f"only:{m}", [m]) for m in full]
    if len(full) > 1:
        variants += [(f"without:{m}", [x for x in full if x != m]) for m in full]
    done: dict[tuple[str, ...], EvalResult] = {}
    results = []
    for name, selection in variants:
        key = tuple(selection)
        if key in done:
            results.append(done[key].renamed(name))
            continue
        result = evaluate(model, store, classes, modalities=selection, name=name, **eval_kwargs)
        done[key] = result
        results.append(result)
    return results
