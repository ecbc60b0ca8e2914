"""Evaluation: few-shot protocols, confidence intervals, ablations, robustness and reports.

Example:
    >>> from metamodal.evaluate import evaluate, format_results_table  # doctest: +SKIP
    >>> result = evaluate(model, store, split.test, ways=5, shots=1, episodes=600)  # doctest: +SKIP
    >>> print(format_results_table({"protonet": result}))  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from typing import Any

from metamodal.evaluate.ablation import modality_ablation
from metamodal.evaluate.protocol import (
    EvalResult,
    drop_mask,
    embed_store,
    evaluate,
    evaluate_episodes,
    select_modalities,
)
from metamodal.evaluate.report import (
    format_results_table,
    paired_comparisons,
    read_results,
    write_report,
)
from metamodal.evaluate.robustness import missing_modality_curve
from metamodal.evaluate.shape import resolve_eval_shape
from metamodal.evaluate.stats import (
    PairedDifference,
    confusion_matrices,
    macro_f1,
    macro_f1_from_confusion,
    mean_ci95,
    paired_difference,
)

__all__ = [
    "EvalResult",
    "PairedDifference",
    "confusion_matrices",
    "drop_mask",
    "embed_store",
    "evaluate",
    "evaluate_episodes",
    "format_results_table",
    "macro_f1",
    "macro_f1_from_confusion",
    "mean_ci95",
    "missing_modality_curve",
    "modality_ablation",
    "paired_comparisons",
    "paired_difference",
    "read_results",
    "resolve_eval_shape",
    "select_modalities",
    "write_report",
]


class _CallablePackage(types.ModuleType):
    """Lets ``metamodal.evaluate(...)`` call `evaluate` even where the name resolves to this
    package (Python binds a subpackage to its parent's attribute of the same name)."""

    def __call__(self, *args: Any, **kwargs: Any) -> EvalResult:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
