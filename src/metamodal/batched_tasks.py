"""Whether the code runs under `torch.func.vmap` over the tasks of a meta-batch.

`metamodal.learners.task_batching` runs a learner's episode loss once for a stack of episodes
under vmap, inside `tasks_batched`. Code that cannot run under vmap as it runs outside (the
inner loop's `torch.autograd.grad`, reading a task's values on the host, choosing a memory
layout) asks `batching_tasks` and takes its vmap-ready path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_BATCHED: ContextVar[bool] = ContextVar("metamodal_tasks_batched", default=False)


@contextmanager
def tasks_batched() -> Iterator[None]:
    """Inside this block the inner loop runs under `torch.func.vmap` over tasks: it
    differentiates with `torch.func.grad` (`torch.autograd.grad` cannot run under vmap), and
    learners skip what reads a task's values on the host (the support check, done before the
    block) or reuses tensors across steps.

    Example:
        >>> with tasks_batched():
        ...     inside = batching_tasks()
        >>> inside, batching_tasks()
        (True, False)
    """
    token = _BATCHED.set(True)
    try:
        yield
    finally:
        _BATCHED.reset(token)


def batching_tasks() -> bool:
    """Whether the caller runs inside `tasks_batched` (under vmap over tasks)."""
    return _BATCHED.get()
