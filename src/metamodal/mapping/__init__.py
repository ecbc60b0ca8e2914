"""Cross-modal mapping: where a sample of one modality lands in another's space.

- `contrastive`: symmetric InfoNCE with a learnable temperature (CLIP) and the margin-based
  alignment loss (on `metamodal.losses.contrastive_loss`, which the Siamese learner also uses);
- `regression`: a network ``f`` with ``f(X) ~ Y`` under MSE or cosine loss;
- `aligner`: `Aligner`, the trainable alignment of two or more modalities (objective, maps,
  imputation of a missing modality);
- `retrieval`: ranks, Recall@K and median rank, instance- and class-level;
- `linear`: closed-form ridge and CCA maps, the baselines of retrieval;
- `descriptions` and `zeroshot`: class descriptions, their map into the embedding space,
  zero-shot logits and the training of the AM3 head.

Training an alignment (``metamodal align``, ``train --align-weight``) lives in
`metamodal.train`; its evaluation in `metamodal.evaluate.retrieval` and
`metamodal.evaluate.zeroshot`.
"""

from metamodal.losses import contrastive_loss
from metamodal.mapping.aligner import OBJECTIVES, Aligner, parse_direction
from metamodal.mapping.contrastive import info_nce, margin_alignment_loss
from metamodal.mapping.descriptions import (
    DESCRIPTIONS_FILE,
    BagOfWords,
    read_descriptions,
    require_descriptions,
)
from metamodal.mapping.linear import cca, ridge_map
from metamodal.mapping.regression import RegressionMap, regression_loss
from metamodal.mapping.retrieval import RetrievalRanks, retrieval_ranks, similarity
from metamodal.mapping.zeroshot import (
    DescriptionMap,
    class_prototypes,
    fit_am3,
    fit_description_map,
    zero_shot_logits,
)

__all__ = [
    "DESCRIPTIONS_FILE",
    "OBJECTIVES",
    "Aligner",
    "BagOfWords",
    "DescriptionMap",
    "RegressionMap",
    "RetrievalRanks",
    "cca",
    "class_prototypes",
    "contrastive_loss",
    "fit_am3",
    "fit_description_map",
    "info_nce",
    "margin_alignment_loss",
    "parse_direction",
    "read_descriptions",
    "regression_loss",
    "require_descriptions",
    "retrieval_ranks",
    "ridge_map",
    "similarity",
    "zero_shot_logits",
]
