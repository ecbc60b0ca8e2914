"""What a trained model does at test time beyond embedding each sample once: test-time
augmentation, confidence-weighted late fusion and transductive refinement of the prototypes.

- **Test-time augmentation** (``tta = N``): a sample's embedding is the mean of the
  embeddings of the sample and of ``N`` randomly transformed copies of it, drawn from the run's
  own per-modality ``[augment]`` tables (class rotations and modality dropout are left out:
  they change what a sample is, not how it was drawn). A support drawing's copies stand in
  for more supports (for prototypes, their mean is the same thing), a query's copies vote.
  Each sample's copies are drawn from a generator of its own, seeded by its shape
  (`metamodal.data.augment.Augmentation.sample_copies`): a sample's embedding is the same
  whatever batch it comes in and wherever in it, and an evaluation is reproducible.
- **Confidence-weighted late fusion** (``fusion_confidence = c``): each query's modality
  weights become ``softmax(mix - c * entropy)`` (`metamodal.fusion.late.LateFusion`).
- **Reliability-weighted late fusion** (``fusion_reliability = r``): each modality's weight
  for a class becomes ``softmax(mix + r * log agreement)``, its agreement with the fused
  model on the episode's queries of that class (`metamodal.fusion.late.LateFusion`).
- **Transduction** (``transduction = T``): ``T`` steps of soft k-means over the episode's
  unlabelled queries refine each prototype (Ren et al. 2018, "Meta-Learning for
  Semi-Supervised Few-Shot Classification"); see `metamodal.learners.protonet.ProtoNet`.
  With ``transduction_balance = true`` each step assigns the queries evenly over the classes
  (Sinkhorn balancing, `metamodal.ops.balanced_softmax`), for episodes whose queries are
  spread evenly over their classes.

All act only in evaluation mode: training is unchanged, so each can be switched on for a
run that was trained without it (``metamodal eval RUN --tta 8 --transduction 1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from metamodal.config import TestTime, TrainConfig
from metamodal.data.augment import Augmentation, augmentation_for
from metamodal.data.batch import batch_to
from metamodal.errors import ConfigError
from metamodal.learners.embeddings import Embeddings

TTA_SEED = 0
"""Seed of the copies' transforms, with each sample's shape (the same copies of a sample for
every model, call and batch)."""


def settings_in_force(model: Any) -> list[TestTime]:
    """The test-time settings a loaded model applies: its own ``test_time`` (one), or each
    member's of an ensemble (`metamodal.model.EnsembleModel`, whose members keep their
    own)."""
    return [m.test_time for m in getattr(model, "members", None) or [model]]


def tta_augmentation(options: Mapping[str, Any] | None, preprocessor: Any) -> Augmentation:
    """The transforms of test-time augmentation: the per-modality tables of a run's
    ``augment`` options (``rotate_classes`` and ``modality_dropout`` left out), for data
    decoded by ``preprocessor`` (see `metamodal.data.augment.augmentation_for`)."""
    tables = {k: v for k, v in dict(options or {}).items()
              if k not in ("rotate_classes", "modality_dropout")}
    return augmentation_for(tables, preprocessor)


def apply_test_time(model: Any, config: TrainConfig, preprocessor: Any, *,
                    source: str | None = None) -> None:
    """Give ``model`` (a `metamodal.model.FewShotModel`) the test-time settings of a training
    ``config`` (``tta``, ``transduction``, ``transduction_balance``, ``fusion_confidence``,
    ``fusion_reliability``), its copies drawn by `tta_augmentation` for data decoded by
    ``preprocessor``; `ConfigError` as `check_test_time`, naming ``source``."""
    model.set_test_time(config.test_time(), tta_augmentation(config.augment, preprocessor)
                        if config.tta else None, source=source)


def unhonoured_settings(test_time: TestTime, learner: Any, augmentation: Augmentation | None,
                        *, source: str | None = None,
                        fusion: Any = None) -> dict[str, ConfigError]:
    """The settings of ``test_time`` (in range: `TestTime.check`) that a model of ``learner``
    and ``fusion`` cannot honour, each with the `ConfigError` that says why (naming
    ``source``): ``tta`` without any per-modality transform in ``augmentation`` or with a
    learner that adapts the network per task, ``transduction`` or ``transduction_balance``
    with a learner that has no prototypes to refine, ``fusion_confidence`` or
    ``fusion_reliability`` with a ``fusion`` other than late fusion. Empty: all honoured."""
    found: dict[str, ConfigError] = {}
    if test_time.tta and (augmentation is None or not augmentation.modalities):
        found["tta"] = ConfigError(
            "tta needs the transforms of at least one modality, and the run's [augment] table "
            "has none", file=source, column="tta",
            fix="add e.g. [augment.image] rotate = 10 to the training config, or set tta = 0")
    elif test_time.tta and not learner.capabilities().embeds_once:
        found["tta"] = ConfigError(
            f"learner {type(learner).__name__} adapts the network per task; test-time "
            "augmentation averages embeddings of a fixed network", file=source, column="tta",
            fix="use a metric learner (protonet, ...), or set tta = 0")
    for key, off in (("transduction", "0"), ("transduction_balance", "false")):
        if getattr(test_time, key) and not hasattr(learner, "transduction"):
            found[key] = ConfigError(f"learner {type(learner).__name__} has no prototypes to "
                                     "refine by transduction", file=source, column=key,
                                     fix=f"use learner = 'protonet', or set {key} = {off}")
    for key in ("fusion_confidence", "fusion_reliability"):
        if getattr(test_time, key) and not getattr(fusion, "late", False):
            found[key] = ConfigError(f"{key} weighs the per-modality posteriors of late fusion, "
                                     f"and this model fuses with {type(fusion).__name__}",
                                     file=source, column=key,
                                     fix=f"train with fusion = 'late', or set {key} = 0")
    return found


def check_test_time(test_time: TestTime, learner: Any, augmentation: Augmentation | None,
                    *, source: str | None = None, fusion: Any = None) -> None:
    """Refuse settings the model cannot honour.

    Raises:
        ConfigError: a setting out of range (`TestTime.check`), or the first that
            `unhonoured_settings` finds (the key named).
    """
    test_time.check(source=source)
    for error in unhonoured_settings(test_time, learner, augmentation, source=source,
                                     fusion=fusion).values():
        raise error


def unhonoured_by(model: Any, config: TrainConfig, preprocessor: Any, *,
                  source: str | None = None) -> dict[str, ConfigError]:
    """`unhonoured_settings` of a `metamodal.model.FewShotModel` given the test-time
    settings of a training ``config`` (as `apply_test_time` would give them)."""
    augmentation = tta_augmentation(config.augment, preprocessor) if config.tta else None
    return unhonoured_settings(config.test_time(), model.learner, augmentation, source=source,
                               fusion=model.backbone.fusion)


def averaged_embedding(embed: Any, batch: Mapping[str, Any], copies: int,
                       augmentation: Augmentation) -> Embeddings:
    """The mean of ``embed(batch)`` and ``embed`` of ``copies`` transformed copies of
    ``batch``: ``z`` (``[B, D]`` or ``[B, M, D]``) and the per-modality ``parts`` averaged,
    ``present`` unchanged (the transforms never hide a modality). Where no modality that
    a sample of ``batch`` shows has a transform (``eval --modalities`` of an untransformed
    one), every copy would be the sample itself: it is embedded once.

    Args:
        embed: ``embed(batch) -> Embeddings`` (a backbone).
        batch: modality name -> `ModalityBatch` of ``B`` samples.
        copies: transformed copies (>= 1).
        augmentation: the transforms (`tta_augmentation`).
    """
    first = embed(batch)
    if not any(name in augmentation.modalities and bool(batch[name].present.any())
               for name in batch):
        return first
    device = first.z.device
    on_cpu = batch_to(batch, "cpu") if device.type != "cpu" else batch  # transforms draw there
    z: Tensor = first.z.clone()
    parts = None if first.parts is None else {k: v.clone() for k, v in first.parts.items()}
    for copy in augmentation.sample_copies(on_cpu, copies, seed=TTA_SEED):
        other = embed(batch_to(copy, device))
        z += other.z
        if parts is not None and other.parts is not None:
            for name in parts:
                parts[name] += other.parts[name]
    scale = 1.0 / (copies + 1)
    return Embeddings(z * scale, first.present,
                      None if parts is None else {k: v * scale for k, v in parts.items()},
                      list(first.modalities))
