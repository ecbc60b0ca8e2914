"""The outcome of a few-shot evaluation: `EvalResult`, with its JSON form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from metamodal.errors import ConfigError


@dataclass
class EvalResult:
    """The outcome of evaluating a model on a set of few-shot episodes.

    Args:
        accuracy: mean per-episode query accuracy, in ``0..1``.
        ci95: half width of the 95% confidence interval of ``accuracy`` (``nan`` for one
            episode; see `metamodal.evaluate.stats.mean_ci95`).
        macro_f1: mean per-episode macro-F1, in ``0..1``.
        episodes: number of episodes.
        ways: classes per episode (``None`` when fixed episodes differ).
        shots: support samples per class (``None`` when episodes differ or are unbalanced).
        queries: query samples per class (``None`` when episodes differ or are unbalanced).
        seed: seed of the episode sampler and of the modality drop.
        accuracies: per-episode accuracies, ``episodes`` of them, in episode order; two results
            with the same ``episode_digest`` can be compared episode by episode
            (`metamodal.evaluate.stats.paired_difference`).
        name: what was evaluated ("protonet+gated", "only:image", ...).
        modalities: the modalities the model was allowed to see.
        drop: modality -> fraction of samples for which it was hidden, if any.
        episode_digest: fingerprint of the exact episodes (sample indices and labels).

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.89, 600, 5, 1, 15, 0, name="protonet")
        >>> r.to_dict()["accuracy"], r.to_dict()["shots"]
        (0.9, 1)
    """

    accuracy: float
    ci95: float
    macro_f1: float
    episodes: int
    ways: int | None
    shots: int | None
    queries: int | None
    seed: int
    accuracies: list[float] = field(default_factory=list)
    name: str | None = None
    modalities: list[str] | None = None
    drop: dict[str, float] | None = None
    episode_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-able dict (non-finite numbers become ``None``)."""
        return {
            "name": self.name,
            "accuracy": finite_or_none(self.accuracy),
            "ci95": finite_or_none(self.ci95),
            "macro_f1": finite_or_none(self.macro_f1),
            "episodes": self.episodes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "modalities": None if self.modalities is None else list(self.modalities),
            "drop": None if self.drop is None else dict(self.drop),
            "episode_digest": self.episode_digest,
            "accuracies": [finite_or_none(a) for a in self.accuracies],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild a result from `to_dict` output (``None`` numbers become ``nan``).

        Raises:
            ConfigError: a required key (accuracy, ci95, episodes, ways, shots) is missing.
        """
        missing = [k for k in ("accuracy", "ci95", "episodes", "ways", "shots") if k not in data]
        if missing:
            raise ConfigError(
                f"result lacks {', '.join(missing)}", fix="pass a dict written by to_dict()"
            )
        return cls(
            accuracy=nan_if_none(data["accuracy"]),
            ci95=nan_if_none(data["ci95"]),
            macro_f1=nan_if_none(data.get("macro_f1")),
            episodes=int(data["episodes"]),
            ways=data["ways"],
            shots=data["shots"],
            queries=data.get("queries"),
            seed=int(data.get("seed", 0)),
            accuracies=[nan_if_none(a) for a in data.get("accuracies") or []],
            name=data.get("name"),
            modalities=data.get("modalities"),
            drop=data.get("drop"),
            episode_digest=data.get("episode_digest"),
        )

    def renamed(self, name: str) -> EvalResult:
        """A copy of the result under another name."""
        return replace(self, name=name)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or ``None`` when it is ``None`` or not finite (for JSON).

    Example:
        >>> finite_or_none(float("nan")), finite_or_none(0.5)
        (None, 0.5)
    """
    return None if x is None or not math.isfinite(x) else float(x)


def nan_if_none(x: float | None) -> float:
    """``x`` as a float, ``nan`` for ``None`` (the inverse of `finite_or_none`).

    Example:
        >>> nan_if_none(None)
        nan
    """
    return math.nan if x is None else float(x)
