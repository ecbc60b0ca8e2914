"""Ensembles of trained runs: check that runs can be combined, fit the combination on
validation episodes, and write the ensemble's run directory.

Two methods (`metamodal.model.ensemble.METHODS`), both fitted once, on episodes drawn from the
runs' shared **validation** classes (never the test classes):

- ``mean``: each member's logits are divided by a temperature fitted to minimise its own
  negative log-likelihood on the validation queries (temperature scaling, Guo et al. 2017,
  "On Calibration of Modern Neural Networks"); the calibrated probabilities are averaged
  with equal weights.
- ``stack``: the same temperatures, then one non-negative weight per member fitted to
  minimise the negative log-likelihood of the logarithmic opinion pool
  ``p(y) ∝ prod_m p_m(y)^w_m`` on the same queries (stacked generalisation, Wolpert 1992,
  "Stacked Generalization"). A weight near zero drops a member; weights above one sharpen.

The result is a run directory (`metamodal.runs.directory.write_ensemble_files`) that
``eval``, ``predict``, ``report`` and ``serve`` load like any run.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from metamodal.data.batch import TensorStore
from metamodal.data.preprocess import Preprocessor
from metamodal.data.schema import check_outside_dataset
from metamodal.encoders.features import preprocessor_from_state
from metamodal.errors import ConfigError
from metamodal.evaluate.episode_plans import EpisodePlan
from metamodal.evaluate.protocol import episode_logits
from metamodal.evaluate.stats import mean_ci95
from metamodal.io import (
    followed,
    make_directory,
    publish_directory,
    replace_directory,
    resolved,
)
from metamodal.model.ensemble import (
    METHODS,
    EnsembleModel,
    check_joint_steps,
    combine_log_probs,
    shown_any,
    votes,
)
from metamodal.runs.directory import (
    CONFIG_FILE,
    MEMBERS_DIR,
    PREPROCESSOR_FILE,
    Run,
    write_ensemble_files,
    write_member_config,
)
from metamodal.runs.weights import WEIGHTS_FILE, save_weights
from metamodal.train.alignment import ALIGNMENT_FILE
from metamodal.train.logger import METRICS_FILE

MEMBER_FILES = (PREPROCESSOR_FILE, METRICS_FILE, ALIGNMENT_FILE)
"""The files of a member run copied into the ensemble beside its ``config.toml``
(`write_member_config`): what rebuilds its model, its learning curve and its alignment; not
its checkpoint, TensorBoard events or report. Its weights go into the ensemble's own
``model.safetensors``."""


def check_members(runs: Sequence[Run], *, joint_transduction: bool = False) -> None:
    """Raise a `ConfigError` unless ``runs`` can be combined: at least two, none an ensemble,
    the same class split (hence the same validation and test classes), every modality that
    two runs share decoded the same way (the same loader options and fitted state), and,
    with ``joint_transduction``, a member with prototypes that takes transduction steps.

    Example:
        >>> check_members([load_run("runs/a"), load_run("runs/b")])  # doctest: +SKIP
    """
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(runs)}", column="runs",
                          fix="give two or more run directories")
    for run in runs:
        if run.ensemble is not None:
            raise ConfigError(f"{run.path} is itself an ensemble", column="runs",
                              fix="combine the trained runs it was made of directly")
    first = runs[0]
    for run in runs[1:]:
        for part in ("val", "test", "train"):
            ours, theirs = set(first.split.of(part)), set(run.split.of(part))
            if ours != theirs:
                only = sorted(ours ^ theirs)[:5]
                raise ConfigError(
                    f"{first.path} and {run.path} have different {part} classes (e.g. "
                    f"{', '.join(map(repr, only))}): their predictions are over different "
                    "label spaces", column="runs",
                    fix="combine runs trained on the same dataset with the same class split "
                    "(the same data and --seed, or the dataset's splits.toml)")
    seen: dict[str, tuple[Run, Any]] = {}
    for run in runs:
        state = run.preprocessor.state_dict()
        for name in run.preprocessor.modalities:
            mine = (state["specs"][name], state["loaders"][name])
            if name not in seen:
                seen[name] = (run, mine)
                continue
            other, theirs = seen[name]
            if mine != theirs:
                raise ConfigError(
                    f"{other.path} and {run.path} decode modality {name!r} differently "
                    f"({_difference(theirs, mine)})", column=f"runs.{name}",
                    fix=f"combine runs whose {name!r} preprocessing is the same (the same "
                    "--preprocess options, encoder and training classes), or retrain one")
    if joint_transduction:
        check_joint_steps([run.model for run in runs], [str(run.path) for run in runs])


def _difference(a: Any, b: Any, path: str = "") -> str:
    """The first key where two nested values differ (a loader's ``options`` before its
    fitted statistics), with both values (shortened)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=lambda k: (k != "options", k)):
            if a.get(key) != b.get(key):
                return _difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                label = ("spec", "loader")[k] if isinstance(a, tuple) and len(a) == 2 else k
                return _difference(x, y, f"{path}.{label}" if path else str(label))
    short = [repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..." for v in (a, b)]
    return f"{path or 'value'}: {short[0]} vs {short[1]}"


def union_preprocessor(runs: Sequence[Run]) -> Preprocessor:
    """A fitted preprocessor that decodes every modality of ``runs`` (in first-seen order),
    each exactly as the run that uses it does (`check_members` first)."""
    states = [run.preprocessor.state_dict() for run in runs]
    union: dict[str, Any] = {**states[0], "modalities": [], "specs": {}, "loaders": {}}
    for state in states:
        for name in state["modalities"]:
            if name not in union["modalities"]:
                union["modalities"].append(name)
                union["specs"][name] = state["specs"][name]
                union["loaders"][name] = state["loaders"][name]
    return preprocessor_from_state(union)


LOG_TEMPERATURE = (-5.0, 5.0)
"""The range of a fitted member's log-temperature."""
LOG_WEIGHT = (-8.0, 4.0)
"""The range of a fitted stack weight's logarithm."""


def fit_temperature(logits: Tensor, labels: Tensor, *, steps: int = 100) -> float:
    """The temperature ``T > 0`` minimising the mean negative log-likelihood of
    ``softmax(logits / T)`` (Guo et al. 2017).

    Args:
        logits: ``[N, ways]`` validation logits.
        labels: long ``[N]`` true classes.
        steps: L-BFGS iterations.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
        >>> fit_temperature(logits, torch.tensor([0, 1, 1, 0])) > 1  # over-confident
        True
    """
    logits = logits.detach().float()
    log_t = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.clamp(*LOG_TEMPERATURE).exp(),
                                                 labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return float(log_t.detach().clamp(*LOG_TEMPERATURE).exp())


def fit_stack_weights(logits: Tensor, available: Tensor, labels: Tensor, temperatures: Tensor,
                      *, steps: int = 200) -> Tensor:
    """Non-negative member weights minimising the validation negative log-likelihood of the
    ``stack`` combination (`combine_log_probs`), started from equal weights of one.

    Args:
        logits: ``[M, N, ways]`` the members' validation logits.
        available: bool ``[M, N]`` which member saw which query.
        labels: long ``[N]`` true classes.
        temperatures: ``[M]`` the members' fitted temperatures.
        steps: L-BFGS iterations.

    Returns:
        ``[M]`` the weights (``exp`` of the fitted log-weights, clamped to ``[e^-8, e^4]``).
    """
    logits, temperatures = logits.detach().float(), temperatures.detach().float()
    log_w = torch.zeros(logits.shape[0], requires_grad=True)
    optimiser = torch.optim.LBFGS([log_w], lr=0.5, max_iter=steps,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        combined = combine_log_probs(logits, available, temperatures,
                                     log_w.clamp(*LOG_WEIGHT).exp(), "stack")
        loss = torch.nn.functional.nll_loss(combined, labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return log_w.detach().clamp(*LOG_WEIGHT).exp()


@dataclass
class FittedEnsemble:
    """The combination fitted on validation episodes, and what it scored there.

    Args:
        method: ``mean`` or ``stack``.
        temperatures: each member's temperature.
        weights: each member's weight.
        member_accuracy: each member's mean accuracy on the validation episodes, with its
            95% interval (``[accuracy, ci95]``).
        accuracy: the ensemble's mean accuracy on the same episodes (the episodes its
            temperatures and weights were fitted on: an optimistic figure; evaluate on the
            test split for an honest one), with its interval.
        validation: the episodes' shape: ``split``, ``ways``, ``shots``, ``queries``,
            ``episodes``, ``seed``.
        joint_transduction: the members' transduction is joint
            (`metamodal.model.EnsembleModel.refine_jointly`; ``accuracy`` was measured so).
    """

    method: str
    temperatures: list[float]
    weights: list[float]
    member_accuracy: list[list[float]]
    accuracy: list[float]
    validation: dict[str, Any] = field(default_factory=dict)
    joint_transduction: bool = False


def member_validation_logits(runs: Sequence[Run], store: TensorStore,
                             plan: EpisodePlan) -> tuple[Tensor, Tensor, Tensor]:
    """Every member's logits of the plan's queries, as `metamodal.model.EnsembleModel` sees
    them (a member sees only its own modalities; one that sees none of them in a query, or in
    that episode's support, is unavailable there).

    Returns:
        ``(logits [M, N, ways], available bool [M, N], labels [N])`` over the ``N`` query
        items of all episodes (which must share ``ways``).
    """
    if len(set(plan.ways)) != 1:
        raise ConfigError("fitting an ensemble needs episodes of one number of ways",
                          column="ways", fix="give ways explicitly")
    rows, seen = [], []
    for run in runs:
        own = {name: store.modalities[name] for name in run.model.modalities
               if name in store.modalities}
        shown = shown_any(own, len(store), "cpu")  # [len(store)]
        logits = torch.cat([x.float().cpu() for x in episode_logits(run.model, store, plan)])
        available = torch.cat([shown[query] & bool(shown[support].any())
                               for support, query in zip(plan.support, plan.query, strict=True)])
        rows.append(votes(logits, available))
        seen.append(available)
    return torch.stack(rows), torch.stack(seen), torch.cat(plan.query_labels)


def _episode_accuracy(predictions: Tensor, labels: Tensor, plan: EpisodePlan) -> list[float]:
    sizes = [q.numel() for q in plan.query_labels]
    hits = (predictions == labels).double().split(sizes)
    return [float(h.mean()) for h in hits]


def fit_ensemble(runs: Sequence[Run], store: TensorStore, plan: EpisodePlan,
                 method: Literal["mean", "stack"], *,
                 validation: dict[str, Any] | None = None,
                 joint_transduction: bool = False) -> FittedEnsemble:
    """Fit the ensemble of ``runs`` on the validation episodes ``plan`` of ``store``.

    The temperatures and weights are fitted on each member's own logits (each with its own
    transduction); with ``joint_transduction`` the ensemble's accuracy on the episodes is
    measured with the members' steps taken jointly.

    Args:
        runs: the member runs (`check_members` passed, with ``joint_transduction``).
        store: the decoded samples (by `union_preprocessor`).
        plan: episodes drawn from the runs' **validation** classes.
        method: ``mean`` or ``stack``.
        validation: the episodes' description, recorded in the result.
        joint_transduction: see `metamodal.model.EnsembleModel.refine_jointly`.

    Raises:
        ConfigError: an unknown ``method``; a member that sees none of its modalities in the
            episodes.

    Example:
        >>> val = prepared.classes("val")  # doctest: +SKIP
        >>> plan = sampled_episodes(store, val, 5, 1, 15, 0, 300)  # doctest: +SKIP
        >>> fit_ensemble(runs, store, plan, "stack").weights  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ConfigError(f"unknown ensemble method {method!r}", column="method",
                          fix=f"use one of: {', '.join(METHODS)}")
    logits, available, labels = member_validation_logits(runs, store, plan)
    for m, run in enumerate(runs):
        if not bool(available[m].any()):
            raise ConfigError(
                f"{run.path} sees none of its modalities ({', '.join(run.model.modalities)}) "
                "in the validation episodes: its temperature cannot be fitted", column="runs",
                fix="combine runs whose modalities the validation samples carry")
    temperatures = torch.tensor([fit_temperature(logits[m][available[m]], labels[available[m]])
                                 for m in range(len(runs))])
    _warn_at_bounds(runs, temperatures, LOG_TEMPERATURE, "temperature")
    if method == "stack":
        weights = fit_stack_weights(logits, available, labels, temperatures)
        _warn_at_bounds(runs, weights, LOG_WEIGHT, "weight")
    else:
        weights = torch.ones(len(runs))
    if joint_transduction:
        model = EnsembleModel([run.model for run in runs], method, temperatures, weights)
        model.joint_transduction = True
        combined = torch.cat([x.float().cpu() for x in episode_logits(model, store, plan)])
    else:
        combined = combine_log_probs(logits, available, temperatures, weights, method)
    members = []
    for m in range(len(runs)):
        accuracy, half = mean_ci95(_episode_accuracy(logits[m].argmax(-1), labels, plan))
        members.append([accuracy, half])
    accuracy, half = mean_ci95(_episode_accuracy(combined.argmax(-1), labels, plan))
    return FittedEnsemble(method, [round(float(t), 6) for t in temperatures],
                          [round(float(w), 6) for w in weights], members, [accuracy, half],
                          dict(validation or {}), joint_transduction)


def _warn_at_bounds(runs: Sequence[Run], values: Tensor, log_range: tuple[float, float],
                    what: str) -> None:
    """Warn of each member whose fitted ``what`` stopped at a bound of ``log_range``: the
    validation episodes did not pin it down (too few, or too easy for that member)."""
    for run, value in zip(runs, values.tolist(), strict=True):
        if any(math.isclose(math.log(value), bound, abs_tol=1e-4) for bound in log_range):
            warnings.warn(f"{run.path}: its fitted {what} {value:.4g} is at the bound "
                          f"(e^{log_range[0]:g} .. e^{log_range[1]:g}) of what is fitted; the "
                          "validation episodes do not pin it down: draw more of them "
                          "(--episodes-count) or more queries (--queries)", stacklevel=3)


def check_ensemble_target(out: str | Path, members: Sequence[str | Path], *,
                          overwrite: bool = False) -> None:
    """Refuse an ensemble of a run with itself, and an ``out`` that is a member, lies in a
    dataset directory, holds a run (without ``overwrite``), or is anything else but a missing
    or empty directory.

    Raises:
        ConfigError: keyed ``runs`` or ``out``.
    """
    out = resolved(out, "out")
    seen: dict[Path, str | Path] = {}
    for member in members:
        place = resolved(member, "runs")
        if place in seen:
            raise ConfigError(f"{member} and {seen[place]} are the same run", column="runs",
                              fix="give each run once: an ensemble of a run with itself is "
                              "that run")
        seen[place] = member
        if place == out:
            raise ConfigError(f"--out {out} is one of the member runs", column="out",
                              fix="write the ensemble to a new directory")
    check_outside_dataset(out, "out")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / CONFIG_FILE).is_file():
        raise ConfigError(f"{out} exists and is not a run directory (no {CONFIG_FILE}); only "
                          "a run is ever replaced", column="out",
                          fix="choose a new or empty directory")
    if not overwrite:
        raise ConfigError(f"{out} already holds a run", column="out",
                          fix="choose a new directory, or pass overwrite=True (--overwrite) "
                          "to replace it")


def write_ensemble(out: str | Path, runs: Sequence[Run], fitted: FittedEnsemble,
                   preprocessor: Preprocessor, *, overwrite: bool = False) -> Path:
    """Write the ensemble run directory ``out``: the members' files copied into
    ``members/N``, ``config.toml`` with the ``[ensemble]`` table, ``preprocessor.json`` and
    ``model.safetensors`` (every member's weights). The
    directory is assembled beside ``out`` and renamed into place, so a failure leaves no
    half-written run; an old run at ``out`` (``overwrite``) is removed only once the new one
    is in place (`metamodal.io.replace_directory`).

    Raises:
        ConfigError: see `check_ensemble_target`.
    """
    out = followed(out)  # an ensemble behind a link is replaced there, the link kept
    check_ensemble_target(out, [run.path for run in runs], overwrite=overwrite)
    make_directory(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for k, run in enumerate(runs):
            target = staging / MEMBERS_DIR / str(k)
            target.mkdir(parents=True)
            write_member_config(target, run)
            for name in MEMBER_FILES:
                if (Path(run.path) / name).is_file():
                    shutil.copy2(Path(run.path) / name, target / name)
        table = {
            "method": fitted.method,
            "members": [f"{MEMBERS_DIR}/{k}" for k in range(len(runs))],
            "sources": [str(run.path) for run in runs],
            "names": [run.name for run in runs],
            "temperatures": fitted.temperatures,
            "weights": fitted.weights,
            "joint_transduction": fitted.joint_transduction,
            "validation": {**fitted.validation,
                           "member_accuracy": [a for a, _ in fitted.member_accuracy],
                           "member_ci95": [h for _, h in fitted.member_accuracy],
                           "accuracy": fitted.accuracy[0], "ci95": fitted.accuracy[1]},
        }
        model = EnsembleModel([run.model for run in runs], fitted.method,  # type: ignore[arg-type]
                              fitted.temperatures, fitted.weights)
        save_weights(staging / WEIGHTS_FILE, model)
        write_ensemble_files(staging, train=runs[0].config.to_dict(), ensemble=table,
                             split=runs[0].split, schema=runs[0].schema,
                             preprocessor=preprocessor)
        if out.exists():
            replace_directory(staging, out)
        else:
            publish_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
