"""Robustness to missing modalities: accuracy as a modality disappears from more samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metamodal.data.batch import TensorStore
from metamodal.errors import ConfigError
from metamodal.evaluate.protocol import EvalResult, evaluate, select_modalities
from metamodal.evaluate.stats import paired_difference
from metamodal.mapping.aligner import Aligner
from metamodal.mapping.joint import ImputingModel

MASKING = "masking"
IMPUTATION = "imputation"


def missing_modality_curve(
    model: Any,
    store: TensorStore,
    classes: Sequence[str],
    rates: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    **eval_kwargs: Any,
) -> dict[str, list[EvalResult]]:
    """Accuracy when each modality is hidden for a growing fraction of the samples.

    For each modality ``m`` and rate ``r``, the model is evaluated with ``m`` hidden for a
    fraction ``r`` of the samples, support and query alike (``evaluate(..., drop={m: r})``).
    The hidden samples are chosen from the seed, the same for every model, and nested across
    rates (what 25% hides, 50% hides too), so the curves are smooth and comparable; all points
    use the same episodes. Rate 0 is the same for every modality and is evaluated once.

    Args:
        model: a few-shot model (see `metamodal.evaluate.protocol`).
        store: the decoded samples.
        classes: the class labels to draw episodes from.
        rates: fractions in ``0..1``, in the order the curve is drawn.
        **eval_kwargs: passed to `evaluate` (``ways``, ``shots``, ``episodes``, ``seed``,
            ``modalities``, ...); a ``drop`` given here applies to every point, the curve's
            modality taking the curve's rate.

    Returns:
        modality -> one `EvalResult` per rate (named ``"drop:<m>=<rate>"``, with ``drop`` set).

    Raises:
        ConfigError: a rate is outside ``0..1`` or ``rates`` is empty.

    Example:
        >>> curves = missing_modality_curve(model, store, split.test)  # doctest: +SKIP
        >>> [round(r.accuracy, 3) for r in curves["image"]]  # doctest: +SKIP
    """
    if "name" in eval_kwargs:
        raise ConfigError("missing_modality_curve names its results itself", fix="drop name=")
    rates = [float(r) for r in rates]
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise ConfigError(
            f"invalid rates {rates}", fix="give one or more fractions between 0 and 1"
        )
    base_drop = dict(eval_kwargs.pop("drop", None) or {})
    selected = select_modalities(model, store, eval_kwargs.get("modalities"), base_drop)
    curves: dict[str, list[EvalResult]] = {}
    done: dict[tuple[tuple[str, float], ...], EvalResult] = {}
    for modality in selected:
        curve = []
        for rate in rates:
            drop = {**base_drop, modality: rate}
            key = tuple(sorted((m, r) for m, r in drop.items() if r > 0))
            name = f"drop:{modality}={rate:g}"
            if key in done:
                result = done[key]
                result = result.renamed(name)
                result.drop = drop
            else:
                result = evaluate(model, store, classes, drop=drop, name=name, **eval_kwargs)
                done[key] = result
            curve.append(result)
        curves[modality] = curve
    return curves


def imputation_curves(
    model: Any,
    aligner: Aligner,
    store: TensorStore,
    classes: Sequence[str],
    rates: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    **eval_kwargs: Any,
) -> dict[str, dict[str, list[EvalResult]]]:
    """Missing-modality robustness with imputation versus masking, per aligned modality.

    For each modality ``m`` the aligner aligned and each rate ``r``, ``m`` is hidden for a
    fraction ``r`` of the samples (as in `missing_modality_curve`, the same samples and
    episodes for both) and the model either *masks* it (the fusion leaves it out) or
    *imputes* it from the sample's present modalities through the aligner's regression maps
    (`metamodal.mapping.joint.ImputingModel`).

    Args:
        model: a `FewShotModel` with a metric learner; aligner: its trained `Aligner`.
        store, classes: the samples and the classes of the episodes.
        rates: fractions in ``0..1``.
        **eval_kwargs: passed to `evaluate` (``ways``, ``shots``, ``episodes``, ``seed``, ...).

    Returns:
        modality -> ``{"masking": [EvalResult per rate], "imputation": [...]}``.

    Example:
        >>> curves = imputation_curves(run.model, aligner, store, split.test)  # doctest: +SKIP
    """
    rates = [float(r) for r in rates]
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise ConfigError(f"invalid rates {rates}",
                          fix="give one or more fractions between 0 and 1")
    imputing = ImputingModel(model, aligner)
    curves: dict[str, dict[str, list[EvalResult]]] = {}
    for modality in aligner.modalities:
        if modality not in model.modalities:
            continue
        curves[modality] = {MASKING: [], IMPUTATION: []}
        for rate in rates:
            for name, which in ((MASKING, model), (IMPUTATION, imputing)):
                curves[modality][name].append(evaluate(
                    which, store, classes, drop={modality: rate},
                    name=f"{name}:{modality}={rate:g}", **eval_kwargs))
    return curves


def imputation_gains(curves: dict[str, dict[str, list[EvalResult]]]
                     ) -> dict[str, list[tuple[float, float, float]]]:
    """Per modality, for each rate: ``(rate, mean, ci95)`` of the paired difference imputation
    minus masking (points in ``0..1``)."""
    gains: dict[str, list[tuple[float, float, float]]] = {}
    for modality, rows in curves.items():
        gains[modality] = []
        for masked, imputed in zip(rows[MASKING], rows[IMPUTATION], strict=True):
            diff = paired_difference(imputed.accuracies, masked.accuracies)
            rate = (masked.drop or {}).get(modality, 0.0)
            gains[modality].append((rate, diff.mean, diff.ci95))
    return gains
