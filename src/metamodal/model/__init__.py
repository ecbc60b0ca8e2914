"""The model: a `Backbone` (per-modality encoders and a fusion module) and `FewShotModel`
(a backbone and a learner), and `EnsembleModel` (trained models predicting as one)."""

from metamodal.model.backbone import Backbone
from metamodal.model.ensemble import EnsembleModel
from metamodal.model.few_shot_model import FewShotModel

__all__ = ["Backbone", "EnsembleModel", "FewShotModel"]
