"""Multi-task learning: several label columns, a learner per task, weighted losses."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from metamodal import api
from metamodal.config import TrainConfig
from metamodal.data.dataset import load_dataset
from metamodal.data.inspect import inspect_dataset
from metamodal.data.schema import DatasetSchema
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, DatasetError
from metamodal.runs.weights import load_weights
from metamodal.train.multitask import TASKS_FILE, task_view
from metamodal.train.trainer import Trainer

MODALITY = {"note": {"kind": "text", "column": "note"}}
TINY = dict(steps=3, ways=2, shots=1, queries=1, dim=8, val_every=0, device="cpu", cache=False,
            checkpoint_every=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("mt") / "data", classes=12, per_class=3,
                          image_size=8)


# --- the schema -------------------------------------------------------------------------


def test_labels_parse_and_round_trip() -> None:
    schema = DatasetSchema.from_dict({"name": "t", "labels": ["y", "z"], "modalities": MODALITY})
    assert (schema.label, schema.label_columns) == ("y", ["y", "z"])
    assert DatasetSchema.from_dict(schema.to_dict()) == schema
    both = DatasetSchema.from_dict({"name": "t", "label": "y", "labels": ["y", "z"],
                                   "modalities": MODALITY})
    assert both == schema
    single = DatasetSchema.from_dict({"label": "y", "modalities": MODALITY})
    assert single.label_columns == ["y"] and "labels" not in single.to_dict()


@pytest.mark.parametrize("labels, words", [
    ([], "non-empty list"),
    ("y", "non-empty list"),
    (["y", "y"], "listed twice"),
    (["z", "y"], "must start with the `label`"),
    (["y", ""], "non-empty column names"),
])
def test_bad_labels_name_the_key(labels: object, words: str) -> None:
    with pytest.raises(DatasetError) as caught:
        DatasetSchema.from_dict({"label": "y", "labels": labels, "modalities": MODALITY},
                                file="ds/dataset.toml")
    assert caught.value.column == "labels" and caught.value.file == "ds/dataset.toml"
    assert words in caught.value.message


def test_a_label_column_cannot_be_a_modality() -> None:
    with pytest.raises(DatasetError, match="label column 'note'"):
        DatasetSchema.from_dict({"labels": ["y", "note"], "modalities": MODALITY})


def test_a_further_label_the_table_lacks_is_dropped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text(
        'labels = ["y", "genus"]\n[modalities.note]\nkind = "text"\ncolumn = "note"\n')
    (tmp_path / "samples.csv").write_text("id,y,note\na,P,hi\nb,Q,ho\n")
    with pytest.warns(UserWarning, match="'genus'.*lacks"):
        dataset = load_dataset(tmp_path)
    assert dataset.schema.label_columns == ["y"] and dataset.labels == ["P", "Q"]
    report = inspect_dataset(tmp_path)
    assert not any(p.column == "labels" for p in report.problems)
    assert any("'genus'" in w for w in report.warnings)


def test_inspect_reports_each_label_column(data: Path) -> None:
    report = inspect_dataset(data)  # tiny: too few classes for default episodes, else fine
    assert not [p for p in report.problems if p.column in ("labels", "genus")]
    assert list(report.labels) == ["species", "genus"]
    assert report.labels["species"]["classes"] == 12
    assert 0 < report.labels["genus"]["classes"] < 12
    assert "label genus:" in report.table()


# --- make-synthetic ---------------------------------------------------------------------

# sha256 of samples.csv without the genus column, as written before the column was added
# (classes=12, per_class=3, image_size=8, seed 0): the other columns must not change.
BEFORE_GENUS = "98fad2672cc924156c9eb4bed4fee9c06ee8374bb12b6d285952b13bfdf8771f"


def _without(path: Path, column: str) -> str:
    rows = list(csv.reader(path.open(encoding="utf-8")))
    drop = rows[0].index(column)
    return "\n".join(",".join(r[:drop] + r[drop + 1:]) for r in rows)


def test_synthetic_writes_genus_without_changing_other_columns(data: Path) -> None:
    digest = hashlib.sha256(_without(data / "samples.csv", "genus").encode()).hexdigest()
    assert digest == BEFORE_GENUS
    dataset = load_dataset(data)
    assert dataset.schema.label_columns == ["species", "genus"]
    genus, family = dataset.label_values("genus"), dataset.groups
    assert genus is not None and family is not None
    for species in dataset.classes:  # one genus per species, nested in its family
        rows = [i for i, s in enumerate(dataset.labels) if s == species]
        assert len({genus[i] for i in rows}) == 1
        assert genus[rows[0]].split("-")[1] == family[rows[0]].split("-")[1]


# --- training ---------------------------------------------------------------------------


def _fit(data: Path, out: Path, **options: object) -> Trainer:
    trainer = Trainer(TrainConfig(data=str(data), **TINY, **options), out, progress=False)
    trainer.fit()
    return trainer


def _state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def test_task_view_draws_the_split_samples_only(data: Path) -> None:
    from metamodal.runs.prepared import prepare_data

    prepared = prepare_data(data, cache=False)
    store, genera = task_view(prepared.store, prepared.dataset, "genus", prepared.split.test)
    test_genera = {g for s, g in zip(prepared.store.labels, prepared.dataset.label_values(
        "genus"), strict=True) if s in prepared.split.test}
    assert genera == sorted(test_genera)
    train_store, train_genera = task_view(prepared.store, prepared.dataset, "genus",
                                          prepared.split.train)
    assert not set(genera) & set(train_genera)  # genus nested in family: disjoint splits


def test_two_tasks_train_and_log_variances_move(data: Path, tmp_path: Path) -> None:
    trainer = _fit(data, tmp_path / "u", tasks=["species", "genus"],
                   task_weighting="uncertainty")
    assert trainer.heads is not None and trainer.heads.log_vars is not None
    assert trainer.heads.log_vars.abs().min() > 0  # started at 0
    assert "train_loss_genus" in trainer.task_values
    assert (tmp_path / "u" / TASKS_FILE).exists()
    logged = [json.loads(line) for line in (tmp_path / "u" / "metrics.jsonl").open()]
    assert any("log_var_genus" in record for record in logged)


def test_zero_weight_leaves_the_task_out(data: Path, tmp_path: Path) -> None:
    single = _state(_fit(data, tmp_path / "single").out)
    zero = _state(_fit(data, tmp_path / "zero", tasks=["species", "genus"],
                       task_weights=[1.0, 0.0]).out)
    both = _state(_fit(data, tmp_path / "both", tasks=["species", "genus"],
                       task_weights=[1.0, 1.0]).out)
    assert all(torch.equal(single[k], zero[k]) for k in single)
    assert not all(torch.equal(single[k], both[k]) for k in single)


def test_resume_is_bit_identical(data: Path, tmp_path: Path) -> None:
    options = dict(tasks=["species", "genus"], task_weighting="uncertainty")
    whole = _fit(data, tmp_path / "whole", **options)
    cut = Trainer(TrainConfig(data=str(data), **{**TINY, "steps": 3}, **options),
                  tmp_path / "cut", progress=False,
                  callbacks=[lambda step, _: _stop(step)])
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = Trainer(TrainConfig(data=str(data), **TINY, **options), tmp_path / "cut",
                      progress=False)
    resumed.fit(resume=True)
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(whole.heads.log_vars, resumed.heads.log_vars)


def _stop(step: int) -> None:
    if step == 2:
        raise KeyboardInterrupt


def test_task_settings_are_checked(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _fit(data, tmp_path / "a", tasks=["species", "colour"])
    assert caught.value.column == "tasks"
    with pytest.raises(ConfigError) as caught:
        _fit(data, tmp_path / "b", tasks=["genus", "species"])
    assert caught.value.column == "tasks"
    for weights in ([1.0], [1.0, 1e308], [1.0, -1.0], [0.0, 1.0], [1.0, math.nan]):
        with pytest.raises(ConfigError) as caught:  # 1e308 diverged, the error blamed lr
            TrainConfig(tasks=["species", "genus"], task_weights=weights).validate()
        assert caught.value.column == "task_weights"
    with pytest.raises(ConfigError) as caught:
        TrainConfig(task_weighting="soft").validate()
    assert caught.value.column == "task_weighting"


# --- evaluation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    Trainer(TrainConfig(data=str(data), **TINY, tasks=["species", "genus"]), out,
            progress=False).fit()
    return out


EVAL = dict(ways=2, shots=1, queries=1, episodes_count=30, progress=False, baseline=False)


def test_evaluation_reports_both_tasks(run: Path, tmp_path: Path) -> None:
    report = api.evaluate(run, json=str(tmp_path / "r.json"), **EVAL)
    out = json.loads((tmp_path / "r.json").read_text())
    for key in ("accuracy", "ci95", "episodes", "ways", "shots"):
        assert key in out and key in out["tasks"]["genus"]
    assert out["task"] == "species" and out["episodes"] == 30
    # each task's chance: a further task's episodes may hold fewer classes than the main's
    assert out["tasks"]["genus"]["chance"] == 1 / out["tasks"]["genus"]["ways"]
    chance = next(line for line in report.table().splitlines() if line.startswith("chance"))
    assert f"[genus] {100 / out['tasks']['genus']['ways']:.1f}%" in chance
    genus = api.evaluate(run, task="genus", **EVAL)
    assert genus.task == "genus" and genus.tasks is None
    assert genus.result.episode_digest == report.tasks["genus"].episode_digest
    assert genus.result.accuracies == report.tasks["genus"].accuracies
    assert report.result.episode_digest != genus.result.episode_digest
    species = api.evaluate(run, task="species", **EVAL)
    assert species.result.accuracies == report.result.accuracies and species.tasks is None
    with pytest.raises(ConfigError) as caught:
        api.evaluate(run, task="colour", **EVAL)
    assert caught.value.column == "task"


def test_single_task_runs_behave_as_before(data: Path, tmp_path: Path) -> None:
    trainer = _fit(data, tmp_path / "one")
    assert trainer.heads is None and not (tmp_path / "one" / TASKS_FILE).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = api.evaluate(tmp_path / "one", **EVAL)
    out = report.to_dict()
    assert "tasks" not in out and "task" not in out
    load_weights(tmp_path / "one" / "model.safetensors", trainer.model)
