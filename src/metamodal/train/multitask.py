"""Multi-task meta-learning: one shared backbone, one learner per label column.

A dataset whose ``dataset.toml`` lists several label columns (``labels = ["species",
"genus"]``) defines one few-shot task per column. ``TrainConfig.tasks`` picks the columns to
train on (the first is always the dataset's main ``label``). Every task shares the encoders and
the fusion (the backbone); each has its own learner of the configured kind (its own head or
temperature where the learner has any; the first task's is the model's own learner, so a run
stays loadable by everything that reads single-task runs).

Which classes a task uses: the class split is made on the main label (by ``group`` when the
dataset has one). A further task draws its episodes from the samples of that split and takes
the values of its own column among them as classes. When the further label is nested in the
group column (as ``genus`` is in ``family`` in `metamodal.datasets.synthetic`), its meta-train,
validation and test classes are disjoint like the main label's; otherwise a value can appear in
two splits, each time with that split's samples only.

The losses combine as ``sum_t w_t * L_t`` with fixed weights (``task_weights``; a weight of 0
leaves the task out: its episodes are not even drawn), or, with ``task_weighting =
"uncertainty"``, as ``sum_t exp(-s_t) * L_t + s_t`` with one learned log-variance ``s_t`` per
task (homoscedastic uncertainty; Kendall, Gal & Cipolla, CVPR 2018). The further learners and
the ``s_t`` are kept in ``tasks.safetensors`` in the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from metamodal.data.batch import TensorStore
from metamodal.data.dataset import MultimodalDataset
from metamodal.data.schema import DatasetSchema
from metamodal.errors import ConfigError, RunError
from metamodal.model import FewShotModel

TASKS_FILE = "tasks.safetensors"
"""The run file holding the further tasks' learners and the learned log-variances."""


def task_columns(tasks: Sequence[str] | None, schema: DatasetSchema,
                 source: str | None = None) -> list[str]:
    """The label columns trained on: ``tasks`` checked against the schema, or the main label.

    Raises:
        ConfigError: ``tasks`` is empty, repeats a column, names a column the schema's
            ``labels`` lacks, or does not start with the main label (key ``tasks``).

    Example:
        >>> schema = DatasetSchema("toy", "y", labels=["y", "z"])
        >>> task_columns(None, schema), task_columns(["y", "z"], schema)
        (['y'], ['y', 'z'])
    """
    if tasks is None:
        return [schema.label]
    known = schema.label_columns
    fix = f"list label columns of the dataset's `labels`, the main one first: {known}"
    if not tasks:
        raise ConfigError("tasks must name at least one label column", file=source,
                          column="tasks", fix=fix)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"tasks names label columns the dataset does not declare: {unknown}",
                          file=source, column="tasks", fix=fix)
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks lists a column twice: {list(tasks)}", file=source,
                          column="tasks", fix="list each label column once")
    if tasks[0] != schema.label:
        raise ConfigError(f"the first task must be the main label {schema.label!r}, got "
                          f"{tasks[0]!r}", file=source, column="tasks", fix=fix)
    return list(tasks)


def task_view(store: TensorStore, dataset: MultimodalDataset, column: str,
              classes: Sequence[str]) -> tuple[TensorStore, list[str]]:
    """``store`` relabelled by ``column`` for the samples whose main label is in ``classes``.

    Returns:
        the store (same tensors; samples outside ``classes`` get a label no episode draws)
        and the sorted values of ``column`` among the kept samples: the task's classes.

    Example:
        >>> view, genera = task_view(store, dataset, "genus", train)  # doctest: +SKIP
    """
    if column == dataset.schema.label:
        return store, list(classes)
    chosen = set(classes)
    outside = "\x00outside-split"
    values = dataset.label_values(column)
    labels = [str(v) if main in chosen and v is not None else outside
              for main, v in zip(store.labels, values, strict=True)]
    return (TensorStore(store.ids, labels, store.modalities, store.kinds),
            sorted({label for label in labels if label != outside}))


class TaskHeads(nn.Module):
    """The per-task parts of a multi-task model: a learner per further task and, with
    uncertainty weighting, the log-variances ``s`` (``[tasks]``).

    Args:
        columns: the label column of each task, the main label first.
        make_learner: builds a fresh learner (the model's learner kind and options).
        weights: fixed loss weight per task (default 1 each).
        weighting: ``fixed`` or ``uncertainty``.

    Example:
        >>> from metamodal.learners import learners
        >>> heads = TaskHeads(["y", "z"], lambda: learners.create("protonet", dim=8),
        ...                   weighting="uncertainty")
        >>> float(heads.combine(1, torch.tensor(2.0)))  # exp(-0) * 2 + 0
        2.0
    """

    def __init__(self, columns: Sequence[str], make_learner, weights: Sequence[float] | None = None,
                 weighting: str = "fixed") -> None:
        super().__init__()
        self.columns = list(columns)
        self.weighting = weighting
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(self.columns)
        self.learners = nn.ModuleDict({f"t{t}": make_learner()
                                       for t in range(1, len(self.columns))})
        self.log_vars = (nn.Parameter(torch.zeros(len(self.columns)))
                         if weighting == "uncertainty" else None)

    def active(self) -> list[int]:
        """The tasks trained on: all with uncertainty weighting, else those of weight > 0."""
        return [t for t in range(len(self.columns))
                if self.log_vars is not None or self.weights[t] > 0]

    def model(self, model: FewShotModel, t: int) -> FewShotModel:
        """Task ``t``'s model: ``model``'s backbone (shared) under task ``t``'s learner."""
        if t == 0:
            return model
        return FewShotModel(model.backbone, self.learners[f"t{t}"], spec=model.spec)

    def combine(self, t: int, loss: Tensor) -> Tensor:
        """Task ``t``'s term of the total loss: ``w_t * loss`` or ``exp(-s_t) * loss + s_t``."""
        if self.log_vars is None:
            return self.weights[t] * loss
        return torch.exp(-self.log_vars[t]) * loss + self.log_vars[t]


def load_task_heads(run_dir: str | Path, model: FewShotModel, columns: Sequence[str],
                    weighting: str = "fixed") -> TaskHeads:
    """The `TaskHeads` a multi-task run saved in ``tasks.safetensors``.

    Raises:
        RunError: the file is missing or does not fit the run.
    """
    from metamodal.learners import learners
    from metamodal.runs.weights import load_weights

    spec = model.spec
    heads = TaskHeads(columns, lambda: learners.create(
        spec["learner"], dim=int(model.backbone.fusion.out_dim),
        **dict(spec.get("learner_options") or {})), weighting=weighting)
    path = Path(run_dir) / TASKS_FILE
    if not path.is_file():
        raise RunError("the multi-task run has no task weights", file=path,
                       fix="train the run again (the file is written with model.safetensors)")
    load_weights(path, heads)
    return heads.eval()


def build_task_heads(config, model: FewShotModel, schema: DatasetSchema,
                     source: str | None = None) -> TaskHeads | None:
    """The `TaskHeads` of a multi-task config (``config.tasks`` lists two columns or more),
    else ``None``.

    Raises:
        ConfigError: ``tasks`` does not fit the dataset (`task_columns`), or the config trains
            in a way that has no episodes per task (a supervised-mode learner, ``align_only``).
    """
    from metamodal.learners import learners

    columns = task_columns(config.tasks, schema, source)
    if len(columns) == 1:
        return None
    if model.capabilities().training == "supervised" or config.align_only:
        raise ConfigError("multi-task training draws episodes of each task; this config "
                          "trains without episodes (a supervised-mode learner or align_only)",
                          file=source, column="tasks",
                          fix="use an episodic learner (e.g. protonet), or train one task")
    spec = model.spec
    return TaskHeads(columns, lambda: learners.create(
        spec["learner"], dim=int(model.backbone.fusion.out_dim),
        **dict(spec.get("learner_options") or {})),
        weights=config.task_weights, weighting=config.task_weighting)


def task_sampler_seed(seed: int, t: int) -> int:
    """The episode-stream seed of task ``t`` (task 0 uses ``seed`` itself).

    Example:
        >>> task_sampler_seed(0, 0), task_sampler_seed(0, 1)
        (0, 1000003)
    """
    return seed + 1_000_003 * t
