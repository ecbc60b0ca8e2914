"""How many steps training takes and the learning rate of each: ``steps``, or fewer where
``max_minutes`` of wall-clock time would not hold them (`StepPlan`, `TimeBudget`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REPLAN_EVERY = 10
"""A time-limited run fits its remaining steps to the time left every this many steps (and
after each validation)."""


class StepPlan:
    """The step training ends at and the learning-rate factor of each step: the factor
    `torch.optim.lr_scheduler.LambdaLR` calls, and the state it checkpoints (a resumed run
    goes on with the plan it had; a checkpoint written before plans existed keeps ``steps``).

    The schedule follows a *progress* from 0 to 1: ``cosine`` decays the factor as
    ``(1 + cos(pi * progress)) / 2``, ``constant`` keeps it 1. Without a replan, progress is
    ``step / steps``. `replan` moves the last step (a time limit that would not hold the
    steps) without a jump in the learning rate: progress goes on from where it is and reaches
    1 at the new last step.

    Args:
        steps: the last step, as configured.
        schedule: ``cosine`` or ``constant``.

    Example:
        >>> plan = StepPlan(100, "cosine")
        >>> plan(50), plan.progress(50)
        (0.5, 0.5)
        >>> plan.replan(50, 75)
        >>> plan.steps, plan(50), plan.progress(60)
        (75, 0.5, 0.7)
    """

    def __init__(self, steps: int, schedule: str) -> None:
        self.steps = steps
        self.schedule = schedule
        self.anchor_step = 0
        self.anchor_progress = 0.0

    def progress(self, step: int) -> float:
        """How far training is at ``step``: 0 at the start, 1 at the last step (and after)."""
        if step >= self.steps:
            return 1.0
        return self.anchor_progress + (step - self.anchor_step) * (
            1.0 - self.anchor_progress) / (self.steps - self.anchor_step)

    def __call__(self, step: int) -> float:
        """The learning-rate factor of step ``step``."""
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def check(self) -> None:
        """Raise `ValueError` unless the plan's values have their types and ranges (a
        checkpoint's are not trusted)."""
        counts = (self.steps, self.anchor_step)
        if (not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
                or self.anchor_step > self.steps or self.schedule not in ("cosine", "constant")
                or not isinstance(self.anchor_progress, float)
                or not 0.0 <= self.anchor_progress <= 1.0):
            raise ValueError(f"a learning-rate plan with values out of range: {vars(self)}")

    def replan(self, step: int, steps: int) -> None:
        """End training at step ``steps`` (at least ``step``, the steps done) instead."""
        steps = max(step, steps)
        if steps != self.steps:
            self.anchor_progress = self.progress(step)
            self.anchor_step = step
            self.steps = steps


@dataclass
class TimeBudget:
    """Fits a training into ``max_minutes`` of wall-clock time: from the seconds its steps and
    validations take on this machine, how many more steps fit.

    Args:
        max_minutes: the limit on training's wall-clock time (steps and validations, summed
            over resumes; loading the data and building the model are not counted).
        val_every: steps between validations (0: only at the end).
        steps: the most steps (the configured count).

    Example:
        >>> budget = TimeBudget(max_minutes=1, val_every=0, steps=1000)
        >>> for seconds in (5.0, 0.5, 0.5):  # the first step warms up and is not counted
        ...     budget.record_step(seconds)
        >>> budget.last_step(step=3, elapsed=6.0)
        111
    """

    max_minutes: float
    val_every: int
    steps: int
    validation_seconds: float = 0.0
    _timed: float = field(default=0.0, init=False)  # seconds of the steps counted
    _count: int = field(default=0, init=False)
    _warm: bool = field(default=False, init=False)  # the first step has been left out

    def record_step(self, seconds: float) -> None:
        """One more step took ``seconds`` (this process's first is left out: it warms up)."""
        if self._warm:
            self._timed += seconds
            self._count += 1
        self._warm = True

    def last_step(self, step: int, elapsed: float) -> int | None:
        """The step to end at, ``step`` steps done and ``elapsed`` seconds spent: as many
        more as the time left holds, each at the mean time of this process's steps so far,
        with a validation every ``val_every`` and one at the end at the last validation's
        time; at most ``steps``, at least ``step``. None before a step has been timed."""
        if not self._count:
            return None
        per_step = self._timed / self._count
        if self.val_every:
            per_step += self.validation_seconds / self.val_every
        left = self.max_minutes * 60 - elapsed - self.validation_seconds
        return min(self.steps, step + max(0, math.floor(left / per_step)))
