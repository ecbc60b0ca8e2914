"""Alignment in training: build the `Aligner` a config asks for, measure alignment on
validation samples, save and load it. (``--init-from``, which starts a model from an alignment
run or any other, is `metamodal.train.transfer`.)"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from metamodal.config import LIMITS, TrainConfig, resolve_device
from metamodal.data.batch import TensorStore
from metamodal.errors import ConfigError, DatasetError, ModalityError, RunError
from metamodal.mapping.aligner import Aligner
from metamodal.mapping.joint import encode_store
from metamodal.mapping.retrieval import retrieval_ranks, similarity
from metamodal.model import FewShotModel
from metamodal.runs.weights import load_weights

log = logging.getLogger(__name__)

ALIGNMENT_FILE = "alignment.safetensors"


def class_rows(store: TensorStore, classes: list[str]) -> torch.Tensor:
    """Store rows (long ``[K]``) of the samples of ``classes``."""
    keep = set(classes)
    return torch.tensor([i for i, label in enumerate(store.labels) if label in keep],
                        dtype=torch.long)


def build_aligner(config: TrainConfig, model: FewShotModel, store: TensorStore,
                  train_classes: list[str]) -> Aligner:
    """The `Aligner` of ``config`` for ``model``, checked against the training data.

    Raises:
        ModalityError: an aligned modality is not one of the model's (the dataset lacks it,
            or ``--modalities`` left it out).
        DatasetError: no meta-train sample has both modalities of an aligned pair.
    """
    names = list(config.align_modalities or model.modalities)
    unknown = [m for m in names if m not in model.modalities]
    if unknown:
        raise ModalityError(
            f"cannot align {', '.join(unknown)}: the training data has no such modality "
            f"(it has {', '.join(model.modalities)})", column="align_modalities",
            fix=f"align two or more of: {', '.join(model.modalities)}")
    aligner = Aligner(names, dim=int(config.dim), objective=config.align_objective,
                      **config.align_options)
    rows = class_rows(store, train_classes)
    batch = store.batch(rows, names)
    for a, b in aligner.pairs():
        if not bool((batch[a].present & batch[b].present).any()):
            raise DatasetError(
                f"no meta-train sample has both {a} and {b}, so they cannot be aligned",
                column=f"{a},{b}", fix="align modalities that occur together in samples")
    return aligner


@torch.no_grad()
def alignment_recall(model: FewShotModel, aligner: Aligner, store: TensorStore,
                     classes: list[str], *, device: torch.device | str = "cpu",
                     max_samples: int = 1000, level: str = "instance") -> float:
    """Mean Recall@1 (``level`` ``"instance"`` or ``"class"``) over every aligned pair and both
    directions, on the samples of ``classes`` (the first ``max_samples`` of each pair's)."""
    rows = class_rows(store, classes)
    parts, present = encode_store(model.backbone, store, rows, device=device)
    recalls = []
    for a, b in aligner.pairs():
        both = (present[a] & present[b]).nonzero().squeeze(1)[:max_samples]
        if len(both) < 2:
            continue
        names = [store.labels[i] for i in rows[both].tolist()]
        index = {label: k for k, label in enumerate(dict.fromkeys(names))}
        labels = torch.tensor([index[label] for label in names])
        for x, y in ((a, b), (b, a)):
            ranks = retrieval_ranks(parts[x][both], parts[y][both], labels)
            recalls.append(float(ranks.recall(1, level).mean()))
    return sum(recalls) / len(recalls) if recalls else float("nan")


def load_alignment(run_dir: str | Path, *, device: str = "cpu") -> Aligner:
    """The `Aligner` a run trained (``metamodal align`` or ``train --align-weight``).

    Raises:
        RunError: the run trained no alignment, or its alignment file is missing or corrupt.
        ConfigError: ``device`` names one this machine lacks (as `load_run`'s).
    """
    from metamodal.runs.directory import read_run_config

    run_dir = Path(run_dir)
    document = read_run_config(run_dir)
    options = document.get("alignment")
    if not options:
        raise RunError("this run trained no cross-modal alignment", file=run_dir / "config.toml",
                       fix="train one with `metamodal align --data DIR --modalities a,b --out RUN`"
                       " or `metamodal train ... --align-weight 0.5`")
    try:
        options = dict(options)
        modalities, dim = options.pop("modalities"), options.pop("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= LIMITS["dim"]:
            raise ConfigError(f"dim must be an integer in 1..{LIMITS['dim']}, got {dim!r}")
        aligner = Aligner(modalities, dim=dim, **options)
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        raise RunError(f"the [alignment] table is damaged ({error})",
                       file=run_dir / "config.toml",
                       fix="train the alignment again (`metamodal align ...`)") from None
    load_weights(run_dir / ALIGNMENT_FILE, aligner)
    return aligner.to(resolve_device(str(device))).eval()


def check_aligned(aligner: Aligner, *modalities: str) -> None:
    """Raise `ModalityError` unless every one of ``modalities`` was aligned by ``aligner``."""
    missing = [m for m in modalities if m not in aligner.modalities]
    if missing:
        raise ModalityError(
            f"the run was not aligned on {', '.join(missing)} (it aligned "
            f"{', '.join(aligner.modalities)})", column="modality",
            fix=f"use two of: {', '.join(aligner.modalities)}, or align a run on "
            f"{', '.join(modalities)} with `metamodal align --modalities "
            f"{','.join(modalities)}`")


def batch_recall(aligner: Aligner, parts: dict, present: dict) -> float:
    """In-batch instance Recall@1 of the first aligned pair, in its first direction (what
    an ``align_only`` training step reports); 0 with fewer than two samples carrying both.

    Args:
        aligner: the alignment module.
        parts: modality -> per-modality embeddings ``[B, D]`` of the batch.
        present: modality -> bool ``[B]``.
    """
    a, b = aligner.pairs()[0]
    rows = (present[a] & present[b]).nonzero().squeeze(1)
    if len(rows) < 2:
        return 0.0
    with torch.no_grad():
        sim = similarity(parts[a][rows], parts[b][rows])
        return (sim.argmax(1) == torch.arange(len(rows), device=sim.device)).float().mean().item()
