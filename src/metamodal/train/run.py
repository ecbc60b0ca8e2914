"""The run directory contract: write what a trained model needs, and load it back.

A run directory holds ``config.toml`` (training config, model spec, class split, dataset
schema), ``preprocessor.json`` (fitted loaders: vocabulary, normalisation statistics),
``model.safetensors``, ``metrics.jsonl``, ``tensorboard/`` and ``report/``. It is all that
``eval``, ``predict`` and `FewShotClassifier.load` need.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from metamodal import __version__
from metamodal.data.preprocess import Preprocessor
from metamodal.data.schema import DatasetSchema
from metamodal.data.splits import ClassSplit
from metamodal.encoders.features import preprocessor_from_state
from metamodal.errors import ConfigError, RunError
from metamodal.io import atomic_write_json, atomic_write_text
from metamodal.learners.model import FewShotModel
from metamodal.train.checkpoint import WEIGHTS_FILE, load_weights
from metamodal.train.config import TrainConfig

CONFIG_FILE = "config.toml"
PREPROCESSOR_FILE = "preprocessor.json"


@dataclass
class Run:
    """A trained run loaded from its directory.

    Args:
        path: the run directory.
        config: the training configuration.
        model: the model with its trained weights, in eval mode.
        preprocessor: the fitted preprocessor that decodes new samples as in training.
        split: the class split used in training.
        schema: the training dataset's schema.
    """

    path: Path
    config: TrainConfig
    model: FewShotModel
    preprocessor: Preprocessor
    split: ClassSplit
    schema: DatasetSchema


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def write_run_files(
    run_dir: str | Path,
    *,
    config: TrainConfig,
    model_spec: dict[str, Any],
    split: ClassSplit,
    schema: DatasetSchema,
    preprocessor: Preprocessor,
    alignment: dict[str, Any] | None = None,
) -> None:
    """Write ``config.toml`` and ``preprocessor.json`` of a run (atomically); ``alignment``
    (the options of a trained `metamodal.mapping.Aligner`) goes to its ``[alignment]`` table."""
    run_dir = Path(run_dir)
    document = {
        "metamodal_version": __version__,
        "train": config.to_dict(),
        "model": model_spec,
        "split": split.to_dict(),
        "dataset": schema.to_dict(),
    }
    if alignment:
        document["alignment"] = dict(alignment)
    atomic_write_text(run_dir / CONFIG_FILE, tomli_w.dumps(_drop_none(document)))
    atomic_write_json(run_dir / PREPROCESSOR_FILE, preprocessor.state_dict())


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.toml`` of a run; `RunError` when missing or corrupt."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError("run directory not found", file=run_dir,
                       fix="pass the --out directory of a finished `metamodal train`")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError("not a run directory: config.toml is missing", file=path,
                       fix="pass the --out directory of a finished `metamodal train`")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
        for key in ("train", "model", "split", "dataset"):
            document[key]  # noqa: B018 - presence check
    except (tomllib.TOMLDecodeError, KeyError, UnicodeDecodeError) as error:
        raise RunError(f"config.toml is corrupt ({error})", file=path,
                       fix="re-train the run, or restore its config.toml") from None
    return document


def load_run(run_dir: str | Path, *, device: str = "cpu") -> Run:
    """Load a run directory written by `metamodal.train.Trainer`.

    Raises `RunError` naming the file when the directory, its config, preprocessor or weights
    are missing or corrupt.

    Example:
        >>> run = load_run("runs/demo")  # doctest: +SKIP
        >>> run.model.modalities  # doctest: +SKIP
        ['image', 'caption']
    """
    run_dir = Path(run_dir)
    document = read_run_config(run_dir)
    prep_path = run_dir / PREPROCESSOR_FILE
    try:
        preprocessor = preprocessor_from_state(json.loads(prep_path.read_text()))
    except FileNotFoundError:
        raise RunError("preprocessor.json is missing", file=prep_path,
                       fix="re-train the run; the file holds the fitted vocabulary and "
                       "normalisation statistics") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise RunError(f"preprocessor.json is corrupt ({error})", file=prep_path,
                       fix="re-train the run") from None
    try:
        model = FewShotModel.build(**document["model"])
    except ConfigError as error:
        raise RunError(f"config.toml describes a model that cannot be built: {error.message}",
                       file=run_dir / CONFIG_FILE, column=error.column,
                       fix=error.fix or "restore the run's config.toml") from None
    load_weights(run_dir / WEIGHTS_FILE, model)
    model.to(device).eval()
    return Run(
        path=run_dir,
        config=TrainConfig.from_dict(document["train"], source=str(run_dir / CONFIG_FILE)),
        model=model,
        preprocessor=preprocessor,
        split=ClassSplit.from_dict(document["split"]),
        schema=DatasetSchema.from_dict(document["dataset"]),
    )


def load_run_data(run: Run, data: str | Path | None = None, *, cache: bool = True):
    """Decode the samples a run is evaluated on, exactly as in training.

    Args:
        run: a loaded run.
        data: another dataset directory; by default the run's own dataset and class split.
        cache: use the dataset's on-disk cache of decoded tensors.

    Returns:
        `metamodal.train.data.PreparedData` whose ``split`` is the run's split for its own
        dataset, or the other dataset's own split (``splits.toml`` or seeded).
    """
    from metamodal.train.data import prepare_data

    if data is None:
        return prepare_data(run.config.data, preprocessor=run.preprocessor, split=run.split,
                            cache=cache)
    return prepare_data(data, seed=run.config.seed, preprocessor=run.preprocessor, cache=cache)
