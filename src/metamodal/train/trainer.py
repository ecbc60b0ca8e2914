"""The episodic training loop (and supervised pre-training for baseline learners)."""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from metamodal.config import TrainConfig, resolve_device, with_dataset_encoders
from metamodal.data.augment import Augmentation, augmentation_for, step_generator
from metamodal.data.batch import Episode, TensorStore
from metamodal.data.episodes import EpisodeSampler, check_class_sizes
from metamodal.data.schema import check_outside_dataset, load_schema
from metamodal.data.splits import SPLITS_FILE
from metamodal.errors import ConfigError, InsufficientSamplesError, RunError
from metamodal.evaluate.protocol import evaluate
from metamodal.io import followed, make_directory, replace_directory, resolved
from metamodal.learners.base import check_support
from metamodal.learners.baselines import SupervisedClassifier
from metamodal.learners.task_batching import (
    batchable,
    batched_losses,
    to_device,
    uses_vmap,
)
from metamodal.mapping.aligner import Aligner
from metamodal.memory import release_memory
from metamodal.model import FewShotModel
from metamodal.model.freeze import freeze, train_mode
from metamodal.model.test_time import apply_test_time
from metamodal.runs.directory import (
    CONFIG_FILE,
    END_EVENT,
    MEMBERS_DIR,
    METRICS_FILE,
    PREPROCESSOR_FILE,
    read_run_config,
    training_ended,
    training_status,
    write_run_files,
)
from metamodal.runs.prepared import PreparedData, prepare_data
from metamodal.runs.support import SUPPORT_FILE, SUPPORT_META
from metamodal.runs.weights import WEIGHTS_FILE, save_weights
from metamodal.train.acceleration import (
    ChunkPlan,
    MetaLossCompiler,
    backbone_precision,
    resolve_precision,
)
from metamodal.train.alignment import (
    ALIGNMENT_FILE,
    alignment_recall,
    batch_recall,
    build_aligner,
    class_rows,
)
from metamodal.train.budget import REPLAN_EVERY, StepPlan, TimeBudget
from metamodal.train.checkpoint import (
    CHECKPOINT_FILE,
    TrainingProgress,
    load_checkpoint,
    restore_training,
    save_checkpoint,
    training_state,
)
from metamodal.train.distributed import Job, QuietLogger, join, prepared_fingerprint, seed_task
from metamodal.train.logger import TENSORBOARD_DIR, MetricsLogger
from metamodal.train.multitask import (
    TASKS_FILE,
    TaskHeads,
    build_task_heads,
    task_sampler_seed,
    task_view,
)
from metamodal.train.staging import clean_leftovers, make_staging, release_staging
from metamodal.train.supervised import (
    class_index,
    supervised_step,
    train_feature_mean,
)
from metamodal.train.transfer import (
    TRANSFER_FILE,
    Transfer,
    mark_frozen,
    no_transfer,
    read_transfer,
    transfer_weights,
    write_transfer,
)
from metamodal.train.validation import resolve_validation_shape

log = logging.getLogger(__name__)

LOG_EVERY = 10
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What `Trainer.fit` returns.

    Args:
        run_dir: the run directory written.
        steps: optimisation steps done in total.
        best_val_accuracy: the best validation accuracy (0..1), NaN without validation.
        best_step: the step whose weights were kept in ``model.safetensors``.
        stopped_early: whether early stopping ended training.
        seconds: wall-clock seconds of training (steps and validations, summed over resumes).
        transfer: what ``init_from`` reused and ``freeze`` froze (`Transfer`), None when
            neither was asked for.
        time_limited: whether ``max_minutes`` ended training before ``steps``.
    """

    run_dir: Path
    steps: int
    best_val_accuracy: float
    best_step: int
    stopped_early: bool
    seconds: float = 0.0
    transfer: Transfer | None = None
    time_limited: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


RUN_ENTRIES = frozenset({CONFIG_FILE, PREPROCESSOR_FILE, METRICS_FILE, CHECKPOINT_FILE,
                         WEIGHTS_FILE, ALIGNMENT_FILE, TASKS_FILE, TRANSFER_FILE,
                         TENSORBOARD_DIR, ".DS_Store", "Thumbs.db"})
"""What a directory may hold and be trained into although it holds no run: what training
writes (a run killed before its log began) and the files file browsers leave."""

FINISHED_RUN_ENTRIES = RUN_ENTRIES | {"report", MEMBERS_DIR, SUPPORT_FILE, SUPPORT_META}
"""What a finished run's directory may hold and be replaced whole by ``--overwrite``: besides
`RUN_ENTRIES`, its report, an ensemble's members and a saved classifier's support set."""


def check_run_directory(out: Path, *, replaced: bool = False) -> None:
    """Refuse an output directory where a run would lose or destroy files: one that is or lies
    inside a dataset directory, one that holds files but no run (they would sit among the
    run's files, and ``--overwrite`` later replaces the directory whole, with them), and, when
    it is to be ``replaced`` (``--overwrite`` of a finished run), one that holds more than a
    run's files (a dataset, the user's).

    Raises:
        ConfigError: keyed ``out``.
    """
    check_outside_dataset(out, "out")
    status = training_status(out)
    here = Path.cwd().resolve()
    if replaced and out.is_dir() and out.resolve() in (here, *here.parents):
        raise ConfigError(f"{out} is the working directory or holds it: --overwrite cannot "
                          "replace it", column="out",
                          fix="run the command from outside the run directory (e.g. its "
                          "parent, with --out NAME)")
    if not out.is_dir() or (status != "none" and not replaced):
        return
    allowed = RUN_ENTRIES if status == "none" else FINISHED_RUN_ENTRIES
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in allowed)
    named = f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
    if foreign and status == "none":
        raise ConfigError(
            f"{out} is not empty and holds no run: {named} would sit among the run's files, "
            "and --overwrite later replaces the directory whole", column="out",
            fix="give --out a new or empty directory (e.g. one inside this one)")
    if foreign:
        raise ConfigError(
            f"{out} holds {named} besides its run, which --overwrite would delete with the "
            "run it replaces", column="out",
            fix="move them out of the run directory first, then run the command again")


def check_run_entries(out: Path) -> None:
    """Refuse a run directory whose ``checkpoint.pt`` or ``metrics.jsonl`` is there but no
    regular file (a FIFO would block their reading for ever, a folder is a raw error), or
    whose ``tensorboard`` is there but no folder: checked before any of them is opened.

    Raises:
        RunError: naming the entry.
    """
    from metamodal.data.paths import PathRefused, check_regular_file

    fix = "move it out of the run directory (training writes it anew), then run it again"
    for name in (CHECKPOINT_FILE, METRICS_FILE):
        path = out / name
        if not os.path.lexists(path):
            continue
        try:
            check_regular_file(path, name)
        except FileNotFoundError:
            raise RunError(f"{name} is a link that leads nowhere", file=path, fix=fix) from None
        except PathRefused as refused:
            raise RunError(refused.message, file=path, fix=fix) from None
    board = out / TENSORBOARD_DIR
    if os.path.lexists(board) and not board.is_dir():
        raise RunError(f"{TENSORBOARD_DIR} is not a folder", file=board, fix=fix)


class Trainer:
    """Meta-trains a `FewShotModel` on a dataset directory and writes a run directory.

    What a step trains depends on the learner and the config:

    - episodic learners (metric ones: ``protonet``, ``matchingnet``, ``relationnet``,
      ``siamese``, ``am3``; the optimisation-based ``maml``, ``fomaml``, ``maml++``, ``anil``,
      ``metasgd``, ``reptile`` and ``lstm-optimizer``) train on ``meta_batch`` episodes per
      update: episode ``step * meta_batch + i`` of ``EpisodeSampler(meta-train classes, seed)``,
      augmented with that episode's generator (``augment``), backpropagated one by one or, with
      ``task_batching`` vmap, ``vmap_chunk`` at a time (`metamodal.learners.task_batching`);
    - supervised-mode learners (``finetune``, ``nearest-centroid``) pre-train encoders and
      fusion with a classifier over all meta-train classes (Chen et al. 2019, "A Closer Look
      at Few-shot Classification"; `metamodal.train.supervised`);
    - ``align_weight`` adds a cross-modal alignment loss to each episode, and ``align_only``
      trains the encoders with that loss alone (`metamodal.train.alignment`);
    - ``init_from`` starts the model from any other run's weights where they fit, and
      ``freeze`` keeps parts of it fixed (`metamodal.train.transfer`,
      `metamodal.model.freeze`); a resumed run starts from its checkpoint, not the source.

    AdamW with an optional cosine schedule and gradient clipping; validation every
    ``val_every`` steps on episodes of the shape the validation split allows
    (`metamodal.train.validation.resolve_validation_shape`) keeps the best weights in
    ``model.safetensors``; early stopping after ``patience`` validations without improvement;
    a resumable checkpoint every ``checkpoint_every`` steps. Because each step's data is a pure
    function of (seed, step) and every generator's state is checkpointed, ``fit(resume=True)``
    after a kill ends with the same parameters as an uninterrupted run. ``fit(overwrite=True)``
    writes the new run in a staging folder beside the old one (`metamodal.train.staging`).

    Args:
        config: the training configuration.
        out: the run directory to write.
        progress: show a progress bar.
        callbacks: functions called as ``callback(step, values)`` after each step.

    Attributes:
        model: the `FewShotModel` being trained (set by `fit`).

    Example:
        >>> config = TrainConfig(data="demo-data", steps=200)
        >>> result = Trainer(config, "runs/a").fit()  # doctest: +SKIP
        >>> round(result.best_val_accuracy, 2)  # doctest: +SKIP
        0.71
    """

    def __init__(
        self,
        config: TrainConfig,
        out: str | Path,
        *,
        progress: bool = True,
        callbacks: list[StepCallback] | None = None,
    ) -> None:
        config.validate()
        if config.data:  # the run must find its dataset from any working directory
            config = config.updated({"data": str(resolved(config.data, "data"))})
            config = with_dataset_encoders(config, load_schema(config.data))
        self.config = config
        self.out = followed(out)  # a run behind a link is replaced there, the link kept
        self.progress = progress
        self.callbacks = list(callbacks or [])
        self._vmap = False  # whether meta-batches run under vmap (`uses_vmap`, set by `fit`)
        self.job = Job.alone()  # this process's part in the job (`fit` joins it)

    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train (or resume training) and write the run directory; returns a `TrainResult`.

        Nothing of a former run in ``out`` is touched before the inputs (dataset, config,
        checkpoint) have been validated. A finished run in ``out`` (its ``metrics.jsonl``
        records the end of training: `metamodal.runs.directory.training_status`) is refused
        unless ``resume`` (which returns it as it is) or ``overwrite`` is given, an unfinished
        one (a checkpoint) unless ``resume`` (which continues it) or ``overwrite`` is given,
        one stopped before its first checkpoint unless ``overwrite`` (or ``resume``, which
        finds no checkpoint and starts again) is given; with
        ``overwrite`` a finished run's successor is written beside it and replaces it only
        once it is complete, so a failure or a kill leaves the finished run as it was; what a
        kill leaves beside it is cleaned up or named by the next `fit`
        (`metamodal.train.staging.clean_leftovers`).

        Args:
            resume: continue from ``out``'s checkpoint (start afresh when there is none).
            overwrite: replace a finished run in ``out``.

        Raises:
            RunError: ``out`` holds a finished or unfinished run and neither flag is given, its
                checkpoint is corrupt, or an interrupted replacement left the finished run
                aside.
            ConfigError: ``device`` names one this machine lacks (``cuda`` without CUDA).

        Started by ``torchrun`` (several processes), each process trains its share of every
        meta-batch and only rank 0 writes (`metamodal.train.distributed`); a job that
        ``torchrun --max-restarts`` started again resumes.
        """
        with join(self.config.device, backend=self.config.dist_backend,
                  timeout_s=self.config.dist_timeout) as job:
            self.job = job
            # a restarted job resumes (an --overwrite one starts again: its staging is gone)
            try:
                return self._fit(resume or (job.restarted and not overwrite), overwrite)
            finally:
                release_memory()  # the steps' freed activations, for what the caller does next

    def _start(self, resume: bool, overwrite: bool) -> tuple[bool, dict | None, TrainConfig]:
        """Rank 0's look at ``out``: whether it holds a finished run, the checkpoint state
        to resume from (None: start afresh) and the config to train with."""
        clean_leftovers(self.out)
        check_run_entries(self.out)
        status = training_status(self.out)
        finished_before = status == "finished"
        check_run_directory(self.out, replaced=finished_before and overwrite and not resume)
        if finished_before and not resume and not overwrite:
            raise RunError(
                "the directory already holds a finished run", file=self.out,
                fix="pass --resume to keep it, --overwrite to replace it once the new run "
                "is complete, or choose another --out")
        if status == "resumable" and not resume and not overwrite:
            raise RunError(
                f"the directory holds an unfinished run (its {CHECKPOINT_FILE}), which a fresh "
                "start would delete", file=self.out,
                fix="pass --resume to continue it, --overwrite to start it again, or choose "
                "another --out")
        if status == "unresumable" and not resume and not overwrite:
            raise RunError(
                "the directory holds an unfinished run, stopped before its first checkpoint "
                f"(its {METRICS_FILE} has no end record and there is no {CHECKPOINT_FILE}): "
                "it cannot be resumed, and a fresh start would delete it", file=self.out,
                fix="pass --overwrite to train it again from the start, or choose another "
                "--out")
        if resume and status != "none":
            self._check_same_verb()
        state = self._load_state(self.out / CHECKPOINT_FILE) if resume else None
        return finished_before, state, self.config

    def _check_same_verb(self) -> None:
        """Refuse to resume a run another verb made (``align --resume`` of a ``train`` run
        reported the run's few-shot accuracy as its Recall@1)."""
        path = self.out / CONFIG_FILE
        if not path.is_file():
            return
        made = read_run_config(self.out)["train"].get("align_only", False)
        if bool(made) != bool(self.config.align_only):
            verb, other = ("align", "train") if made else ("train", "align")
            raise RunError(f"the directory holds a run of `metamodal {verb}`, which `{other} "
                           "--resume` does not continue", file=self.out,
                           fix=f"resume it with `metamodal {verb} --resume`, or give "
                           f"`{other}` another --out")

    def _fit(self, resume: bool, overwrite: bool) -> TrainResult:
        """`fit` inside the job ``self.job``."""
        job = self.job
        self.config = self.config.updated({"world_size": job.world_size})
        job.check_same(self.config)
        finished_before, state, config = job.on_main(lambda: self._start(resume, overwrite))
        if not job.is_main:  # each machine reads its own copy of the data (compared below)
            config = config.updated({"data": self.config.data})
        if config.world_size != job.world_size:
            log.info("resuming a run trained on %d process(es) with %d", config.world_size,
                     job.world_size)
        self.config = config.updated({"world_size": job.world_size})
        checkpoint_path = self.out / CHECKPOINT_FILE
        cfg = self.config
        seed_everything(cfg.seed)
        data = prepare_data(cfg.data, seed=cfg.seed, modalities=cfg.modalities,
                            preprocess=cfg.preprocess, cache=cfg.cache,
                            encoders=cfg.encoders, progress=self.progress)
        self._data = data
        self._fingerprint = prepared_fingerprint(data)
        job.check_data(self._fingerprint, cfg.data)
        if state is not None and state.get("data") not in (None, self._fingerprint):
            raise ConfigError("the dataset is not the one the checkpoint was trained on (its "
                              "sample ids, labels, class split or fitted preprocessing "
                              "differ): the resumed run would not be the run it continues",
                              file=cfg.data, column="data",
                              fix="resume on the dataset the run began with, or train again "
                              "with --overwrite")
        device = job.device_for(resolve_device(cfg.device))
        self._precision = resolve_precision(cfg.precision, device)
        if cfg.precision == "auto":
            log.info("precision auto: training steps in %s on %s", self._precision, device)
        augmentation = augmentation_for(cfg.augment, data.preprocessor)
        train_store, train_classes = augmentation.expand_classes(data.store, data.split.train)
        model, classifier = self._build(data, len(train_classes), device,
                                        fresh=state is None)
        self._build_aligner(model, data, device)
        self.heads: TaskHeads | None = build_task_heads(cfg, model, data.dataset.schema)
        if self.heads is not None:
            self.heads.to(device)
        job.check_trainable(cfg, model.capabilities().training, self.heads is not None)
        self._vmap = self.heads is None and uses_vmap(
            cfg.task_batching, device, model.learner, model.backbone, aligns=cfg.aligns)
        # Fail before training, not at the first validation, when a split is too small.
        splits_file = Path(cfg.data) / SPLITS_FILE
        where = splits_file if splits_file.exists() else Path(cfg.data)
        if model.capabilities().training != "supervised" and not cfg.align_only:
            try:
                with warnings.catch_warnings():  # the sampler warns about small classes
                    warnings.simplefilter("ignore")
                    check_class_sizes(data.store, data.split.train, cfg.ways, cfg.shots,
                                      cfg.queries)
                    for column in (self.heads.columns[1:] if self.heads else []):
                        check_class_sizes(*task_view(data.store, data.dataset, column,
                                                     data.split.train),
                                          cfg.ways, cfg.shots, cfg.queries)
            except InsufficientSamplesError as error:
                raise InsufficientSamplesError(
                    f"the meta-train split 'train' cannot supply training episodes: "
                    f"{error.message}", file=where, column="train", fix=error.fix) from None
        if not cfg.align_only:
            self._val_shape = resolve_validation_shape(cfg, data.store, data.split.val,
                                                       file=where)
        # The inputs are valid: only now may a former run's files be replaced.
        if not job.is_main:  # only rank 0 writes
            self._work = self.out
        elif state is None and finished_before:
            self._work = make_staging(self.out)
        else:
            self._work = self.out
            make_directory(self.out)
            if state is None:  # a fresh start must not leave a former run's files to be resumed
                checkpoint_path.unlink(missing_ok=True)
                (self.out / WEIGHTS_FILE).unlink(missing_ok=True)
                (self.out / ALIGNMENT_FILE).unlink(missing_ok=True)
                (self.out / TASKS_FILE).unlink(missing_ok=True)
                (self.out / TRANSFER_FILE).unlink(missing_ok=True)
        try:
            result = self._train(state, data, device, model, classifier,
                                 (train_store, train_classes, augmentation))
        except BaseException:
            if self._work != self.out:
                shutil.rmtree(self._work, ignore_errors=True)
            raise
        if self._work != self.out:
            release_staging(self._work)
            replace_directory(self._work, self.out)
        return result

    def _train(self, state: dict | None, data: PreparedData, device: torch.device,
               model: FewShotModel, classifier: SupervisedClassifier | None,
               training: tuple[TensorStore, list[str], Augmentation]) -> TrainResult:
        """The training loop over validated inputs; writes into ``self._work``.

        ``training``: the store and classes training episodes are drawn from (the meta-train
        split, with rotated copies under class rotations) and the augmentation of each step.
        """
        cfg = self.config
        checkpoint_path = self._work / CHECKPOINT_FILE
        aligner = self.aligner
        params = list(model.parameters()) + (list(classifier.parameters()) if classifier else [])
        if aligner is not None:
            params += list(aligner.parameters())
        if self.heads is not None:
            params += list(self.heads.parameters())
        frozen = {id(p) for n, p in model.named_parameters() if n in self.frozen}
        params = [p for p in params if id(p) not in frozen]  # frozen weights are not optimised
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        plan = self._plan = StepPlan(cfg.steps, cfg.schedule)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, plan)
        if self.job.is_main:
            write_run_files(self._work, config=cfg, model_spec=model.spec, split=data.split,
                            schema=data.dataset.schema, preprocessor=data.preprocessor,
                            alignment=aligner.options if aligner is not None else None)
        if state is None and self.transfer is not None and self.job.is_main:
            write_transfer(self._work, self.transfer)
        progress = TrainingProgress()
        if state is not None:
            progress = restore_training(state, model, classifier, optimizer, schedule,
                                        self._work / CHECKPOINT_FILE, aligner=aligner,
                                        heads=self.heads)
            # resumed: end at the configured steps, or with a time limit at the plan's end
            # where that comes first (the limit may then move it again)
            plan.replan(progress.step, min(plan.steps, cfg.steps) if cfg.max_minutes
                        else cfg.steps)
        already_finished = progress.finished
        # a kill between the last checkpoint and the end record: the record is written now
        end_recorded = already_finished and training_ended(self._work)
        step_loss = self._step_function(model, classifier, *training, device)
        self.job.same_weights(model, aligner)
        self.job.watch(model, aligner)
        logger = (MetricsLogger(self._work, resume_step=progress.step if state else None)
                  if self.job.is_main else QuietLogger())
        budget = TimeBudget(cfg.max_minutes, cfg.val_every, cfg.steps) if cfg.max_minutes else None
        bar = tqdm(total=plan.steps, initial=progress.step, unit="step", leave=False,
                   disable=not self.progress or already_finished or not self.job.is_main,
                   desc=f"train {cfg.learner}+{cfg.fusion}")
        train_mode(model, cfg.freeze)
        try:
            while not progress.finished:
                started = time.perf_counter()
                model.learner.on_step(progress.step, plan.steps)
                optimizer.zero_grad(set_to_none=True)
                with backbone_precision(model.backbone, self._precision, device):
                    loss, acc = self.job.step(step_loss, progress.step, params)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                schedule.step()
                progress.step += 1
                if budget is not None:
                    budget.record_step(time.perf_counter() - started)
                    if progress.step % REPLAN_EVERY == 0:
                        self._fit_to_budget(budget, progress, started, bar)
                bar.update(1)
                values = {"train_loss": loss, "train_acc": acc}
                self._log_window(progress, values, logger, schedule)
                if self.heads is not None:
                    values.update(self.task_values)
                    if progress.step % LOG_EVERY == 0 or progress.step == plan.steps:
                        logger.log(progress.step, dict(self.task_values))
                if progress.step == plan.steps or (cfg.val_every
                                                   and progress.step % cfg.val_every == 0):
                    validating = time.perf_counter()
                    values["val_acc"] = self._validate(model, classifier, data, device)
                    # validation's embeddings; a collection here did not lower the demo's peak
                    release_memory(collect=False)
                    train_mode(model, cfg.freeze)
                    if aligner is not None:
                        aligner.train()
                    logger.log(progress.step, {"val_acc": values["val_acc"]})
                    self._select(progress, values["val_acc"], model)
                    bar.set_postfix(val=f"{values['val_acc']:.3f}", best=f"{progress.best:.3f}")
                    if budget is not None and progress.step < plan.steps:
                        budget.validation_seconds = time.perf_counter() - validating
                        self._fit_to_budget(budget, progress, started, bar)
                progress.finished = progress.stopped_early or progress.step >= plan.steps
                progress.seconds += time.perf_counter() - started
                if progress.finished or progress.step % cfg.checkpoint_every == 0:
                    progress.window.update({k: float(progress.window[k])
                                            for k in ("loss", "acc")})
                if self.job.is_main and (progress.finished
                                         or progress.step % cfg.checkpoint_every == 0):
                    save_checkpoint(checkpoint_path, {**training_state(
                        self.config.to_dict(), progress, model, classifier, self.aligner,
                        optimizer, schedule), "data": self._fingerprint,
                        "tasks": self.heads.state_dict() if self.heads is not None else None})
                if self.callbacks:  # values read from the device only for callbacks
                    values = {k: float(v) for k, v in values.items()}
                for callback in self.callbacks:
                    callback(progress.step, values)
            time_limited = progress.step < cfg.steps and not progress.stopped_early
            if not end_recorded:
                logger.log(progress.step, {"event": END_EVENT, "best_val_acc": progress.best,
                                           "best_step": progress.best_step,
                                           "stopped_early": progress.stopped_early,
                                           "time_limited": time_limited,
                                           "train_seconds": round(progress.seconds, 3)})
        finally:
            bar.close()
            logger.close()
        best = progress.best if progress.best >= 0 else float("nan")
        return TrainResult(self.out, progress.step, best, progress.best_step,
                           progress.stopped_early, progress.seconds, self.transfer,
                           time_limited)

    def _step_function(
        self,
        model: FewShotModel,
        classifier: SupervisedClassifier | None,
        store: TensorStore,
        classes: list[str],
        augmentation: Augmentation,
        device: torch.device,
    ) -> Callable[[int], tuple[float, float]]:
        """``step_loss(step) -> (loss, accuracy)``: computes one update's gradients.

        Episodic learners train on ``meta_batch`` episodes per update: episode
        ``step * meta_batch + i`` of the meta-train sampler over ``classes`` of ``store``,
        augmented with that episode number's generator, each backpropagated on its own
        (``loss / meta_batch``), so that only one task's graph is alive at a time; or, with
        vmap (``task_batching``), ``vmap_chunk`` at a time, one graph per chunk.
        Supervised-mode learners train on one (augmented) batch of ordinary classification.
        With ``align_weight`` the alignment loss of the episode's samples is added; with
        ``align_only`` a step is the alignment loss of ``batch_size`` random meta-train samples.
        """
        cfg = self.config
        aligner = self.aligner
        if cfg.align_only:
            assert aligner is not None
            rows = class_rows(store, classes)
            class_id = {label: k for k, label in enumerate(classes)}
            row_labels = torch.tensor([class_id[store.labels[i]] for i in rows.tolist()])

            def align_step(step: int) -> tuple[float, float]:
                rng = np.random.default_rng([cfg.seed, step])
                size = min(cfg.batch_size, len(rows))
                chosen = torch.from_numpy(rng.choice(len(rows), size=size, replace=False))
                batch = {k: v.to(device) for k, v in store.batch(rows[chosen]).items()
                         if k in model.modalities}
                parts, present = model.backbone.encode(batch)
                loss = aligner.loss(parts, present, row_labels[chosen].to(device))
                loss.backward()
                return loss.item(), batch_recall(aligner, parts, present)

            return align_step
        if classifier is not None:
            train_index = class_index(store, classes)

            def supervised(step: int) -> tuple[float, float]:
                loss, acc = supervised_step(model, classifier, store, train_index,
                                            augmentation, step, seed=cfg.seed,
                                            batch_size=cfg.batch_size, device=device)
                loss.backward()
                return loss.item(), acc

            return supervised
        sampler = EpisodeSampler(store, classes, cfg.ways, cfg.shots, cfg.queries,
                                 seed=cfg.seed)

        def episode(number: int) -> Episode:
            """Episode ``number`` of the meta-train sampler, augmented, on the host."""
            drawn = sampler[number]
            seed_task(cfg.seed, number)  # its dropout, in whichever process it runs
            if augmentation.active:
                drawn = augmentation.episode(drawn, step_generator(cfg.seed, number))
            return drawn

        def one_by_one(episodes: list[Episode]) -> tuple[Tensor, Tensor]:
            """Backpropagate each episode on its own; their losses and accuracies ``[n]``
            (on the device, read only when logged)."""
            losses, accuracies = [], []
            for task in episodes:
                task = task.to(device)
                if aligner is None:
                    loss, logits = model.loss(task)
                else:
                    loss, logits, parts, present = model.loss_and_parts(task)
                    labels = torch.cat([task.support_labels, task.query_labels])
                    loss = loss + cfg.align_weight * aligner.loss(parts, present, labels)
                weighted = loss if self.heads is None else self.heads.combine(0, loss)
                (weighted / cfg.meta_batch).backward()
                losses.append(loss.detach())
                accuracies.append((logits.argmax(-1) == task.query_labels).float().mean())
            return torch.stack(losses), torch.stack(accuracies)

        compiler = MetaLossCompiler(model.learner, model.backbone, device,
                                    enabled=cfg.compile and self._vmap)
        if cfg.compile and not self._vmap:
            log.warning("compile: only the meta-update of task_batching vmap is compiled; "
                        "this run's steps run eagerly")
        told = []  # whether the fallback to the loop has been logged

        def at_once(episodes: list[Episode]) -> tuple[Tensor, Tensor]:
            """Backpropagate the episodes together under vmap (or one by one when they
            cannot be batched; both checked on the host); their losses and accuracies
            ``[n]``."""
            if len(episodes) == 1 or not batchable(episodes):
                if len(episodes) > 1 and not told:
                    told.append(True)
                    log.warning("task_batching vmap: chunks in which a sample lacks a "
                                "modality run one task after the other (vmap cannot skip "
                                "absent samples)")
                return one_by_one(episodes)
            for task in episodes:
                check_support(task.support_labels, task.ways)
            losses, logits = batched_losses(model.learner, model.backbone, episodes,
                                            run=None if plan.probing
                                            else compiler.runner(episodes[0].ways), checked=True,
                                            device=device)  # stacked here, one copy each
            (losses.sum() / cfg.meta_batch).backward()
            labels = to_device(torch.stack([task.query_labels for task in episodes]), device)
            return losses.detach(), (logits.argmax(-1) == labels).float().mean(-1)

        plan = ChunkPlan(cfg.vmap_chunk, cfg.meta_batch, device) if self._vmap else None

        def episodic(step: int) -> tuple[Tensor, Tensor]:
            numbers = self.job.shard(range(step * cfg.meta_batch, (step + 1) * cfg.meta_batch))
            losses, accuracies = [], []
            for part in plan.chunks(numbers) if plan else ([n] for n in numbers):
                loss, acc = (at_once if plan else one_by_one)([episode(n) for n in part])
                losses.append(loss)
                accuracies.append(acc)
            # summed in one order however the tasks were chunked
            return (torch.cat(losses).sum() / cfg.meta_batch,
                    torch.cat(accuracies).sum() / cfg.meta_batch)

        return episodic if self.heads is None else self._multitask(episodic, model, device)

    def _multitask(self, first: Callable[[int], tuple[float, float]], model: FewShotModel,
                   device: torch.device) -> Callable[[int], tuple[float, float]]:
        """``step_loss`` of multi-task training (`metamodal.train.multitask`): ``first`` (the
        main label's step, its loss weighted by the heads), then ``meta_batch`` episodes of
        each further active task, episode ``step * meta_batch + i`` of that task's sampler
        over its meta-train classes, through the shared backbone and the task's learner, each
        backpropagated with its weighted loss. Returns the main task's loss and accuracy; the
        further tasks' go to ``self.task_values``."""
        cfg, heads, data = self.config, self.heads, self._data
        assert heads is not None
        samplers = {}
        for t in heads.active()[1:]:  # the main task always trains (`TrainConfig.validate`)
            store, classes = task_view(data.store, data.dataset, heads.columns[t],
                                       data.split.train)
            samplers[t] = EpisodeSampler(store, classes, cfg.ways, cfg.shots, cfg.queries,
                                         seed=task_sampler_seed(cfg.seed, t))
        self.task_values: dict[str, float] = {}

        def step_loss(step: int) -> tuple[float, float]:
            loss, acc = first(step)
            for t, sampler in samplers.items():
                task_model, total_loss, total_acc = heads.model(model, t), 0.0, 0.0
                for number in range(step * cfg.meta_batch, (step + 1) * cfg.meta_batch):
                    task = sampler[number].to(device)
                    task_loss, logits = task_model.loss(task)
                    (heads.combine(t, task_loss) / cfg.meta_batch).backward()
                    total_loss += task_loss.item()
                    total_acc += (logits.argmax(-1) == task.query_labels).float().mean().item()
                name = heads.columns[t]
                self.task_values[f"train_loss_{name}"] = total_loss / cfg.meta_batch
                self.task_values[f"train_acc_{name}"] = total_acc / cfg.meta_batch
            if heads.log_vars is not None:
                for t, value in enumerate(heads.log_vars.tolist()):
                    self.task_values[f"log_var_{heads.columns[t]}"] = value
            return loss, acc

        return step_loss

    def _fit_to_budget(self, budget: TimeBudget, progress: TrainingProgress, started: float,
                       bar: tqdm) -> None:
        """End training where ``max_minutes`` holds it (`TimeBudget.last_step`), the step
        ``progress.step`` done and this one begun at ``started``; rank 0 decides for every
        process."""
        elapsed = progress.seconds + time.perf_counter() - started
        last = self.job.on_main(lambda: budget.last_step(progress.step, elapsed))
        if last is not None and last != self._plan.steps:
            self._plan.replan(progress.step, last)
            bar.total = self._plan.steps
            bar.refresh()

    def _log_window(self, progress: TrainingProgress, values: dict[str, float | Tensor],
                    logger: MetricsLogger, schedule: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Average the training loss and accuracy over ``LOG_EVERY`` steps and log them (the
        sums stay on the device between log lines: no step waits to read them)."""
        window = progress.window
        window["loss"] += values["train_loss"]
        window["acc"] += values["train_acc"]
        window["n"] += 1
        if progress.step % LOG_EVERY == 0 or progress.step == self._plan.steps:
            loss = float(window["loss"]) / window["n"]
            if not math.isfinite(loss):
                inner = self.config.learner_options.get("inner_lr")
                inner_fix = (f" or learner_options.inner_lr (it is {inner:g})"
                             if isinstance(inner, int | float) else "")
                raise ConfigError(
                    f"training diverged: the training loss is {loss} by step {progress.step}",
                    column="lr", fix=f"train again with a lower lr (it is {self.config.lr:g})"
                    f"{inner_fix}, or with loss settings nearer their defaults (a margin, a "
                    "temperature)")
            logger.log(progress.step, {"train_loss": loss,
                                       "train_acc": float(window["acc"]) / window["n"],
                                       "lr": schedule.get_last_lr()[0]})
            progress.window = {"loss": 0.0, "acc": 0.0, "n": 0}

    def _load_state(self, checkpoint_path: Path) -> dict | None:
        """The checkpoint to resume from (its config replaces the given one), or None."""
        if not checkpoint_path.exists():
            log.warning("no checkpoint in %s: training from the start", self.out)
            return None
        state = load_checkpoint(checkpoint_path)
        if not isinstance(state["config"], dict):
            raise RunError("checkpoint entry is not a table of settings", file=checkpoint_path,
                           column="config", fix="delete it to start over")
        saved = TrainConfig.from_dict(state["config"], source=str(checkpoint_path))
        saved.validate(source=str(checkpoint_path))
        if saved.updated({"world_size": self.config.world_size}) != self.config:
            log.warning("resuming with the run's own config; the flags given differ")
        self.config = saved
        return state

    def _build(
        self, data: PreparedData, train_classes: int, device: torch.device, *,
        fresh: bool = True,
    ) -> tuple[FewShotModel, SupervisedClassifier | None]:
        """The model, and for supervised-mode learners the pre-training classifier over
        ``train_classes`` classes; initialised from ``init_from`` when ``fresh`` (not when
        resuming: the checkpoint's weights replace them), with ``freeze`` applied."""
        cfg = self.config
        model = FewShotModel.build(
            kinds=data.preprocessor.kinds(),
            input_info=data.preprocessor.input_info(),
            dim=cfg.dim,
            encoders=cfg.encoders or None,
            fusion=cfg.fusion,
            learner=cfg.learner,
            encoder_options=cfg.encoder_options or None,
            fusion_options=cfg.fusion_options or None,
            learner_options=cfg.learner_options or None,
        ).to(device)
        apply_test_time(model, cfg, data.preprocessor)
        if model.capabilities().uses_class_semantics:
            raise ConfigError(
                f"learner {cfg.learner} mixes each class's prototype with its description, "
                "which training episodes do not carry", column="learner",
                fix="train protonet and run `metamodal zero-shot` on the run: it fits an AM3 "
                "head on the run's embeddings and the class descriptions")
        self.transfer = self._transfer(model, data, fresh)
        self.model = model
        if model.capabilities().training != "supervised":
            return model, None
        classifier = SupervisedClassifier(
            model.backbone.fusion.out_dim, train_classes,
            cosine=cfg.pretrain_classifier == "cosine",
        )
        return model, classifier.to(device)

    def _transfer(self, model: FewShotModel, data: PreparedData,
                  fresh: bool) -> Transfer | None:
        """Initialise ``model`` from ``init_from`` (when ``fresh``) and freeze ``freeze``;
        the `Transfer` table (a resumed run's is read from its ``transfer.json``)."""
        cfg = self.config
        self.frozen: set[str] = set()
        if not cfg.init_from and not cfg.freeze:
            return None
        transfer: Transfer | None
        if not fresh:
            transfer = read_transfer(self.out)
        elif cfg.init_from:
            transfer = transfer_weights(model, cfg.init_from,
                                        data.preprocessor.state_dict()["loaders"])
        else:
            transfer = no_transfer(model)
        frozen = freeze(model, cfg.freeze)
        self.frozen = set(frozen)
        if cfg.freeze and not any(p.requires_grad for p in model.parameters()) \
                and model.capabilities().training != "supervised" and not cfg.aligns:
            raise ConfigError(
                f"--freeze {','.join(cfg.freeze)} leaves no weight of this model to train "
                f"(learner {cfg.learner}, fusion {cfg.fusion})", column="freeze",
                fix="freeze less (e.g. --freeze encoders keeps the fusion trainable), or use "
                "a fusion or learner with weights of its own (e.g. --fusion gated)")
        if transfer is not None and fresh:
            random = mark_frozen(transfer, frozen, cfg.freeze, model.modalities)
            if random:
                log.warning("--freeze: %s %s frozen at a random initialisation (not reused "
                            "from --init-from)", ", ".join(random),
                            "is" if len(random) == 1 else "are")
            log.info("transfer:\n%s", transfer.table())
        return transfer

    def _build_aligner(self, model: FewShotModel, data: PreparedData,
                       device: torch.device) -> Aligner | None:
        """The alignment module when the config asks for one (`build_aligner`), else None."""
        self.aligner: Aligner | None = None
        if self.config.aligns:
            self.aligner = build_aligner(self.config, model, data.store,
                                         data.split.train).to(device)
        return self.aligner

    def _select(self, progress: TrainingProgress, val_acc: float, model: FewShotModel) -> None:
        """Keep the best validated weights; count validations without gain for early stopping."""
        if val_acc > progress.best:
            progress.best, progress.best_step, progress.bad = val_acc, progress.step, 0
            if not self.job.is_main:
                return
            save_weights(self._work / WEIGHTS_FILE, model)
            if self.heads is not None:
                save_weights(self._work / TASKS_FILE, self.heads)
            if self.aligner is not None:
                save_weights(self._work / ALIGNMENT_FILE, self.aligner)
            return
        progress.bad += 1
        if self.config.patience and progress.bad >= self.config.patience:
            progress.stopped_early = True
            log.info("early stopping at step %d (best %d)", progress.step, progress.best_step)

    @torch.no_grad()
    def _validate(
        self,
        model: FewShotModel,
        classifier: SupervisedClassifier | None,
        data: PreparedData,
        device: torch.device,
    ) -> float:
        """Accuracy on ``val_episodes`` meta-validation episodes (same episodes every time);
        with ``align_only``, the mean instance-level Recall@1 between aligned modalities."""
        cfg = self.config
        if cfg.align_only:
            assert self.aligner is not None
            return alignment_recall(model, self.aligner, data.store, data.split.val,
                                    device=device, level=self.aligner.positives)
        if classifier is not None and hasattr(model.learner, "set_feature_mean"):
            model.learner.set_feature_mean(
                train_feature_mean(model, data.store, data.split.train, device))
        ways, shots, queries = self._val_shape
        result = evaluate(model, data.store, data.split.val, ways=ways, shots=shots,
                          queries=queries, episodes=cfg.val_episodes, seed=cfg.seed + 1,
                          device=device, shard=self.job)
        return result.accuracy
