"""Supervised pre-training of the baseline learners: ordinary classification over all
meta-train classes, then few-shot episodes on the pre-trained features.

Chen et al. (2019), "A Closer Look at Few-shot Classification": a linear (or cosine,
Baseline++) classifier over the encoders and fusion, trained on batches of meta-train samples.
"""

from __future__ import annotations

import numpy as np
import torch

from metamodal.data.augment import Augmentation, step_generator
from metamodal.data.batch import TensorStore
from metamodal.evaluate.embedding import embed_store
from metamodal.learners.baselines import SupervisedClassifier
from metamodal.model import FewShotModel


def class_index(store: TensorStore, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Store rows of the samples of ``classes``, long ``[N]``, and their class ids ``[N]``
    (positions in ``classes``).

    Example:
        >>> store = TensorStore(["a", "b", "c"], ["x", "y", "x"], {}, {})
        >>> [t.tolist() for t in class_index(store, ["x"])]
        [[0, 2], [0, 0]]
    """
    ids = {label: k for k, label in enumerate(classes)}
    rows = [(i, ids[label]) for i, label in enumerate(store.labels) if label in ids]
    index = torch.tensor([r[0] for r in rows], dtype=torch.long)
    return index, torch.tensor([r[1] for r in rows], dtype=torch.long)


def masked_mean(embeddings) -> torch.Tensor:
    """Mean over present modalities of late-fusion embeddings ``[B, M, D]`` -> ``[B, D]``."""
    mask = embeddings.present.unsqueeze(-1).to(embeddings.z.dtype)
    return (embeddings.z * mask).sum(1) / mask.sum(1).clamp_min(1)


def classify(
    model: FewShotModel, classifier: SupervisedClassifier, batch: dict
) -> torch.Tensor:
    """Supervised logits ``[B, classes]``; late fusion mixes the per-modality logits with the
    fusion's ``combine``, as a learner does."""
    embeddings = model.embed(batch)
    logits = classifier(embeddings.z)  # [B, C], late fusion [B, M, C]
    if embeddings.late:
        return model.backbone.fusion.combine(logits, embeddings.present)
    return logits


def supervised_step(
    model: FewShotModel,
    classifier: SupervisedClassifier,
    store: TensorStore,
    train_index: tuple[torch.Tensor, torch.Tensor],
    augmentation: Augmentation,
    step: int,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """The loss of one (augmented) batch of ordinary classification over all meta-train
    classes, and its accuracy; the batch is a pure function of ``(seed, step)``.

    Args:
        model: the model being pre-trained.
        classifier: the classifier over the meta-train classes.
        store: the decoded samples.
        train_index: `class_index` of the meta-train classes.
        augmentation: the training-time augmentation (applied with the step's generator).
        step: the training step.
        seed: the run's seed.
        batch_size: samples per batch (all of them when fewer).
        device: where the batch goes.

    Returns:
        the cross-entropy (a scalar with gradients) and the batch accuracy in ``0..1``.
    """
    indices, targets = train_index
    rng = np.random.default_rng([seed, step])
    size = min(batch_size, len(indices))
    pick = torch.from_numpy(rng.choice(len(indices), size=size, replace=False))
    batch = store.batch(indices[pick])
    if augmentation.active:
        batch = augmentation.batch(batch, step_generator(seed, step))
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = classify(model, classifier, batch)
    labels = targets[pick].to(device)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    return loss, (logits.argmax(-1) == labels).float().mean().item()


def train_feature_mean(model: FewShotModel, store: TensorStore, classes: list[str],
                       device: torch.device) -> torch.Tensor:
    """The mean embedding ``[D]`` of the meta-train samples that carry any modality (what a
    learner that centres features, such as the nearest-centroid baseline, is given)."""
    indices, _ = class_index(store, classes)
    embeddings = embed_store(model, store, indices, device=device)
    z = embeddings.z if embeddings.z.dim() == 2 else masked_mean(embeddings)
    return z[embeddings.present.any(1)].mean(0)
