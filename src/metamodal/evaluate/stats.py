"""Statistics for few-shot evaluation: mean with a 95% interval, macro-F1, paired differences.

Few-shot results are reported as the mean accuracy over many independently drawn test episodes
with a 95% confidence interval ``1.96 * std / sqrt(n)`` (normal approximation), the convention
of the few-shot literature since Vinyals et al. (2016), "Matching Networks for One Shot
Learning", and Snell et al. (2017), "Prototypical Networks for Few-shot Learning".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from metamodal.errors import ConfigError

Z_95 = 1.96
"""Two-sided 95% quantile of the standard normal distribution."""


def _as_float_tensor(values: Iterable[float] | Tensor) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64).flatten()
    return torch.as_tensor(list(values), dtype=torch.float64).flatten()


def mean_ci95(values: Iterable[float] | Tensor) -> tuple[float, float]:
    """Mean of ``values`` and the half width of its 95% confidence interval.

    The half width is ``1.96 * s / sqrt(n)`` with ``s`` the *sample* standard deviation
    (``n - 1`` in the denominator). Much published few-shot code uses the population standard
    deviation (``n``) instead; at the usual 600 episodes the two differ by less than 0.1% of the
    interval. With a single value the spread is unknown and the half width is ``nan`` (never a
    misleading 0).

    Args:
        values: ``n >= 1`` numbers, e.g. per-episode accuracies, as a sequence or a tensor
            ``[n]``.

    Returns:
        ``(mean, half_width)``; the interval is ``mean ± half_width``.

    Raises:
        ConfigError: ``values`` is empty.

    Example:
        >>> m, h = mean_ci95([0.5, 0.7])
        >>> round(m, 3), round(h, 3)
        (0.6, 0.196)
    """
    x = _as_float_tensor(values)
    n = x.numel()
    if n == 0:
        raise ConfigError(
            "cannot average an empty list of values", fix="evaluate at least one episode"
        )
    mean = x.mean().item()
    if n == 1:
        return mean, math.nan
    half = Z_95 * x.std(unbiased=True).item() / math.sqrt(n)
    return mean, half


def confusion_matrices(
    pred: Tensor, target: Tensor, group: Tensor, num_groups: int, num_classes: int
) -> Tensor:
    """Confusion counts of many groups (e.g. episodes) at once, without a Python loop.

    Args:
        pred: long ``[N]`` predicted classes in ``0..num_classes-1``.
        target: long ``[N]`` true classes in ``0..num_classes-1``.
        group: long ``[N]`` group (episode) of each prediction in ``0..num_groups-1``.
        num_groups: number of groups ``G``.
        num_classes: number of classes ``K``.

    Returns:
        long ``[G, K, K]``; ``[g, t, p]`` counts predictions ``p`` of true class ``t`` in group
        ``g``.

    Example:
        >>> confusion_matrices(torch.tensor([0, 1]), torch.tensor([0, 0]),
        ...                    torch.tensor([0, 0]), 1, 2).tolist()
        [[[1, 1], [0, 0]]]

    Raises:
        ConfigError: a prediction or target lies outside ``0..K-1``, or a group outside
            ``0..G-1`` (instead of a count in the wrong cell, or a raw shape error).
    """
    k = num_classes
    for name, values, bound in (("prediction", pred, k), ("target", target, k),
                                ("group", group, num_groups)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= bound):
            raise ConfigError(
                f"a {name} lies outside 0..{bound - 1} (got {int(values.min())}.."
                f"{int(values.max())})",
                fix=f"pass {name}s below {'num_classes' if bound == k else 'num_groups'}")
    flat = (group.long() * k + target.long()) * k + pred.long()
    counts = torch.bincount(flat.flatten().cpu(), minlength=num_groups * k * k)
    return counts.view(num_groups, k, k)


def macro_f1_from_confusion(confusion: Tensor) -> Tensor:
    """Macro-averaged F1 of each confusion matrix.

    A class's F1 is ``2 TP / (2 TP + FP + FN)``. Classes that occur neither among the targets nor
    among the predictions carry no information and are left out of the average (as
    scikit-learn does unless given ``labels=``, with which it counts them as 0); a group with
    no class occurring at all (no predictions) scores ``nan``.

    Args:
        confusion: counts ``[..., K, K]`` (rows: true class, columns: predicted class).

    Returns:
        float ``[...]`` macro-F1 in ``[0, 1]``.

    Example:
        >>> macro_f1_from_confusion(torch.tensor([[2, 0], [1, 1]])).item()
        0.7333333333333334
    """
    c = confusion.to(torch.float64)
    tp = torch.diagonal(c, dim1=-2, dim2=-1)
    fp = c.sum(-2) - tp
    fn = c.sum(-1) - tp
    denom = 2 * tp + fp + fn
    seen = denom > 0
    f1 = torch.where(seen, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return f1.sum(-1) / seen.sum(-1)


def macro_f1(
    pred: Tensor | Sequence[int], target: Tensor | Sequence[int], num_classes: int
) -> float:
    """Macro-averaged F1 score: the unweighted mean of the per-class F1 scores.

    Classes that occur neither in ``target`` nor in ``pred`` are left out of the mean (see
    `macro_f1_from_confusion`); in a few-shot episode every class occurs among the targets.

    Args:
        pred: predicted classes, long ``[N]`` in ``0..num_classes-1``.
        target: true classes, long ``[N]`` in ``0..num_classes-1``.
        num_classes: number of classes ``K`` (an episode's ``ways``).

    Returns:
        macro-F1 in ``[0, 1]`` (``nan`` when ``N == 0``).

    Raises:
        ConfigError: shapes differ or a class lies outside ``0..num_classes-1``.

    Example:
        >>> round(macro_f1([0, 0, 1, 1], [0, 1, 1, 1], num_classes=2), 4)
        0.7333
    """
    p = torch.as_tensor(pred).long().flatten().cpu()
    t = torch.as_tensor(target).long().flatten().cpu()
    if p.shape != t.shape:
        raise ConfigError(
            f"{p.numel()} predictions but {t.numel()} targets",
            fix="pass one prediction per target",
        )
    for name, v in (("prediction", p), ("target", t)):
        if v.numel() and (v.min() < 0 or v.max() >= num_classes):
            raise ConfigError(
                f"a {name} lies outside 0..{num_classes - 1}",
                fix="pass class numbers below num_classes",
            )
    conf = confusion_matrices(p, t, torch.zeros_like(t), 1, num_classes)
    return macro_f1_from_confusion(conf)[0].item()


class PairedDifference(NamedTuple):
    """Mean per-episode difference ``a - b`` and the half width of its 95% interval.

    ``significant`` is True when the interval excludes 0, i.e. ``|mean| > ci95``.

    Example:
        >>> PairedDifference(0.05, 0.02).significant, PairedDifference(0.01, 0.02).significant
        (True, False)
    """

    mean: float
    ci95: float

    @property
    def significant(self) -> bool:
        """Whether the 95% interval of the difference excludes zero."""
        return bool(abs(self.mean) > self.ci95)


def paired_difference(a: Iterable[float] | Tensor, b: Iterable[float] | Tensor) -> PairedDifference:
    """Mean difference of two methods' per-episode accuracies on the SAME episodes, with its CI.

    Pairing removes the episode-to-episode difficulty that both methods share, so the interval of
    the difference is usually much narrower than either method's own interval: a paired
    comparison can tell two methods apart where overlapping intervals cannot. Both inputs must
    come from the same episodes in the same order (same seed, ways, shots, queries and classes).

    Args:
        a: per-episode accuracies of method A, ``[n]`` (or an object with ``.accuracies``, such
            as an `EvalResult`).
        b: per-episode accuracies of method B on the same ``n`` episodes.

    Returns:
        `PairedDifference` ``(mean, ci95)`` of ``a - b``; ``.significant`` says whether A and B
        differ by more than the interval.

    Raises:
        ConfigError: the two lists have different lengths.

    Example:
        >>> d = paired_difference([0.9, 0.8, 0.85], [0.7, 0.6, 0.7])
        >>> round(d.mean, 3), d.significant
        (0.183, True)
    """
    xa = _as_float_tensor(getattr(a, "accuracies", a))
    xb = _as_float_tensor(getattr(b, "accuracies", b))
    if xa.numel() != xb.numel():
        raise ConfigError(
            f"paired comparison of {xa.numel()} against {xb.numel()} episodes",
            fix="evaluate both methods on the same episodes (same seed and episode count)",
        )
    mean, half = mean_ci95(xa - xb)
    return PairedDifference(mean, half)


def pooled_error(
    accuracies: Iterable[float] | Tensor, counts: Iterable[int] | Tensor
) -> tuple[float, float]:
    """Error rate over all query items of a set of runs, with a 95% interval over runs.

    Lake et al. (2015), "Human-level concept learning through probabilistic program
    induction", report one-shot classification as the error over all test items of their 20
    runs. The pooled error is ``1 - sum(acc_r * n_r) / sum(n_r)``. Its interval treats the
    runs as the sampled units (items of one run share its classes): the half width is
    ``1.96 * sqrt(sum(n_r^2 (e_r - E)^2) / (R (R - 1))) / mean(n_r)``, the usual standard error
    of a ratio estimator over clusters, which for runs of equal size is the standard error of
    the mean per-run error. One run gives ``nan``. Runs without query items are left out.

    Args:
        accuracies: per-run accuracy, ``[R]`` in ``0..1``.
        counts: query items per run, ``[R]``.

    Returns:
        ``(error, half_width)`` in ``0..1``.

    Raises:
        ConfigError: lengths differ, or no run has a query item.

    Example:
        >>> e, h = pooled_error([0.9, 0.8, 1.0], [20, 20, 20])
        >>> round(e, 3), round(h, 3)
        (0.1, 0.113)
    """
    acc = _as_float_tensor(accuracies)
    n = _as_float_tensor(counts)
    if acc.numel() != n.numel():
        raise ConfigError(f"{acc.numel()} accuracies but {n.numel()} counts",
                          fix="give one query count per run")
    keep = n > 0
    acc, n = acc[keep], n[keep]
    if n.numel() == 0:
        raise ConfigError("no run has a query item", fix="evaluate runs with query items")
    error = 1.0 - (acc * n).sum().item() / n.sum().item()
    runs = n.numel()
    if runs == 1:
        return error, math.nan
    per_run = 1.0 - acc
    spread = ((n * (per_run - error)) ** 2).sum().item() / (runs * (runs - 1))
    return error, Z_95 * math.sqrt(spread) / n.mean().item()
