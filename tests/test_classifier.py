"""`FewShotClassifier` follows scikit-learn's conventions: the constructor stores parameters and
reads nothing, `clone` / `get_params` / `set_params` work, ``fit(X, y)`` takes a list of dicts,
a DataFrame or a dataset with labels, and bad input is a typed error naming row and column."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.utils.validation import check_is_fitted

from metamodal import api
from metamodal.classifier import FewShotClassifier
from metamodal.config import TrainConfig
from metamodal.data.dataset import load_dataset
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import (
    ConfigError,
    DatasetError,
    InsufficientSamplesError,
    ModalityError,
    OutputError,
    RunError,
)
from metamodal.train.trainer import Trainer

TABULAR = ["body_length_cm", "body_width_cm", "weight_g", "air_temp_c"]
MEDIA = ["image", "sound", "track"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, run dir) of a tiny model trained on every modality of a synthetic set."""
    root = tmp_path_factory.mktemp("classifier")
    data = make_synthetic(root / "data", classes=15, per_class=4, image_size=8, seed=1)
    config = TrainConfig(data=str(data), steps=3, ways=2, shots=1, queries=1, dim=8,
                         val_every=0, val_episodes=2, device="cpu", cache=False,
                         preprocess={"image": {"size": 8}})
    Trainer(config, root / "run", progress=False).fit()
    return data, root / "run"


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "samples.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _split(data: Path) -> tuple[list[dict], list[dict]]:
    """Two support and two query samples of each of the first three classes (rows as read
    from the CSV: every cell a string, empty ones ``""``)."""
    rows = _rows(data)[:12]
    return ([r for i, r in enumerate(rows) if i % 4 < 2],
            [r for i, r in enumerate(rows) if i % 4 >= 2])


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _records(rows: list[dict[str, str]]) -> list[dict]:
    """Rows as a user would hold them: numbers as floats, missing cells None, no label."""
    return [{k: (float(v) if k in TABULAR and v else v or None) for k, v in r.items()
             if k != "species"} for r in rows]


def _labels(rows: list[dict[str, str]]) -> list[str]:
    return [r["species"] for r in rows]


def test_constructor_reads_no_file_and_fit_fails_typed(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-such-run"
    clf = FewShotClassifier(nowhere, modalities=["image"])
    assert clf.run is nowhere and clf.modalities == ["image"]
    assert repr(clf) == f"FewShotClassifier(run={nowhere!r}, modalities=['image'])"
    with pytest.raises(RunError) as caught:
        clf.fit([{"caption": "x"}], ["a"])
    assert caught.value.file == str(nowhere)
    with pytest.raises(RunError, match="fit"):
        clf.predict([{"caption": "x"}])


def test_clone_gives_an_unfitted_copy_with_equal_params(trained) -> None:
    data, run = trained
    support, _ = _split(data)
    clf = FewShotClassifier(run, modalities=["caption", "image"], media_root=data)
    clf.fit(_records(support), _labels(support))
    copy = clone(clf)
    assert type(copy) is FewShotClassifier and copy is not clf
    assert copy.get_params() == clf.get_params()
    assert copy.modalities is not clf.modalities  # clone copies parameters deeply
    assert not hasattr(copy, "classes_") and not hasattr(copy, "run_")
    assert hasattr(clf, "classes_") and is_classifier(clf)
    check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    assert clone(FewShotClassifier(run)).get_params() == FewShotClassifier(run).get_params()


def test_get_params_and_set_params_round_trip(trained) -> None:
    _, run = trained
    clf = FewShotClassifier(run)
    params = {"run": "elsewhere", "device": "cuda", "modalities": ["track"],
              "media_root": "media", "tta": 4, "transduction": 1,
              "transduction_balance": True, "fusion_confidence": 2.0, "fusion_reliability": 1.0,
              "joint_transduction": False}
    assert clf.set_params(**params) is clf
    assert clf.get_params() == clf.get_params(deep=False) == params
    clf.set_params(**FewShotClassifier(run).get_params())
    assert clf.get_params() == {"run": run, "device": "cpu", "modalities": None,
                                "media_root": None, "tta": None, "transduction": None,
                                "transduction_balance": None, "fusion_confidence": None,
                                "fusion_reliability": None, "joint_transduction": None}
    with pytest.raises(ConfigError) as caught:
        clf.set_params(ways=5)
    assert caught.value.column == "ways" and "modalities" in str(caught.value)


def test_every_form_of_x_gives_the_deprecated_fits_predictions(trained) -> None:
    data, run = trained
    support, query = _split(data)
    table = _write(data / "support.csv", support)
    query_table = _write(data / "query.csv", query)
    with pytest.warns(DeprecationWarning, match=r"fit\(X, y\)"):
        old = FewShotClassifier(run).fit(table)
    expected = old.predict_proba(query_table)
    assert old.classes_ == sorted(set(_labels(support)))

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        by_records = FewShotClassifier(run, media_root=data).fit(_records(support),
                                                                 _labels(support))
        frame = pd.DataFrame(_records(support))
        by_frame = FewShotClassifier(run, media_root=data).fit(frame, _labels(support))
        dataset = load_dataset(data).subset(range(12))
        by_dataset = FewShotClassifier(run).fit(dataset.subset([0, 1, 4, 5, 8, 9]),
                                                np.array(_labels(support)))
    for clf in (by_records, by_frame, by_dataset):
        assert clf.classes_ == old.classes_
        np.testing.assert_allclose(clf.predict_proba(query_table), expected, rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(by_records.predict_proba(_records(query)), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_frame.predict_proba(pd.DataFrame(_records(query))),
                               expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_records.decision_function(_records(query)),
                               old.decision_function(query_table), rtol=1e-5, atol=1e-5)
    assert by_records.predict(_records(query)) == old.predict(query_table)


def test_a_dataframe_takes_nan_as_missing(trained) -> None:
    data, run = trained
    support, query = _split(data)
    clf = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    rows = _records(query)
    rows[0]["caption"] = None
    rows[1]["weight_g"] = None
    frame = pd.DataFrame(rows)
    assert frame["caption"].isna()[0] and math.isnan(frame["weight_g"][1])
    np.testing.assert_allclose(clf.predict_proba(frame), clf.predict_proba(rows), rtol=1e-5,
                               atol=1e-6)


def test_score_is_the_accuracy(trained) -> None:
    data, run = trained
    support, query = _split(data)
    clf = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    X, y = _records(query), _labels(query)
    predicted = clf.predict(X)
    assert clf.score(X, y) == accuracy_score(y, predicted)
    wrong = [label if i % 2 else "ghost" for i, label in enumerate(predicted)]
    assert clf.score(X, wrong) == 0.5  # a label outside classes_ counts as an error
    weights = [1.0, 2.0, 0.5, 3.0, 1.0, 0.0]
    assert clf.score(X, wrong, weights) == pytest.approx(
        accuracy_score(wrong, predicted, sample_weight=weights))
    with pytest.raises(DatasetError, match="sample_weight"):
        clf.score(X, y, [1.0])


def test_modalities_restrict_to_the_named_ones(trained) -> None:
    data, run = trained
    support, query = _split(data)
    kept = ["caption", *TABULAR]
    restricted = FewShotClassifier(run, modalities=["measurements", "caption"])
    restricted.fit(_records(support), _labels(support))
    assert restricted.modalities_ == ["caption", "measurements"]  # the model's order

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k in ("id", *kept)} for r in rows]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = FewShotClassifier(run).fit(strip(_records(support)), _labels(support))
        expected = plain.predict_proba(strip(_records(query)))
    lacking = [w for w in caught if "absent in every sample" in str(w.message)]
    assert len(lacking) == 2  # one warning a call, naming the modalities the input lacks
    assert all(m in str(lacking[0].message) for m in MEDIA)
    full = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # media columns given but not used: no warning
        got = restricted.predict_proba(_records(query))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full.predict_proba(_records(query)), expected)
    with pytest.raises(ConfigError) as caught_error:
        FewShotClassifier(run, modalities=["thermal"]).fit(_records(support), _labels(support))
    assert caught_error.value.column == "modalities"


def test_save_and_load_keep_the_predictions(trained, tmp_path: Path) -> None:
    data, run = trained
    support, query = _split(data)
    clf = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    saved = clf.save(tmp_path / "saved")
    again = FewShotClassifier.load(saved, media_root=data)
    assert again.get_params()["run"] == saved and again.classes_ == clf.classes_
    np.testing.assert_allclose(again.predict_proba(_records(query)),
                               clf.predict_proba(_records(query)), rtol=1e-5, atol=1e-6)



def test_save_refuses_a_directory_holding_another_run_or_other_files(trained,
                                                                      tmp_path: Path) -> None:
    data, run = trained
    support, _ = _split(data)
    clf = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    (other / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()}
    for target in (other, tmp_path / "notes"):
        (tmp_path / "notes").mkdir(exist_ok=True)
        (tmp_path / "notes" / "a.txt").write_text("mine")
        with pytest.raises(OutputError, match="no saved classifier") as caught:
            clf.save(target)
        assert caught.value.file == str(target)
    assert {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]
    clf.save(tmp_path / "saved")
    clf.save(tmp_path / "saved")  # over an earlier save: allowed
    assert FewShotClassifier.load(tmp_path / "saved", media_root=data).classes_ == clf.classes_

def test_integer_labels_predict_and_score_but_do_not_save(trained, tmp_path: Path) -> None:
    data, run = trained
    support, query = _split(data)
    codes = {label: k for k, label in enumerate(sorted(set(_labels(support))))}
    clf = FewShotClassifier(run, media_root=data)
    clf.fit(_records(support), np.array([codes[s] for s in _labels(support)]))
    named = FewShotClassifier(run, media_root=data).fit(_records(support), _labels(support))
    assert clf.classes_ == [0, 1, 2]
    assert clf.predict(_records(query)) == [codes[p] for p in named.predict(_records(query))]
    assert clf.score(_records(query), [codes[s] for s in _labels(query)]) == named.score(
        _records(query), _labels(query))
    with pytest.raises(RunError, match="string class labels"):
        clf.save(tmp_path / "saved")


def test_cross_validation_clones_and_scores(trained) -> None:
    data, run = trained
    rows = _rows(data)[:12]
    X, y = _records(rows), _labels(rows)
    folds = StratifiedKFold(n_splits=2)
    scores = cross_val_score(FewShotClassifier(run, media_root=data), X, y, cv=folds)
    by_hand = []
    for train, test in folds.split(X, y):
        clf = FewShotClassifier(run, media_root=data)
        clf.fit([X[i] for i in train], [y[i] for i in train])
        by_hand.append(clf.score([X[i] for i in test], [y[i] for i in test]))
    np.testing.assert_allclose(scores, by_hand)


def _error(call, kind: type[Exception] = DatasetError) -> Exception:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def test_bad_labels_are_typed_errors_naming_the_row(trained) -> None:
    data, run = trained
    support, _ = _split(data)
    X, y = _records(support), _labels(support)
    clf = FewShotClassifier(run, media_root=data)
    error = _error(lambda: clf.fit(X, y[:-1]))
    assert (error.row, error.column) == (6, "y") and "6 samples but 5 labels" in str(error)
    error = _error(lambda: clf.fit(X, [*y[:2], float("nan"), *y[3:]]))
    assert (error.row, error.column) == (3, "y") and "NaN" in str(error)
    error = _error(lambda: clf.fit(X, [*y[:3], 7, *y[4:]]))
    assert (error.row, error.column) == (4, "y") and "mix" in str(error)
    error = _error(lambda: clf.fit(X, "species"))
    assert error.column == "y"
    error = _error(lambda: clf.fit(X, [*y[:4], y[0] + " ", *y[5:]]))  # two classes of one
    assert (error.row, error.column) == (5, "y") and "surrounding spaces" in str(error)
    error = _error(lambda: clf.fit(X, y, classes=sorted(set(y))[:2]), InsufficientSamplesError)
    assert (error.row, error.column) == (5, "y")
    error = _error(lambda: clf.fit(X))
    assert error.column == "y" and "fit(X, y)" in str(error)
    error = _error(lambda: clf.fit(X, [y[0]] * len(y)), InsufficientSamplesError)
    assert error.column == "y" and "one class" in str(error)  # every query would be it
    assert not hasattr(clf, "classes_")  # a failed fit leaves the classifier unfitted


def test_bad_cells_are_typed_errors_naming_row_and_column(trained, tmp_path: Path) -> None:
    data, run = trained
    support, _ = _split(data)
    y = _labels(support)

    def fit(rows: list[dict], **params) -> None:
        FewShotClassifier(run, **{"media_root": data, **params}).fit(rows, y)

    rows = _records(support)
    rows[2]["weight_g"] = float("nan")
    error = _error(lambda: fit(rows))
    assert (error.row, error.column, error.file) == (3, "weight_g", "X (list of dicts)")
    rows = _records(support)
    rows[1]["thermal"] = "scan.npy"
    error = _error(lambda: fit(rows), ModalityError)
    assert (error.row, error.column) == (2, "thermal")
    rows = _records(support)
    rows[3]["caption"] = object()
    error = _error(lambda: fit(rows))
    assert (error.row, error.column) == (4, "caption")
    error = _error(lambda: fit(_records(support), media_root=None))
    assert (error.row, error.column) == (1, "image") and "media_root" in str(error)
    outside = tmp_path / "media"
    outside.mkdir()
    error = _error(lambda: fit(_records(support), media_root=outside))
    assert (error.row, error.column) == (1, "image")  # images/... is not in that directory
    rows = _records(support)
    rows[4]["image"] = str((data / rows[4]["image"]).resolve())
    fit(rows)  # an absolute path inside media_root is read
    rows[4]["image"] = str(tmp_path / "outside.png")
    error = _error(lambda: fit(rows))
    assert (error.row, error.column) == (5, "image") and "outside" in str(error)
    rows = [{k: v for k, v in r.items() if k in ("id", "caption", "sound")}
            for r in _records(support)]
    rows[4]["sound"] = "../outside.wav"
    error = _error(lambda: fit(rows, modalities=["caption", "sound"]))
    assert (error.row, error.column) == (5, "sound") and "outside" in str(error)
    error = _error(lambda: fit([{"id": "a", "caption": "x"}, {"id": "a", "caption": "y"}]))
    assert (error.row, error.column) == (2, "id")
    error = _error(lambda: fit({"caption": ["x"]}))
    assert error.file == "X"


def test_predict_names_the_support_tables_label_column(trained) -> None:
    data, run = trained
    support, query = _split(data)
    one_class = [r for r in support if r["species"] == support[0]["species"]]
    table = _write(data / "one-class-support.csv", one_class)
    queries = _write(data / "one-class-query.csv", query)
    with pytest.raises(InsufficientSamplesError, match="one class") as caught:
        api.predict(str(run), support=str(table), query=str(queries))
    assert caught.value.column == "species"  # the table's label column, not fit's y
    assert Path(caught.value.file) == table


def test_a_query_a_late_fusion_model_cannot_compare_is_refused(trained,
                                                                tmp_path: Path) -> None:
    """Late fusion compares each modality on its own: a query that carries none of the
    modalities the support samples carry got no score, and `predict` showed the first class
    at even probabilities. It is a `ModalityError` naming the query's row; a query that shares
    a modality is still classified."""
    data, _ = trained
    run = tmp_path / "late"
    Trainer(TrainConfig(data=str(data), steps=2, ways=2, shots=1, queries=1, dim=8,
                        val_every=0, val_episodes=2, device="cpu", cache=False,
                        modalities=["image", "caption"], fusion="late",
                        preprocess={"image": {"size": 8}}), run, progress=False).fit()
    rows = _rows(data)
    support = [{"caption": rows[0]["caption"]}, {"caption": rows[4]["caption"]}]
    clf = FewShotClassifier(run, media_root=data).fit(support, ["a", "b"])
    query = _write(data / "query-late.csv", [dict(rows[1], caption=""), rows[5]])
    with pytest.raises(ModalityError) as raised:
        clf.predict(query)
    assert raised.value.row == 1 and raised.value.file == str(query)
    assert "carries image" in raised.value.message and "late fusion" in raised.value.message
    assert len(clf.predict([{"caption": rows[1]["caption"], "image": rows[1]["image"]}])) == 1
    gated = FewShotClassifier(trained[1], media_root=data).fit(support, ["a", "b"])
    assert len(gated.predict([{"image": rows[1]["image"]}])) == 1  # one shared space
    # a modality that only some classes' support samples carry is not compared at all
    image = {"image": rows[1]["image"]}
    for kept, lacking in (([{"caption": "red"}, image], "'a'"),
                          ([{"caption": "red", **image}, {"caption": "blue"}], "'b'"),
                          ([{"caption": "red"}, image, image], "'a'")):
        clf = FewShotClassifier(run, media_root=data).fit(kept, ["a", "b", "c"][:len(kept)])
        with pytest.raises(ModalityError, match=f"no support sample of {lacking} carries image"):
            clf.predict([{"image": rows[5]["image"]}])


def test_a_tabular_modality_with_some_of_its_columns_is_refused_beside_a_whole_one(
        trained) -> None:
    """Query samples with one of the measurements' four columns: refused when they carry no
    other modality, but used, the three others imputed, when a caption key stood beside
    (even empty). It is refused either way, naming the columns."""
    data, run = trained
    rows = _rows(data)
    clf = FewShotClassifier(run, media_root=data).fit(_records(rows[:2]), ["a", "b"])
    for query in ([{"weight_g": 1500.0}], [{"weight_g": 1500.0, "caption": None}],
                  [{"weight_g": 1500.0, "caption": "a red thing"}]):
        with pytest.raises(ModalityError, match="measurements lacks body_length_cm"):
            clf.predict(query)


def test_a_saved_classifier_keeps_its_test_time_settings(trained, tmp_path: Path) -> None:
    """Its support set was embedded with its settings (tta averages augmented copies):
    loaded, it answered with the run's settings instead, neither what was saved nor a fresh
    fit. `load` restores them; a damaged value names support.json's key."""
    data, _ = trained
    run = tmp_path / "augmented"
    Trainer(TrainConfig(data=str(data), steps=2, ways=2, shots=1, queries=1, dim=8,
                        val_every=0, val_episodes=2, device="cpu", cache=False,
                        augment={"image": {"rotate": 30, "shift": 0.2}},
                        preprocess={"image": {"size": 8}}), run, progress=False).fit()
    support, query = _split(data)
    clf = FewShotClassifier(run, media_root=data, tta=4, transduction_balance=True,
                            modalities=["image", "caption"])
    clf.fit(_records(support), _labels(support))
    expected = clf.predict_proba(_records(query))
    clf.set_params(tta=0, modalities=["image"])  # for the next fit: the fitted set is as it was
    clf.save(tmp_path / "saved")
    loaded = FewShotClassifier.load(tmp_path / "saved", media_root=data)
    assert (loaded.tta, loaded.transduction_balance, loaded.transduction) == (4, True, None)
    assert loaded.modalities_ == ["image", "caption"]
    np.testing.assert_allclose(loaded.predict_proba(_records(query)), expected, rtol=0,
                               atol=1e-6)
    with pytest.raises(ConfigError) as raised:  # queries of other modalities than it was fit on
        FewShotClassifier.load(tmp_path / "saved", media_root=data, modalities=["caption"])
    assert raised.value.column == "modalities"
    meta = json.loads((tmp_path / "saved" / "support.json").read_text())
    meta["test_time"]["tta"] = -3
    (tmp_path / "saved" / "support.json").write_text(json.dumps(meta))
    with pytest.raises(RunError) as raised:
        FewShotClassifier.load(tmp_path / "saved")
    assert raised.value.column == "test_time.tta"


def test_a_media_root_that_is_no_path_is_a_config_error(trained) -> None:
    """Every other parameter of the wrong type is a ConfigError; media_root=123 was a bare
    TypeError from pathlib."""
    data, run = trained
    rows = _rows(data)
    with pytest.raises(ConfigError) as raised:
        FewShotClassifier(run, media_root=123).fit(_records(rows[:2]), ["a", "b"])
    assert raised.value.column == "media_root"
