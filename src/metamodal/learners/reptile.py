"""Reptile (Nichol, Achiam and Schulman, 2018): adapt with plain SGD, then move the
meta-learned weights toward the adapted ones."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode, cat_batches
from metamodal.errors import ConfigError
from metamodal.learners.base import EpisodeContext, check_support, learners
from metamodal.learners.gradient import GradientLearner
from metamodal.learners.inner_loop import parameter_slots, task_batch_norm, unroll


@learners.register("reptile")
class Reptile(GradientLearner):
    """Reptile: adapt to each task with plain SGD, then move the meta-learned weights toward
    the adapted ones.

    Nichol, Achiam and Schulman, 2018, "On First-Order Meta-Learning Algorithms". Meta-training
    adapts on all of an episode's samples (support and query) for ``inner_steps`` steps and
    returns the surrogate loss ``1/2 * ||theta - phi||^2`` (``phi`` the adapted weights, held
    fixed), whose gradient is ``theta - phi``: an outer SGD step of size ``epsilon`` is then
    exactly Reptile's ``theta <- theta + epsilon * (phi - theta)``, and with ``--meta-batch N``
    the mean over N tasks. The output layer starts at zero in every task (see
    `metamodal.learners.gradient`). Prediction adapts to the support set as MAML does.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> from metamodal.data.batch import Episode, ModalityBatch
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="reptile",
        ...                            learner_options={"inner_steps": 2})
        >>> batch = {"m": ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))}
        >>> labels = torch.tensor([0, 1, 0, 1])
        >>> episode = Episode(batch, batch, labels, labels, ["a", "b"], list("0123"), list("4567"))
        >>> surrogate, logits = model.loss(episode)
        >>> bool(surrogate >= 0), logits.shape
        (True, torch.Size([4, 2]))
    """

    def __init__(self, *, dim: int, **options: Any) -> None:
        if options.get("first_order") is False:
            raise ConfigError("reptile is first order by definition",
                              column="learner_options.first_order",
                              fix="leave learner_options.first_order out, or use maml")
        options["first_order"] = True
        super().__init__(dim=dim, **options)

    def check_backbone(self, backbone: nn.Module) -> None:
        """As `GradientLearner.check_backbone`; Reptile needs backbone weights to adapt."""
        super().check_backbone(backbone)
        if not self.adapted:
            raise ConfigError("reptile moves the backbone toward its adapted weights, but "
                              f"adapt = {self.adapt!r} adapts none of them",
                              column="learner_options.adapt",
                              fix='use adapt = "all", "fusion" or a list of modalities')

    def loss(self, backbone: nn.Module, episode: Episode,
             context: EpisodeContext | None = None) -> tuple[Tensor, Tensor]:
        """The Reptile surrogate loss of one episode and the query logits ``[Q, ways]`` of the
        weights adapted to the whole episode (for the training accuracy; ``context`` is not
        used)."""
        ways = episode.ways
        if not self.under_task_vmap:
            check_support(episode.support_labels, ways)
        task = (cat_batches([episode.support, episode.query])
                if set(episode.support) == set(episode.query) else episode.support)
        labels = (torch.cat([episode.support_labels, episode.query_labels])
                  if task is not episode.support else episode.support_labels)
        steps, _ = self.steps_and_lr()
        with torch.enable_grad(), task_batch_norm(backbone):
            start = self._start(backbone, ways)
            adapted = [n for n in start if not n.startswith("head.")]
            slots = parameter_slots(backbone)
            task_loss = self._loss_fn(backbone, task, labels, slots)
            *_, final = unroll(task_loss, start, steps=steps, update=self.update,
                               create_graph=False, track=False,
                               zero_first=frozenset(adapted), keep_zero=self._plain_sgd(),
                               batched=self.under_task_vmap)
            surrogate = sum(0.5 * (start[n] - final[n]).pow(2).sum() for n in adapted)
            with torch.no_grad():
                logits = self._logits(backbone, self._embed(backbone, episode.query, final,
                                                            steps, slots), final)
        return surrogate, logits
