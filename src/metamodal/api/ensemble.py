"""The ``ensemble`` verb: combine trained runs into one ensemble run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve, typed_arguments, write_json
from metamodal.api.settings import EnsembleSettings
from metamodal.config import test_time_overrides
from metamodal.errors import ConfigError, RunError


@dataclass
class EnsembleResult:
    """The ensemble `ensemble` wrote, and how it was fitted.

    Args:
        out: the ensemble run directory.
        method: ``mean`` or ``stack``.
        members: the member runs (as given), in order.
        names: each member's ``learner+fusion``.
        temperatures: each member's fitted temperature.
        weights: each member's weight (all one for ``mean``).
        member_accuracy: each member's validation accuracy and its 95% interval.
        accuracy: the ensemble's accuracy and interval on the same validation episodes (the
            ones it was fitted on: optimistic; ``metamodal eval OUT`` measures it on test).
        validation: the validation episodes' shape (split, ways, shots, queries, episodes,
            seed).
        joint_transduction: the members' transduction steps are taken jointly.
    """

    out: str
    method: str
    members: list[str]
    names: list[str]
    temperatures: list[float]
    weights: list[float]
    member_accuracy: list[list[float]]
    accuracy: list[float]
    validation: dict[str, Any] = field(default_factory=dict)
    joint_transduction: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` writes)."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """Each member's validation accuracy, temperature and weight, then the ensemble's (the
        first column as wide as the longest label)."""
        v = self.validation
        labels = [f"{k}: {name} ({Path(member).name})"
                  for k, (name, member) in enumerate(zip(self.names, self.members, strict=True))]
        last = "ensemble (fitted on these episodes)" + (
            ", joint transduction" if self.joint_transduction else "")
        width = max(40, *(len(label) for label in [*labels, last]))
        lines = [f"ensemble ({self.method}) of {len(self.members)} runs, fitted on "
                 f"{v.get('episodes')} validation episodes ({v.get('ways')}-way "
                 f"{v.get('shots')}-shot, seed {v.get('seed')})",
                 f"{'member':<{width}} {'val accuracy':>16} {'temperature':>12} {'weight':>8}"]
        for k, label in enumerate(labels):
            accuracy, half = self.member_accuracy[k]
            lines.append(f"{label:<{width}} {100 * accuracy:>8.2f} ± {100 * half:<5.2f} "
                         f"{self.temperatures[k]:>12.3f} {self.weights[k]:>8.3f}")
        accuracy, half = self.accuracy
        lines.append(f"{last:<{width}} {100 * accuracy:>8.2f} ± {100 * half:<5.2f}")
        lines.append(f"written: {self.out} (evaluate on test: metamodal eval {self.out})")
        return "\n".join(lines)


@typed_arguments("ensemble")
def ensemble(runs: list[str] | None = None, settings: EnsembleSettings | None = None,
             **options: Any) -> EnsembleResult:
    """Combine two or more trained runs into one ensemble run (``metamodal ensemble``).

    Each member keeps its own learner, fusion and modalities; the ensemble predicts with the
    combination of their class probabilities (``mean``: average of temperature-calibrated
    probabilities; ``stack``: fitted weights over their calibrated log-probabilities; see
    `metamodal.runs.ensemble`). Temperatures and weights are fitted once, on episodes of the
    runs' validation classes, and stored in ``OUT/config.toml``; the members are copied into
    ``OUT/members/N`` so that ``OUT`` is self-contained. ``eval``, ``predict``, ``report``,
    ``serve`` and `FewShotClassifier` accept ``OUT`` like any run.

    Args:
        runs: the member run directories.
        settings: an `EnsembleSettings`; ``options`` (its field names) override it.

    Returns:
        an `EnsembleResult`.

    Raises:
        ConfigError: fewer than two runs; runs with different class splits (their label
            spaces differ) or a modality decoded differently; a test-time setting that no
            member can honour (each member that can takes it, the others keep their own:
            `metamodal.runs.directory.members_with_test_time`); ``joint_transduction`` where
            no member with prototypes takes transduction steps; no validation classes; ``out``
            exists without ``overwrite``, or lies inside a run directory.
        RunError: a run directory is missing or damaged (the file is named).

    Example:
        >>> result = ensemble(["runs/a", "runs/b"], out="runs/ab", method="stack")  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    from metamodal.evaluate.episode_plans import sampled_episodes
    from metamodal.evaluate.shape import resolve_eval_shape
    from metamodal.model.ensemble import check_joint_steps
    from metamodal.runs import load_run, load_run_data
    from metamodal.runs.directory import check_not_inside_run, members_with_test_time
    from metamodal.runs.ensemble import (
        check_ensemble_target,
        check_members,
        fit_ensemble,
        union_preprocessor,
        write_ensemble,
    )

    s = resolve(EnsembleSettings, settings,
                {"runs": [str(r) for r in runs] if runs is not None else None, **options},
                verb="ensemble")
    if len(s.runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(s.runs)}",
                          column="runs", fix="give two or more run directories")
    if not s.out:
        raise ConfigError("no output directory", column="out",
                          fix="give out= (--out DIR), the ensemble run directory to write")
    check_not_inside_run(s.out, "out")
    check_ensemble_target(s.out, s.runs, overwrite=s.overwrite)
    loaded = [load_run(path) for path in s.runs]
    check_members(loaded)
    # the settings given go to each member that can honour them (the others keep theirs)
    loaded = members_with_test_time(loaded, test_time_overrides(s))
    if s.joint_transduction:
        check_joint_steps([run.model for run in loaded], [str(run.path) for run in loaded])
    preprocessor = union_preprocessor(loaded)
    try:
        prepared = load_run_data(dataclasses.replace(loaded[0], preprocessor=preprocessor),
                                 progress=s.progress)
    except RunError as error:  # its fix offers --data, which ensemble has not
        raise RunError(f"the first run's dataset is needed to fit the ensemble: "
                       f"{error.message}", file=error.file, column=error.column,
                       fix="move the training dataset back to where train.data says") from None
    classes = prepared.classes("val")
    if len(classes) < 2:
        raise ConfigError(f"the runs' validation split has {len(classes)} class(es); fitting "
                          "needs episodes of at least 2", file=Path(s.runs[0]) / "config.toml",
                          column="split.val",
                          fix="train the members on a split with validation classes")
    ways, shots, queries = resolve_eval_shape(prepared.store, classes, s.ways, s.shots,
                                              s.queries, file=prepared.dataset.root, split="val")
    plan = sampled_episodes(prepared.store, classes, ways, shots, queries, s.seed,
                            s.episodes_count)
    validation = {"split": "val", "ways": ways, "shots": shots, "queries": queries,
                  "episodes": s.episodes_count, "seed": s.seed}
    fitted = fit_ensemble(loaded, prepared.store, plan, s.method, validation=validation,
                          joint_transduction=s.joint_transduction)
    write_ensemble(s.out, loaded, fitted, preprocessor, overwrite=s.overwrite)
    result = EnsembleResult(out=str(s.out), method=s.method, members=list(s.runs),
                            names=[run.name for run in loaded],
                            temperatures=fitted.temperatures, weights=fitted.weights,
                            member_accuracy=fitted.member_accuracy, accuracy=fitted.accuracy,
                            validation=validation, joint_transduction=s.joint_transduction)
    write_json(s.json, result)
    return result
