"""Few-shot learners: metric-based heads, baselines and the `FewShotModel` that composes
encoders, fusion and a head.

Heads register themselves in `learners` by name, one file per family:
``protonet``, ``matchingnet``, ``relationnet``, ``siamese`` and the baselines
``nearest-centroid`` and ``finetune``.

Example:
    >>> from metamodal.learners import learners
    >>> learners.names()
    ['finetune', 'matchingnet', 'nearest-centroid', 'protonet', 'relationnet', 'siamese']
"""

from metamodal.learners import baselines, matchingnet, protonet, relationnet, siamese
from metamodal.learners.base import Head, check_support, class_means, learners, support_checked
from metamodal.learners.baselines import FineTune, NearestCentroid, SupervisedClassifier
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.matchingnet import MatchingNet
from metamodal.learners.model import FewShotModel
from metamodal.learners.protonet import ProtoNet
from metamodal.learners.relationnet import RelationNet
from metamodal.learners.siamese import Siamese, contrastive_loss

__all__ = [
    "Embeddings",
    "FewShotModel",
    "FineTune",
    "Head",
    "MatchingNet",
    "NearestCentroid",
    "ProtoNet",
    "RelationNet",
    "Siamese",
    "SupervisedClassifier",
    "baselines",
    "check_support",
    "class_means",
    "contrastive_loss",
    "learners",
    "matchingnet",
    "protonet",
    "relationnet",
    "siamese",
    "support_checked",
]

# The package doubles as its registry, so `metamodal.learners.create(...)` works whether
# `metamodal.learners` resolves to this package or to the registry object.
create = learners.create
get = learners.get
names = learners.names
register = learners.register
