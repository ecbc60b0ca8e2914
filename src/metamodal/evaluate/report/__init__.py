"""Evaluation reports: a small assembler (`write_report`, `read_results`) over one module per
section: `results` (methods, paired comparisons, training time), `robustness` (modality
ablation and missing-modality curves), `mapping` (retrieval, zero-shot, imputation, joint
space) and `learning` (curves), drawing with the shared helpers of `render`.

Example:
    >>> from metamodal.evaluate.report import format_results_table
    >>> from metamodal.evaluate.result import EvalResult
    >>> print(format_results_table({"protonet": EvalResult(0.5, 0.01, 0.5, 600, 5, 1, 15, 0)}))
    method    accuracy (%)  macro-F1  episodes
    protonet  50.00 ± 1.00  0.500          600
"""

from metamodal.evaluate.report.assemble import (
    INDEX_HTML,
    RESULTS_JSON,
    RESULTS_MD,
    read_results,
    write_report,
)
from metamodal.evaluate.report.learning import LEARNING_CURVE_PNG, learning_section
from metamodal.evaluate.report.mapping import (
    IMPUTATION_PNG,
    PROJECTION_PNG,
    MappingResults,
    mapping_section,
)
from metamodal.evaluate.report.render import BASELINE_PREFIX, Section
from metamodal.evaluate.report.results import (
    METHODS_PNG,
    format_results_table,
    paired_comparisons,
    results_section,
    training_time_section,
)
from metamodal.evaluate.report.robustness import (
    ABLATION_PNG,
    ROBUSTNESS_PNG,
    ablation_section,
    format_ablation_table,
    robustness_section,
)

__all__ = [
    "ABLATION_PNG",
    "BASELINE_PREFIX",
    "IMPUTATION_PNG",
    "INDEX_HTML",
    "LEARNING_CURVE_PNG",
    "METHODS_PNG",
    "PROJECTION_PNG",
    "RESULTS_JSON",
    "RESULTS_MD",
    "ROBUSTNESS_PNG",
    "MappingResults",
    "Section",
    "ablation_section",
    "format_ablation_table",
    "format_results_table",
    "learning_section",
    "mapping_section",
    "paired_comparisons",
    "read_results",
    "results_section",
    "robustness_section",
    "training_time_section",
    "write_report",
]
