"""Training configuration: one dataclass, read from TOML and/or CLI flags, written to a run."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metamodal.data.paths import PathRefused, read_small_text
from metamodal.data.schema import DatasetSchema
from metamodal.errors import ConfigError
from metamodal.hints import fits_type, type_name
from metamodal.io import ParseError, loads_toml
from metamodal.registry import MAX_WIDTH

MAX_TTA = 64
"""The most augmented copies of a sample (each is one more pass of the encoders)."""
MAX_TRANSDUCTION = 20
"""The most soft k-means steps."""
MAX_FUSION_CONFIDENCE = 100.0
"""The largest confidence or reliability weight of late fusion (beyond it the weights are
all-or-nothing)."""
MAX_TASK_WEIGHT = 1e3
"""The largest fixed loss weight of a task (multi-task learning; larger ones swamp the
others' gradients and overflow the loss)."""


@dataclass(frozen=True)
class TestTime:
    """Test-time settings of a model (``tta``, ``transduction``, ``transduction_balance``,
    ``fusion_confidence`` and ``fusion_reliability`` of `TrainConfig`).

    Args:
        tta: augmented copies averaged into each sample's embedding (0 = off).
        transduction: soft k-means steps refining the prototypes with the queries (0 = off).
        transduction_balance: the soft k-means steps assign the queries evenly over the
            classes (Sinkhorn balancing; off by default).
        fusion_confidence: how much late fusion moves each query's modality weights away from
            a modality whose posterior is uncertain (0 = off; `metamodal.fusion.late`).
        fusion_reliability: how much late fusion weighs each modality per class by how well it
            agrees on the queries the fused model gives that class (0 = off).

    Example:
        >>> TestTime(tta=4).check().tta
        4
    """

    __test__ = False  # not a pytest test class

    tta: int = 0
    transduction: int = 0
    transduction_balance: bool = False
    fusion_confidence: float = 0.0
    fusion_reliability: float = 0.0

    def check(self, *, source: str | None = None) -> TestTime:
        """Itself, when the counts are integers, the weights numbers, each in range, and
        ``transduction_balance`` a boolean; `ConfigError` naming the key."""
        for key, most in (("tta", MAX_TTA), ("transduction", MAX_TRANSDUCTION)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
                raise ConfigError(f"{key} must be an integer in 0..{most}, got {value!r}",
                                  file=source, column=key,
                                  fix=f"set {key} = 0 (off) or a count up to {most}")
        for key, example in (("fusion_confidence", 4), ("fusion_reliability", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 <= value <= MAX_FUSION_CONFIDENCE):
                raise ConfigError(f"{key} must be a number in 0..{MAX_FUSION_CONFIDENCE:g}, got "
                                  f"{value!r}", file=source, column=key,
                                  fix=f"set {key} = 0 (off) or e.g. {example}")
        if not isinstance(self.transduction_balance, bool):
            raise ConfigError("transduction_balance must be true or false, got "
                              f"{self.transduction_balance!r}", file=source,
                              column="transduction_balance",
                              fix="set transduction_balance = true (or false, the default)")
        return self


def test_time_overrides(source: Any) -> dict[str, Any]:
    """``source``'s value of each test-time setting (the fields of `TestTime`, read as
    attributes of the same names; None keeps a run's own): the ``test_time`` of
    `metamodal.runs.directory.load_run`.

    Example:
        >>> test_time_overrides(TestTime(tta=2))["tta"]
        2
    """
    return {f.name: getattr(source, f.name) for f in dataclasses.fields(TestTime)}


test_time_overrides.__test__ = False  # a library function that pytest would take for a test


@dataclass
class TrainConfig:
    """Everything that decides how a model is meta-trained.

    Args:
        data: the dataset directory.
        modalities: modalities to use (default: all of the dataset's).
        encoders: modality name -> encoder registry name (default per kind).
        encoder_options: modality name -> encoder hyper-parameters.
        preprocess: modality name -> loader option overrides (e.g. ``{"image": {"size": 16}}``).
        fusion: fusion registry name; ``fusion_options`` its hyper-parameters.
        learner: learner registry name; ``learner_options`` its hyper-parameters.
        dim: the shared embedding size of every encoder.
        ways, shots, queries: the episodes of meta-training.
        val_ways, val_shots, val_queries: the episodes of validation; 0 follows training,
            lowered (with a warning) to what the validation split supplies (see
            `metamodal.train.validation.resolve_validation_shape`).
        steps: optimisation steps (meta-updates, or batches for supervised pre-training).
        meta_batch: episodes (tasks) per meta-update.
        task_batching: how the tasks of a meta-batch are processed: ``loop`` (one after the
            other, each backpropagated on its own), ``vmap`` (``vmap_chunk`` tasks at once
            under `torch.func.vmap`, for the MAML family) or ``auto`` (``loop`` on CPU,
            ``vmap`` on CUDA where the model allows); see `metamodal.learners.task_batching`.
        vmap_chunk: tasks per vmap call (each chunk backpropagated on its own); 0 (the
            default) sizes chunks at the start of training: on CUDA from the free device
            memory and the memory a first chunk of two tasks took, on CPU at most 8 tasks
            (`metamodal.train.acceleration.ChunkPlan`).
        lr, weight_decay: Adam's (AdamW's) learning rate and decoupled weight decay.
        schedule: ``cosine`` (decay to 0 over ``steps``) or ``constant``.
        grad_clip: max global gradient norm (0 = off).
        batch_size: samples per batch of supervised pre-training (baseline learners).
        pretrain_classifier: the classifier of supervised pre-training: ``linear`` or
            ``cosine`` (Baseline++, Chen et al. 2019).
        val_every: validate every this many steps (0 = only at the end).
        val_episodes: episodes per validation.
        patience: stop after this many validations without improvement (0 = never).
        checkpoint_every: save a resumable checkpoint every this many steps.
        max_minutes: end training early where ``steps`` would take longer than this many
            minutes of wall-clock time (steps and validations, summed over resumes; 0 = no
            limit): every 10 steps the steps left are fitted to the time left, at the pace
            of this machine, and the learning-rate schedule is compressed to end there
            (`metamodal.train.budget`). The steps done then depend on the machine's speed.
        seed: seeds the split, the episodes, the initialisation and dropout.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        cache: keep decoded tensors in an on-disk cache inside the dataset directory.
        augment: training-time augmentation: ``rotate_classes``, ``modality_dropout`` and a
            table of options per modality (`metamodal.data.augment`); empty = none.
        init_from: a finished run (of ``metamodal train`` or ``metamodal align``, on this
            dataset or another) whose weights initialise this model: every tensor of the
            encoders, the fusion and the learner (BatchNorm statistics too) with the same name
            and shape, an encoder only where the fitted loaders agree (image size, vocabulary,
            ...) and the fusion only where the same modalities are fused; the rest is newly
            initialised. What was reused, newly initialised or dropped is printed and written
            to the run's ``transfer.json`` (`metamodal.train.transfer`). ``--resume`` does not
            initialise again.
        align_weight: weight of the cross-modal alignment loss added to the learner's loss
            (0 = off); see `metamodal.mapping.Aligner`.
        align_only: train the encoders with the alignment loss alone, on random batches of
            ``batch_size`` meta-train samples (what ``metamodal align`` does); validation then
            measures instance-level Recall@1 between the aligned modalities.
        align_modalities: the modalities to align (default: every modality of the model).
        align_objective: ``infonce``, ``margin`` or ``regression``.
        align_options: further options of `metamodal.mapping.Aligner` (``temperature``,
            ``learn_temperature``, ``margin``, ``regression_loss``, ``direction``,
            ``positives``).
        tasks: the label columns to train on (multi-task learning; the dataset's ``labels``,
            the main ``label`` first); ``None``: only the main label
            (`metamodal.train.multitask`).
        task_weights: fixed loss weight per task in ``tasks`` order, at most 1,000 (default
            1 each; 0 leaves a task out).
        task_weighting: ``fixed`` (``task_weights``) or ``uncertainty`` (learned log-variances,
            Kendall, Gal & Cipolla 2018).
        freeze: parts of the model to freeze: ``encoders`` (every encoder), ``backbone``
            (the encoders and the fusion) or modality names (their encoders). Frozen weights
            are left out of the optimiser, not adapted by the inner loop of MAML-family
            learners (in training and evaluation), and their modules stay in evaluation mode
            (BatchNorm statistics frozen, no dropout); see `metamodal.model.freeze`. Freezing
            weights that ``init_from`` did not reuse is allowed (random features) and warned
            about.
        tta: test-time augmentation: each sample's embedding in evaluation is the mean over
            it and this many copies transformed by the per-modality ``augment`` tables (0 =
            off; at most 64); see `metamodal.model.test_time`. Validation uses it too.
        transduction: soft k-means steps refining ProtoNet's prototypes with the episode's
            unlabelled queries in evaluation (0 = off; at most 20; Ren et al. 2018).
        transduction_balance: the soft k-means steps of ``transduction`` assign the episode's
            queries evenly over its classes (each class receives ``Q / ways`` of them,
            balanced by Sinkhorn's iterations) instead of by each query's softmax alone: for
            episodes whose queries are spread evenly over the classes, as in Lake et al.'s
            one-shot runs and N-way K-query episodes; an episode with fewer queries than
            classes is refined unbalanced. See `metamodal.learners.protonet.ProtoNet`.
        fusion_confidence: late fusion in evaluation lowers, for each query, the weight of a
            modality whose posterior over the classes is uncertain: weights ``softmax(mix -
            fusion_confidence * entropy)`` (0 = off, the learned mix alone; at most 100);
            see `metamodal.fusion.late.LateFusion`.
        fusion_reliability: late fusion in evaluation weighs each modality per class by how
            much it agrees, on the episode's queries the fused model assigns to that class,
            that they belong there: weights ``softmax(mix + fusion_reliability * log
            agreement)`` (0 = off; at most 100); see `metamodal.fusion.late.LateFusion`.
        world_size: the number of processes the run was trained with: set from ``torchrun``'s
            environment when training starts (1 without it) and recorded in the run's
            ``config.toml``; not a choice (`metamodal.train.distributed`).
        dist_backend: the process group's backend when ``torchrun`` starts several processes:
            ``auto`` (NCCL on CUDA devices, gloo on CPUs), ``gloo`` or ``nccl``.
        dist_timeout: seconds a process waits for the others (joining the job, each
            exchange) before the job stops with an error.
        precision: ``fp32``, ``bf16`` or ``auto``. With ``bf16`` the encoders and the fusion
            of training steps run under `torch.autocast` in bfloat16, while the output layer,
            the losses, the inner-loop updates and the meta-gradient stay in float32;
            validation runs in float32 (`metamodal.train.acceleration.backbone_precision`).
            ``auto`` is ``bf16`` on hardware that computes bfloat16 natively (a CPU with AMX
            or AVX512-BF16, a GPU from Ampere on) and ``fp32`` elsewhere
            (`metamodal.train.acceleration.resolve_precision`).
        compile: capture the meta-update of ``task_batching`` vmap (inner loop, query loss
            and its backward) with `torch.compile` (mode ``reduce-overhead``, CUDA graphs, on
            CUDA); a model or a torch that cannot be compiled falls back to eager mode with
            a warning (`metamodal.train.acceleration.MetaLossCompiler`).

    Example:
        >>> TrainConfig(data="ds", steps=10).updated({"ways": 3}).ways
        3
    """

    data: str = ""
    modalities: list[str] | None = None
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: str = "gated"
    fusion_options: dict[str, Any] = field(default_factory=dict)
    learner: str = "protonet"
    learner_options: dict[str, Any] = field(default_factory=dict)
    dim: int = 64
    ways: int = 5
    shots: int = 1
    queries: int = 15
    val_ways: int = 0
    val_shots: int = 0
    val_queries: int = 0
    steps: int = 1000
    meta_batch: int = 1
    task_batching: str = "auto"
    vmap_chunk: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    grad_clip: float = 5.0
    batch_size: int = 64
    pretrain_classifier: str = "linear"
    val_every: int = 100
    val_episodes: int = 100
    patience: int = 0
    checkpoint_every: int = 100
    max_minutes: float = 0.0
    seed: int = 0
    device: str = "auto"
    cache: bool = True
    augment: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    align_weight: float = 0.0
    align_only: bool = False
    align_modalities: list[str] | None = None
    align_objective: str = "infonce"
    align_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] | None = None
    task_weights: list[float] | None = None
    task_weighting: str = "fixed"
    freeze: list[str] = field(default_factory=list)
    tta: int = 0
    transduction: int = 0
    transduction_balance: bool = False
    fusion_confidence: float = 0.0
    fusion_reliability: float = 0.0
    world_size: int = 1
    dist_backend: str = "auto"
    dist_timeout: float = 600.0
    precision: str = "fp32"
    compile: bool = False

    @property
    def aligns(self) -> bool:
        """True when training uses an alignment loss (``align_only`` or ``align_weight > 0``)."""
        return self.align_only or self.align_weight > 0

    def updated(self, values: dict[str, Any], *, source: str = "flags") -> TrainConfig:
        """A copy with ``values`` applied; unknown keys or wrong types raise `ConfigError`."""
        return _from_dict({**self.to_dict(), **values}, source=source)

    def merged(self, changes: dict[str, Any], *, source: str = "flags") -> TrainConfig:
        """A copy with ``changes`` applied where a table (``encoders``, ``augment``,
        ``learner_options``, ...) is merged key by key, one level deep inside it too, so that
        ``{"augment": {"image": {"rotate": 10}}}`` keeps the other image options.

        Raises:
            ConfigError: an unknown key or a value of the wrong type.

        Example:
            >>> base = TrainConfig(augment={"image": {"rotate": 5, "flip": "horizontal"}})
            >>> base.merged({"augment": {"image": {"rotate": 10}}}).augment
            {'image': {'rotate': 10, 'flip': 'horizontal'}}
        """
        current = self.to_dict()
        values: dict[str, Any] = {}
        for key, value in changes.items():
            old = current.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                value = {**old, **{k: {**old[k], **v} if isinstance(v, dict) and isinstance(
                    old.get(k), dict) else v for k, v in value.items()}}
            values[key] = value
        return self.updated(values, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for TOML / JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from plain data; unknown keys or wrong types raise `ConfigError`."""
        return _from_dict(values, source=source)

    def validate(self, *, source: str | None = None) -> None:
        """Check value ranges; raises `ConfigError` naming the key (and ``source``, the file
        the values came from, when given)."""
        def bad(message: str, key: str, fix: str) -> ConfigError:
            return ConfigError(message, file=source, column=key, fix=fix)

        positive = ("dim", "ways", "shots", "queries", "steps", "meta_batch", "batch_size",
                    "val_episodes", "checkpoint_every", "world_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}", key,
                          f"set {key} to a positive integer")
        for key, most in LIMITS.items():
            if getattr(self, key) > most:
                raise bad(f"{key} must be at most {most}, got {getattr(self, key)}", key,
                          f"set {key} to {most} or less")
        if self.ways < 2:
            raise bad("ways must be >= 2", "ways", "use --ways 2 or more")
        if self.modalities is not None and not self.modalities:
            raise bad("modalities names no modality", "modalities", "name at least one, or "
                      "leave modalities out to use all of the dataset's")
        for key in ("val_ways", "val_shots", "val_queries", "val_every", "patience", "seed",
                    "vmap_chunk"):
            if getattr(self, key) < 0 or (key == "val_ways" and self.val_ways == 1):
                raise bad(f"{key} must be 0 or a positive count"
                          + (" >= 2" if key == "val_ways" else ""), key,
                          f"set {key} = 0 or a count")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise bad(f"unknown device {self.device!r}", "device",
                          "use auto, cpu, cuda, cuda:N or mps") from None
        if self.dist_backend not in ("auto", "gloo", "nccl"):
            raise bad(f"unknown dist_backend {self.dist_backend!r}", "dist_backend",
                      "use 'auto', 'gloo' (CPUs) or 'nccl' (GPUs)")
        if not (0 < self.dist_timeout <= MAX_DIST_TIMEOUT):
            raise bad(f"dist_timeout must be a number of seconds > 0 and at most "
                      f"{MAX_DIST_TIMEOUT:,} (a week)", "dist_timeout", "e.g. dist_timeout = 600")
        if self.task_batching not in ("auto", "loop", "vmap"):
            raise bad(f"unknown task_batching {self.task_batching!r}", "task_batching",
                      "use 'auto', 'loop' or 'vmap'")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise bad(f"unknown precision {self.precision!r}", "precision",
                      "use 'fp32', 'bf16' or 'auto' (--precision fp32|bf16|auto)")
        if self.schedule not in ("cosine", "constant"):
            raise bad(f"unknown schedule {self.schedule!r}", "schedule",
                      "use 'cosine' or 'constant'")
        if self.pretrain_classifier not in ("linear", "cosine"):
            raise bad(f"unknown pretrain_classifier {self.pretrain_classifier!r}",
                      "pretrain_classifier", "use 'linear' or 'cosine'")
        if not (0 <= self.max_minutes <= MAX_MINUTES):
            raise bad(f"max_minutes must be a number of minutes >= 0 and at most "
                      f"{MAX_MINUTES:,} (a year), got {self.max_minutes}", "max_minutes",
                      "e.g. max_minutes = 55 (0 = no time limit)")
        if not (0 < self.lr <= MAX_LR):
            raise bad(f"lr must be a number > 0 and at most {MAX_LR:g}", "lr", "e.g. lr = 1e-3")
        for key in ("weight_decay", "grad_clip"):
            if not (0 <= getattr(self, key) < math.inf):
                raise bad(f"{key} must be a finite number >= 0", key, f"e.g. {key} = 0")
        if not (0 <= self.align_weight < math.inf):
            raise bad("align_weight must be a finite number >= 0", "align_weight",
                      "e.g. --align-weight 0.5 (0 turns alignment off)")
        if self.align_objective not in ("infonce", "margin", "regression"):
            raise bad(f"unknown align_objective {self.align_objective!r}", "align_objective",
                      "use 'infonce', 'margin' or 'regression'")
        stray = set(self.align_options) - {"temperature", "learn_temperature", "margin",
                                           "regression_loss", "direction", "positives"}
        if stray:
            raise bad(f"unknown align_options {sorted(stray)}", "align_options",
                      "use temperature, learn_temperature, margin, regression_loss, direction "
                      "or positives")
        self._validate_tasks(bad)
        self.test_time().check(source=source)

    def test_time(self) -> TestTime:
        """The test-time settings (``tta``, ``transduction``, ``transduction_balance``,
        ``fusion_confidence``, ``fusion_reliability``) as a `TestTime`."""
        return TestTime(**test_time_overrides(self))

    def _validate_tasks(self, bad: Callable[[str, str, str], ConfigError]) -> None:
        """The multi-task settings: weights match the tasks, a known weighting."""
        if self.task_weighting not in ("fixed", "uncertainty"):
            raise bad(f"unknown task_weighting {self.task_weighting!r}", "task_weighting",
                      "use 'fixed' or 'uncertainty'")
        if self.task_weights is None:
            return
        count = len(self.tasks) if self.tasks is not None else 1
        if len(self.task_weights) != count:
            raise bad(f"task_weights has {len(self.task_weights)} weights for {count} "
                      "task(s)", "task_weights", "give one weight per entry of tasks")
        if not all(0 <= w <= MAX_TASK_WEIGHT for w in self.task_weights) or (
                self.task_weights[0] <= 0):
            raise bad(f"task weights must be numbers in 0..{MAX_TASK_WEIGHT:g}, the first > 0 "
                      f"(got {self.task_weights})", "task_weights",
                      "e.g. task_weights = [1.0, 0.5]")
        if self.task_weighting == "uncertainty":
            raise bad("task_weights are fixed weights; uncertainty weighting learns them",
                      "task_weights", "drop task_weights, or use task_weighting = 'fixed'")


MAX_SEED = 2**63 - 1
"""The largest seed: torch's generators take a signed 64-bit integer."""
MAX_LR = 1e3
"""The largest learning rate: far above any that trains, well inside float32 (1e39 overflowed
inside the optimiser)."""
MAX_MINUTES = 365 * 24 * 60
"""The longest ``max_minutes`` (a year)."""
MAX_TIMEOUT = 24 * 3600
"""The longest network timeout in seconds (a day; inf and 1e309 overflowed the socket's)."""
MAX_DIST_TIMEOUT = 7 * 24 * 3600
"""The longest ``dist_timeout`` in seconds (a week; 1e300 overflowed torch's timeout)."""
MAX_EPISODES = 1_000_000
"""The most episodes one evaluation, validation or episode file holds (their plans and
embeddings' indices are held in memory)."""
LIMITS = {"dim": MAX_WIDTH, "ways": 10_000, "shots": 10_000, "queries": 10_000, "steps": 10**9,
          "meta_batch": 10_000, "vmap_chunk": 10_000, "batch_size": 1_000_000, "val_ways": 10_000,
          "val_shots": 10_000, "val_queries": 10_000, "val_episodes": MAX_EPISODES,
          "checkpoint_every": 10**9, "val_every": 10**9, "patience": 10**9, "seed": MAX_SEED,
          "world_size": 1_000_000}
"""Upper bounds of the integer settings: far beyond any real use, low enough to refuse a
typo that would allocate without end."""


def resolve_device(name: str, *, key: str = "device",
                   source: str | Path | None = None) -> torch.device:
    """The torch device a ``device`` setting names: ``auto`` -> CUDA when available, else CPU;
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as given, when this machine has it.

    Args:
        name: the setting's value.
        key: the setting's name (or flag), named in the error.
        source: the file the setting came from (a config or a run's ``config.toml``), if any.

    Raises:
        ConfigError: the name is not a device, or names one this machine lacks (CUDA on a
            machine without a CUDA build or GPU, a GPU index beyond the last); the fix says to
            use ``cpu`` or ``auto``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> try:
        ...     resolve_device("gpu")
        ... except ConfigError as error:
        ...     print(error.column, "|", error.message)
        device | unknown device 'gpu'
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r}", file=source, column=key,
                          fix="use auto, cpu, cuda, cuda:N or mps") from None
    fix = f"use {key} = auto (CUDA when available, else the CPU) or cpu (--device auto|cpu)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}, "
                              f"{'a CUDA build' if torch.version.cuda else 'a CPU-only build'})",
                              file=source, column=key, fix=fix)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)", file=source,
                              column=key, fix=f"use cuda:0 .. cuda:"
                              f"{torch.cuda.device_count() - 1}, or {key} = auto")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available on this machine",
                          file=source, column=key, fix=fix)
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported", file=source, column=key,
                          fix="use auto, cpu, cuda, cuda:N or mps")
    return device


def with_dataset_encoders(config: TrainConfig, schema: DatasetSchema) -> TrainConfig:
    """``config`` with the encoders the dataset suggests (``encoder`` / ``encoder_options`` of
    its ``[modalities.NAME]`` tables) for the modalities it uses and names no encoder for.

    Example:
        >>> from metamodal.data.schema import DatasetSchema
        >>> schema = DatasetSchema.from_dict({"label": "y", "modalities": {"s": {
        ...     "kind": "sequence", "column": "s", "encoder": "trajectory",
        ...     "encoder_options": {"pen": 3}}}})
        >>> c = with_dataset_encoders(TrainConfig(), schema)
        >>> c.encoders, c.encoder_options
        ({'s': 'trajectory'}, {'s': {'pen': 3}})
        >>> with_dataset_encoders(TrainConfig(encoders={"s": "gru"}), schema).encoder_options
        {}
    """
    encoders = dict(config.encoders)
    options = {name: dict(values) for name, values in config.encoder_options.items()}
    for name, spec in schema.modalities.items():
        used = config.modalities is None or name in config.modalities
        if spec.encoder is None or name in encoders or not used:
            continue
        encoders[name] = spec.encoder
        options[name] = {**spec.encoder_options, **options.get(name, {})}
    if encoders == config.encoders:
        return config
    return config.updated({"encoders": encoders, "encoder_options": options})


MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (a few hundred settings take a few KiB)."""


RUN_DOCUMENT_KEYS = ("metamodal_version", "model", "split", "dataset", "alignment", "ensemble")
"""The top-level keys of a run's ``config.toml`` beside its ``[train]`` table, which
`load_config` passes over (a run's config file may be given to ``--config``)."""


def read_config_values(path: str | Path) -> dict[str, Any]:
    """The settings a config file gives, by key, unchecked (`load_config` checks them): its
    top-level keys, or its ``[train]`` table.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML, or holds keys beside its
            ``[train]`` table (`RUN_DOCUMENT_KEYS` aside); the error names the file.
    """
    path = Path(path)
    try:
        values = loads_toml(read_small_text(path, "config", MAX_CONFIG_BYTES))
    except PathRefused as refused:  # a FIFO (reading one would block), too large, ...
        raise ConfigError(refused.message, file=path, fix=refused.fix) from None
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path,
                          fix="check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as error:  # unreadable: no permission, not UTF-8
        raise ConfigError(f"cannot read the config file ({error})", file=path,
                          fix="give a UTF-8 TOML file to --config") from None
    except ParseError as error:
        raise ConfigError(str(error), file=path,
                          fix="fix the TOML syntax at the line named") from None
    if "train" in values:
        stray = sorted(set(values) - {"train"} - set(RUN_DOCUMENT_KEYS))
        if stray:  # they would be passed over: a file of [train] reads only that table
            raise ConfigError(
                f"{stray[0]} is outside the [train] table, which holds this file's training "
                "settings", file=path, column=stray[0],
                fix=f"write it inside (`[train.{stray[0]}]` for a table, or the key below "
                "[train]), or drop the [train] header")
        values = values["train"]
    if not isinstance(values, dict):
        raise ConfigError("`train` must be a table", file=path, column="train",
                          fix="write [train] with keys of TrainConfig")
    return values


def load_config(path: str | Path) -> TrainConfig:
    """Read a `TrainConfig` from a TOML file (keys as in `TrainConfig`; a ``[train]`` table,
    beside which only a run's other tables (`RUN_DOCUMENT_KEYS`) may stand, or top-level
    keys).

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, mistyped or out of
            range (`TrainConfig.validate`); the error names the file and the key.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
        >>> _ = p.write_text('learner = "protonet"\\n[preprocess.image]\\nsize = 16\\n')
        >>> load_config(p).preprocess
        {'image': {'size': 16}}
    """
    path = Path(path)
    values = read_config_values(path)
    config = _from_dict(values, source=str(path))
    config.validate(source=str(path))
    return config


def _from_dict(values: dict[str, Any], *, source: str) -> TrainConfig:
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r}", file=source, column=key,
                              fix=f"use one of: {', '.join(sorted(known))}")
        if value is not None and not fits_type(value, hints[key]):
            raise ConfigError(f"{key} has the wrong type ({reprlib.repr(value)} is not "
                              f"{type_name(hints[key])})", file=source, column=key,
                              fix=f"give a value of type {type_name(hints[key])}")
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        clean[key] = value
    return TrainConfig(**clean)
