"""The verb that searches over training settings: `search` (``metamodal search``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.fields import resolve
from metamodal.api.settings import SearchSettings
from metamodal.config import TrainConfig, load_config
from metamodal.errors import ConfigError, RunError


@dataclass
class SearchResult:
    """What a search found.

    Args:
        study: the study's name.
        trials: every trial: ``number``, ``state`` (complete, pruned, fail, running),
            ``score`` (validation accuracy on the fixed episodes), ``ci95``, ``values``,
            ``error`` (why a trial failed) and ``run``.
        best: the best completed trial (as in ``trials``), or None.
        importances: setting -> importance (fANOVA, summing to 1), when computable.
        files: what was written: ``trials`` (csv), ``best`` (toml), ``report`` (html).
    """

    study: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    importances: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """One line per trial, the best marked, then where the outputs are."""
        lines = [f"study {self.study}: {len(self.trials)} trial(s)",
                 f"{'trial':>5}  {'state':<8}  {'score':>13}  values"]
        best = self.best["number"] if self.best else None
        for t in self.trials:
            score = "" if t["score"] is None else (
                f"{t['score']:.4f}" + (f" ± {t['ci95']:.3f}" if t["ci95"] is not None else ""))
            note = t["error"] if t["state"] == "fail" else t["values"]
            lines.append(f"{t['number']:>5}  {t['state']:<8}  {score:>13}  {note}"
                         + ("  <- best" if t["number"] == best else ""))
        if self.importances:
            lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                    self.importances.items()))
        lines += [f"{role}: {path}" for role, path in self.files.items()]
        return "\n".join(lines)


def search(data: str | Path | None = None, settings: SearchSettings | None = None,
           **options: Any) -> SearchResult:
    """Search over training settings with Optuna (``metamodal search``): each trial trains a
    run with `metamodal.api.train` and is scored on fixed validation episodes with
    `metamodal.api.evaluate`; see `metamodal.search.study`.

    Args:
        data: the dataset directory.
        settings: a `SearchSettings`; ``options`` holds its fields and any key of
            `metamodal.config.TrainConfig` (``steps``, ``ways``, ...), fixed for every trial.

    Raises:
        ConfigError: a bad space (named key), storage URL, or setting.
        RunError: a corrupt study file.

    Example:
        >>> search("data", space="space.toml", trials=20, steps=200,
        ...        out="search").best  # doctest: +SKIP
    """
    import optuna

    from metamodal.api.training import merged
    from metamodal.search.report import write_outputs
    from metamodal.search.space import SearchSpace
    from metamodal.search.study import (
        fixed_episodes,
        make_pruner,
        make_sampler,
        objective,
        open_storage,
    )

    names = {f.name for f in dataclasses.fields(SearchSettings)}
    own = {k: options.pop(k) for k in list(options) if k in names}
    s = resolve(SearchSettings, settings, own, verb="search")
    for key, fix in (("space", "--space SPACE.toml"), ("out", "--out DIR")):
        if not getattr(s, key):
            raise ConfigError(f"no {key} given", column=key, fix=f"pass {fix}")
    base = merged(load_config(s.config) if s.config else TrainConfig(),
                  {**options, **({"data": str(data)} if data else {})})
    if not base.data:
        raise ConfigError("no dataset given", column="data", fix="pass DATA")
    base = base.updated({"data": str(Path(base.data).resolve())})
    space = SearchSpace.from_toml(s.space, base)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(s.storage, out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            storage=storage, study_name=s.study, direction="maximize", load_if_exists=True,
            sampler=make_sampler(s.sampler, space, s.sampler_seed),
            pruner=make_pruner(s.pruner, base.steps, base.val_every))
    except Exception as error:  # the storage's own errors: locked, corrupt, wrong schema
        raise RunError(f"the study cannot be opened ({type(error).__name__}: {error})",
                       column="storage", fix="give another --storage or --study") from None
    episodes = fixed_episodes(out, base.data, base.seed, ways=s.objective_ways,
                              shots=s.objective_shots, queries=s.objective_queries,
                              count=s.objective_episodes)
    remaining = s.trials - len(study.trials)
    if remaining > 0:
        study.optimize(objective(space, base, out, episodes), n_trials=remaining,
                       catch=(Exception,),
                       callbacks=[optuna.study.MaxTrialsCallback(s.trials, states=None)])
    summary = write_outputs(study, out)
    rows = [dataclasses.asdict(r) for r in summary.rows]
    best = dataclasses.asdict(summary.best) if summary.best else None
    return SearchResult(summary.study, rows, best, summary.importances, summary.files)
