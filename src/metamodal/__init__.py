"""metamodal: few-shot learning on multimodal data.

The public API is imported lazily, so ``import metamodal`` stays cheap:

>>> import metamodal
>>> sorted(metamodal.__all__)[:3]
['Aligner', 'ConfigError', 'DatasetError']
"""

from __future__ import annotations

import importlib
from typing import Any

from metamodal.version import __version__ as __version__

_EXPORTS = {
    "load_dataset": "metamodal.data.dataset",
    "MultimodalDataset": "metamodal.data.dataset",
    "EpisodeSampler": "metamodal.data.episodes",
    "read_episode_file": "metamodal.data.episode_files",
    "write_episode_file": "metamodal.data.episode_files",
    "split_classes": "metamodal.data.splits",
    "Preprocessor": "metamodal.data.preprocess",
    "make_synthetic": "metamodal.datasets.synthetic",
    "import_dataset": "metamodal.datasets.importers",
    "download_omniglot": "metamodal.datasets.download",
    "protocol_episodes": "metamodal.data.episode_files",
    "encoders": "metamodal.encoders",
    "fusions": "metamodal.fusion",
    "learners": "metamodal.learners",
    "FewShotModel": "metamodal.model",
    "Trainer": "metamodal.train.trainer",
    "TrainConfig": "metamodal.config",
    "load_run": "metamodal.runs.directory",
    "evaluate": "metamodal.evaluate.protocol",
    "FewShotClassifier": "metamodal.classifier",
    "retrieve": "metamodal.api",
    "zero_shot": "metamodal.api",
    "Aligner": "metamodal.mapping.aligner",
    "load_alignment": "metamodal.train.alignment",
    "MetamodalError": "metamodal.errors",
    "DatasetError": "metamodal.errors",
    "ConfigError": "metamodal.errors",
    "RunError": "metamodal.errors",
    "ModalityError": "metamodal.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metamodal' has no attribute {name!r}")
