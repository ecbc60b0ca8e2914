"""Few-shot learners: each owns an episode, given a backbone (encoders + fusion; see
`metamodal.model`), with everything else it needs passed explicitly (`EpisodeContext`).

Learners register themselves in `learners` by name, one file per family: metric
(``protonet``, ``matchingnet``, ``relationnet``, ``siamese``, ``am3``), the baselines
(``nearest-centroid``, ``finetune``) and the optimisation-based family (`gradient`'s
`GradientLearner`: ``maml``, ``fomaml``, ``anil``, ``metasgd``, ``maml++`` in `maml`,
``reptile`` in `reptile`, ``lstm-optimizer`` in `lstm_optimizer`). What a learner can do is
one method, `Learner.capabilities` (a `LearnerCapabilities`).

Example:
    >>> from metamodal.learners import learners
    >>> learners.names()  # doctest: +NORMALIZE_WHITESPACE
    ['am3', 'anil', 'finetune', 'fomaml', 'lstm-optimizer', 'maml', 'maml++', 'matchingnet',
     'metasgd', 'nearest-centroid', 'protonet', 'relationnet', 'reptile', 'siamese']
    >>> learners.create("maml", dim=8).capabilities().embeds_once
    False
"""

from metamodal.learners import (
    am3,
    baselines,
    gradient,
    lstm_optimizer,
    maml,
    matchingnet,
    protonet,
    relationnet,
    reptile,
    siamese,
)
from metamodal.learners.am3 import AM3
from metamodal.learners.base import (
    EpisodeContext,
    Learner,
    LearnerCapabilities,
    MetricLearner,
    check_support,
    class_means,
    embed_pair,
    learners,
)
from metamodal.learners.baselines import FineTune, NearestCentroid, SupervisedClassifier
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.gradient import GradientLearner
from metamodal.learners.lstm_optimizer import LSTMOptimizer
from metamodal.learners.maml import ANIL, FOMAML, MAML, MAMLPlusPlus, MetaSGD
from metamodal.learners.matchingnet import MatchingNet
from metamodal.learners.protonet import ProtoNet
from metamodal.learners.relationnet import RelationNet
from metamodal.learners.reptile import Reptile
from metamodal.learners.siamese import Siamese

__all__ = [
    "AM3",
    "ANIL",
    "FOMAML",
    "MAML",
    "Embeddings",
    "EpisodeContext",
    "FineTune",
    "GradientLearner",
    "LSTMOptimizer",
    "Learner",
    "LearnerCapabilities",
    "MAMLPlusPlus",
    "MatchingNet",
    "MetaSGD",
    "MetricLearner",
    "NearestCentroid",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "Siamese",
    "SupervisedClassifier",
    "am3",
    "baselines",
    "check_support",
    "class_means",
    "embed_pair",
    "gradient",
    "learners",
    "lstm_optimizer",
    "maml",
    "matchingnet",
    "protonet",
    "relationnet",
    "reptile",
    "siamese",
]

# The package doubles as its registry, so `metamodal.learners.create(...)` works whether
# `metamodal.learners` resolves to this package or to the registry object.
create = learners.create
get = learners.get
names = learners.names
register = learners.register
