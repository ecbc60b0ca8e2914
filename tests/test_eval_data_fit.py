"""Evaluation fits the data it is given: a modality of the model that a dataset lacks entirely
is absent for every sample (one warning), ``modalities=`` restricts what the model sees, and the
episode shape is lowered to what small data supplies unless the user set it."""

from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest

from metamodal.config import TrainConfig
from metamodal.data.episode_files import read_episode_file
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import InsufficientSamplesError, ModalityError
from metamodal.evaluate.ablation import modality_ablation
from metamodal.evaluate.protocol import evaluate, evaluate_episodes
from metamodal.evaluate.robustness import missing_modality_curve
from metamodal.evaluate.shape import resolve_eval_shape
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer

SHAPE = dict(ways=2, shots=1, queries=2, episodes=12, seed=3)


@pytest.fixture(scope="module")
def image_track(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, run trained on its image and track modalities, copy without the track)."""
    root = tmp_path_factory.mktemp("fit")
    data = make_synthetic(root / "data", classes=15, per_class=4, image_size=8, seed=2,
                          track_length=16)
    config = TrainConfig(data=str(data), modalities=["image", "track"], steps=3, ways=2,
                         shots=1, queries=1, dim=8, val_every=0, val_episodes=2, device="cpu",
                         cache=False, preprocess={"image": {"size": 8}})
    Trainer(config, root / "run", progress=False).fit()
    return data, root / "run", _without(data, "track", root / "images-only")


def _without(data: Path, modality: str, out: Path) -> Path:
    """A copy of ``data`` whose dataset.toml and samples.csv lack ``modality``."""
    shutil.copytree(data, out, ignore=shutil.ignore_patterns(".metamodal-cache"))
    schema = (out / "dataset.toml").read_text()
    schema = re.sub(rf"\[modalities\.{modality}\]\n(?:[^\[\n][^\n]*\n|\n)*", "", schema)
    assert f"modalities.{modality}" not in schema
    (out / "dataset.toml").write_text(schema)
    with (out / "samples.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = [name for name in rows[0] if name != modality]
    with (out / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row[k] for k in fields} for row in rows)
    return out


def test_a_dataset_lacking_a_modality_is_evaluated_as_if_it_were_masked(image_track) -> None:
    data, run_dir, images_only = image_track
    run = load_run(run_dir)
    full = load_run_data(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lacking = load_run_data(run, images_only)
    messages = [str(w.message) for w in caught if "lacks the model's" in str(w.message)]
    assert len(messages) == 1 and "'track'" in messages[0]
    assert not bool(lacking.store.modalities["track"].present.any())
    test = full.split.test
    masked = evaluate(run.model, full.store, test, modalities=["image"], **SHAPE)
    both = evaluate(run.model, full.store, test, **SHAPE)
    for result in (evaluate(run.model, lacking.store, test, **SHAPE),
                   evaluate(run.model, lacking.store, test, modalities=["image"], **SHAPE)):
        assert result.accuracies == masked.accuracies
        assert result.modalities == ["image"]
        assert result.episode_digest == masked.episode_digest
    assert both.modalities == ["image", "track"]
    named = evaluate(run.model, lacking.store, test, modalities=["image", "track"], **SHAPE)
    assert named.accuracies == masked.accuracies and named.modalities == ["image"]
    with pytest.raises(ModalityError, match="no sample of the data carries 'track'"):
        evaluate(run.model, lacking.store, test, modalities=["track"], **SHAPE)


def test_modalities_restrict_ablation_and_robustness(image_track) -> None:
    _, run_dir, images_only = image_track
    run = load_run(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lacking = load_run_data(run, images_only)
    full = load_run_data(run)
    test = full.split.test
    rows = modality_ablation(run.model, lacking.store, test, **SHAPE)
    assert [r.name for r in rows] == ["all", "only:image"]
    named = modality_ablation(run.model, lacking.store, test, modalities=["image", "track"],
                              **SHAPE)
    assert [r.accuracies for r in named] == [r.accuracies for r in rows]
    restricted = modality_ablation(run.model, full.store, test, modalities=["image"], **SHAPE)
    assert [r.accuracies for r in restricted] == [r.accuracies for r in rows]
    curves = missing_modality_curve(run.model, full.store, test, modalities=["track"],
                                    rates=(0.0, 0.5), **SHAPE)
    assert list(curves) == ["track"]


def test_a_modality_the_model_does_not_know_stays_an_error(image_track) -> None:
    data, run_dir, _ = image_track
    run = load_run(run_dir)
    prepared = load_run_data(run)
    with pytest.raises(ModalityError, match="caption"):
        evaluate(run.model, prepared.store, prepared.split.test, modalities=["caption"],
                 **SHAPE)


def test_a_dataset_with_none_of_the_models_modalities_is_an_error(image_track,
                                                                  tmp_path: Path) -> None:
    _, run_dir, images_only = image_track
    neither = _without(images_only, "image", tmp_path / "neither")
    with pytest.raises(ModalityError, match="none of the model's modalities") as caught:
        load_run_data(load_run(run_dir), neither)
    assert caught.value.file == str(neither / "dataset.toml")


@pytest.mark.parametrize(("classes", "per_class", "family"), [(10, 4, 2), (30, 10, 5)])
def test_small_data_is_evaluated_in_the_shape_it_allows(tmp_path: Path, image_track,
                                                        classes: int, per_class: int,
                                                        family: int) -> None:
    data = make_synthetic(tmp_path / "small", classes=classes, per_class=per_class,
                          image_size=8, seed=4, track_length=16, classes_per_family=family)
    run = load_run(image_track[1])
    prepared = load_run_data(run, data)
    test = prepared.split.test
    with pytest.raises(InsufficientSamplesError):  # the default shape does not fit
        evaluate(run.model, prepared.store, test, episodes=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ways, shots, queries = resolve_eval_shape(prepared.store, test)
    assert len([w for w in caught if "lowered from the default" in str(w.message)]) == 1
    if classes == 10:  # a 10-class dataset keeps a few test classes (of 4 samples)
        assert 2 <= len(test) < 5
    else:  # enough test classes of 10 samples: only the queries are lowered
        assert len(test) >= 5
    expected = (min(5, len(test)), 1, per_class - 1)
    assert (ways, shots, queries) == expected
    result = evaluate(run.model, prepared.store, test, ways=ways, shots=shots,
                      queries=queries, episodes=3)
    assert (result.ways, result.shots, result.queries) == expected


def test_an_explicit_shape_the_data_cannot_supply_is_an_error(tmp_path: Path) -> None:
    from metamodal.data.batch import TensorStore

    store = TensorStore([str(i) for i in range(30)], [f"c{i % 3}" for i in range(30)], {}, {})
    classes = ["c0", "c1", "c2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default shape fits: no warning
        big = TensorStore([str(i) for i in range(96)], [f"c{i % 6}" for i in range(96)], {},
                          {})
        assert resolve_eval_shape(big, [f"c{i}" for i in range(6)]) == (5, 1, 15)
    for shape in (dict(ways=4), dict(queries=10), dict(shots=10), dict(ways=3, queries=12)):
        with pytest.raises(InsufficientSamplesError) as caught, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolve_eval_shape(store, classes, file="splits.toml", **shape)
        assert caught.value.file == "splits.toml" and caught.value.column == "test"
    # the user's queries are kept; only the ways that were not set are lowered
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert resolve_eval_shape(store, classes, queries=4) == (3, 1, 4)
        assert resolve_eval_shape(store, classes, ways=2) == (2, 1, 9)


def test_the_command_evaluates_an_image_and_track_model_on_images_only(
    image_track, tmp_path: Path
) -> None:
    """``metamodal eval RUN --data IMAGES_ONLY`` and ``eval RUN --modalities image`` answer with
    what the model can use, as masking the track would."""
    import json

    from metamodal.cli import main

    data, run_dir, images_only = image_track
    flags = ["--ways", "2", "--queries", "2", "--episodes-count", "12", "--seed", "3",
             "--split", "all", "--no-progress"]
    with pytest.warns(UserWarning, match="'track'"):
        assert main(["eval", str(run_dir), "--data", str(images_only), *flags, "--json",
                     str(tmp_path / "lacking.json")]) == 0
    assert main(["eval", str(run_dir), "--data", str(data), "--modalities", "image", *flags,
                 "--json", str(tmp_path / "named.json")]) == 0
    lacking, named = (json.loads((tmp_path / f"{n}.json").read_text())
                      for n in ("lacking", "named"))
    assert lacking["modalities"] == named["modalities"] == ["image"]
    assert lacking["accuracies"] == named["accuracies"]


def test_a_class_whose_support_shows_nothing_is_never_predicted_and_its_queries_count_wrong(
        image_track, tmp_path: Path) -> None:
    """The score does not depend on the order of the classes: a class none of whose support
    samples shows the model a selected modality takes no query, and its own are wrong."""
    _, run_dir, _ = image_track
    run = load_run(run_dir)
    prepared = load_run_data(run)
    store = prepared.store
    a, b = prepared.split.test[:2]
    rows = {label: [i for i, x in enumerate(store.labels) if x == label][:3] for label in (a, b)}
    store.modalities["track"].present[rows[a][0]] = False  # a's only support lacks the track
    for i in rows[a][1:] + rows[b]:
        store.modalities["track"].present[i] = True
    queries = [store.ids[i] for i in rows[a][1:] + rows[b][1:]]
    scores = []
    for order in ((a, b), (b, a)):
        path = tmp_path / f"{order[0]}.jsonl"
        path.write_text(json.dumps({"episode": "e", "support": [store.ids[rows[c][0]]
                                                                  for c in order],
                                    "query": queries}) + "\n")
        with pytest.warns(UserWarning, match="1 of 1 episodes hold a class none of whose"):
            result = evaluate_episodes(run.model, store, read_episode_file(path, store),
                                       modalities=["track"])
        scores.append(result.accuracy)
    assert scores[0] == scores[1] <= 0.5  # a's two queries wrong, b's two predicted as b
    assert scores[0] == 0.5


def test_a_dataset_whose_store_cannot_be_written_is_evaluated_with_a_warning(
        image_track, tmp_path: Path) -> None:
    """The decoded store under DATA/.metamodal-cache is an optimisation: a dataset where it
    cannot be written (read-only, a full disk; here a file in its place) made every
    evaluation fail, and a full disk ended training in a bare SafetensorError. Now it warns,
    and decodes again."""
    data, run_dir, _ = image_track
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".metamodal-cache"))
    (copy / ".metamodal-cache").write_text("not a folder")
    run = load_run(run_dir)
    with pytest.warns(UserWarning, match="cannot write the store cache"):
        prepared = load_run_data(run, copy, cache=True)
    result = evaluate(run.model, prepared.store, prepared.split.test, **SHAPE)
    assert 0.0 <= result.accuracy <= 1.0
    with warnings.catch_warnings():  # trained with cache = false: no store is written at all
        warnings.simplefilter("error", UserWarning)
        load_run_data(run, copy)
