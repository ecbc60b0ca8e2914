"""A baseline that needs no training, to put beside any evaluated run."""

from __future__ import annotations

import torch

from metamodal.model import EnsembleModel, FewShotModel

UNTRAINED = "baseline: untrained encoders"


def untrained_baseline(model: FewShotModel | EnsembleModel, *,
                       seed: int = 0) -> FewShotModel | EnsembleModel:
    """The same architecture as ``model`` with freshly initialised weights and a ProtoNet head.

    Random-feature baselines show how much of a result meta-training earned: nearest
    prototypes over untrained encoders already beat chance on easy data (Saxe et al. 2011,
    "On Random Weights and Unsupervised Feature Learning"). The global random state is left
    untouched.

    For an `EnsembleModel`, the ensemble (``mean``, no calibration) of its members'
    baselines.

    Args:
        model: a model built by `FewShotModel.build` (it has a ``spec``), or an ensemble.
        seed: seeds the initialisation.

    Returns:
        A new `FewShotModel` in eval mode, on ``model``'s device.

    Example:
        >>> spec = dict(kinds={"x": "tabular"}, input_info={"x": {"features": 3}}, dim=8)
        >>> trained = FewShotModel.build(**spec, learner="matchingnet")
        >>> type(untrained_baseline(trained).learner).__name__
        'ProtoNet'
    """
    if isinstance(model, EnsembleModel):  # each member's baseline, averaged
        return EnsembleModel([untrained_baseline(m, seed=seed + k)
                              for k, m in enumerate(model.members)], "mean").eval()
    spec = {**model.spec, "learner": "protonet", "learner_options": {}}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        baseline = FewShotModel.build(**spec)
    return baseline.to(device).eval()
