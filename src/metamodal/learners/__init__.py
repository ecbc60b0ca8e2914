"""Few-shot learners: each owns an episode, given a backbone (encoders + fusion; see
`metamodal.model`).

Learners register themselves in `learners` by name, one file per family: metric
(``protonet``, ``matchingnet``, ``relationnet``, ``siamese``, ``am3``), the baselines
(``nearest-centroid``, ``finetune``) and the optimisation-based family (``maml``, ``fomaml``,
``anil``, ``metasgd``, ``maml++``, ``reptile``, ``lstm-optimizer``).

Example:
    >>> from metamodal.learners import learners
    >>> learners.names()  # doctest: +NORMALIZE_WHITESPACE
    ['am3', 'anil', 'finetune', 'fomaml', 'lstm-optimizer', 'maml', 'maml++', 'matchingnet',
     'metasgd', 'nearest-centroid', 'protonet', 'relationnet', 'reptile', 'siamese']
"""

from metamodal.learners import (
    am3,
    baselines,
    gradient,
    matchingnet,
    protonet,
    relationnet,
    siamese,
)
from metamodal.learners.am3 import AM3, class_semantics
from metamodal.learners.base import (
    Learner,
    MetricLearner,
    check_support,
    class_means,
    embed_pair,
    learners,
    support_checked,
)
from metamodal.learners.baselines import FineTune, NearestCentroid, SupervisedClassifier
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.gradient import (
    ANIL,
    FOMAML,
    MAML,
    GradientLearner,
    LSTMOptimizer,
    MAMLPlusPlus,
    MetaSGD,
    Reptile,
)
from metamodal.learners.matchingnet import MatchingNet
from metamodal.learners.protonet import ProtoNet
from metamodal.learners.relationnet import RelationNet
from metamodal.learners.siamese import Siamese, contrastive_loss

__all__ = [
    "AM3",
    "ANIL",
    "FOMAML",
    "MAML",
    "Embeddings",
    "FineTune",
    "GradientLearner",
    "LSTMOptimizer",
    "Learner",
    "MAMLPlusPlus",
    "MatchingNet",
    "MetaSGD",
    "MetricLearner",
    "NearestCentroid",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "Siamese",
    "am3",
    "SupervisedClassifier",
    "baselines",
    "check_support",
    "class_means",
    "class_semantics",
    "contrastive_loss",
    "embed_pair",
    "gradient",
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
