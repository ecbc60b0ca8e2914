"""A run directory and a saved classifier are checked, not trusted: every corruption of one of
their files is a `RunError` naming the file and the key (or tensor); bad head options and
flags are `ConfigError`s; a query sample without a modality gets no label."""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.config import TrainConfig, load_config
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, ModalityError, OutputError, RunError
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data dir, run dir, saved classifier dir) of a tiny model."""
    root = tmp_path_factory.mktemp("runs")
    data = make_synthetic(root / "data", classes=15, per_class=4, image_size=8, seed=1)
    config = TrainConfig(data=str(data), steps=3, ways=2, shots=1, queries=1, dim=8,
                         val_every=0, val_episodes=2, device="cpu", cache=False,
                         preprocess={"image": {"size": 8}})
    Trainer(config, root / "run", progress=False).fit()
    support = _write(data / "support.csv", _rows(data)[:8])
    FewShotClassifier(root / "run").fit(support).save(root / "saved")
    return data, root / "run", root / "saved"


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "samples.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]], fields: list[str] | None = None) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _error(run: Path, loader=load_run) -> RunError:
    with pytest.raises(RunError) as caught:
        loader(run)
    return caught.value


@pytest.mark.parametrize(("line", "key"), [("bogus = 1", "train.bogus"),
                                           ('steps = "many"', "train.steps"),
                                           ("checkpoint_every = 0", "train.checkpoint_every")])
def test_config_toml_with_a_bad_training_key(trained, tmp_path: Path, line: str,
                                             key: str) -> None:
    run = _copy(trained[1], tmp_path)
    text = (run / "config.toml").read_text()
    name = line.split(" ")[0]
    text = "\n".join(t for t in text.splitlines() if not t.startswith(f"{name} ="))
    (run / "config.toml").write_text(text.replace("[train]\n", f"[train]\n{line}\n"))
    error = _error(run)
    assert error.file == str(run / "config.toml") and error.column == key


def test_config_toml_with_a_zero_temperature(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("[model.learner_options]\n",
                                                  "[model.learner_options]\ntemperature = 0\n"))
    error = _error(run)
    assert error.file == str(run / "config.toml") and error.column.startswith("model")
    assert "temperature" in error.message


@pytest.mark.parametrize(("table", "key"), [
    ({"encoders": "conv4"}, "model.encoders"),  # a table replaced by a string
    ({"fusion_options": [1]}, "model.fusion_options"),
    ({"learner": True}, "model.learner"),
    ({"kinds": {"image": 3}}, "model.kinds"),
    ({"dim": 10**7}, "model.dim"),  # refused before 10^7-wide layers are allocated
])
def test_config_toml_with_a_model_table_of_the_wrong_shape(trained, tmp_path: Path,
                                                           table: dict, key: str) -> None:
    import tomllib

    import tomli_w

    run = _copy(trained[1], tmp_path)
    document = tomllib.loads((run / "config.toml").read_text())
    document["model"].update(table)
    (run / "config.toml").write_text(tomli_w.dumps(document))
    error = _error(run)
    assert error.file == str(run / "config.toml") and error.column == key


@pytest.mark.parametrize(("modality", "key"), [("image", "channels"),
                                             ("caption", "vocab_size")])
def test_config_toml_sizes_that_differ_from_the_preprocessor_are_refused_before_building(
        trained, tmp_path: Path, monkeypatch, modality: str, key: str) -> None:
    """A damaged input_info (10^7 image channels: 22 GB of first layer) is compared with what
    preprocessor.json decodes before any model is built, not after."""
    import tomllib

    import tomli_w

    from metamodal.model import FewShotModel

    run = _copy(trained[1], tmp_path)
    document = tomllib.loads((run / "config.toml").read_text())
    document["model"]["input_info"][modality][key] = 10**7
    (run / "config.toml").write_text(tomli_w.dumps(document))

    def build(**_: object) -> None:
        raise AssertionError("the model was built from a damaged input_info")

    monkeypatch.setattr(FewShotModel, "build", build)
    error = _error(run)  # config.toml was edited: it was blamed on preprocessor.json alone
    assert (error.file, error.column) == (str(run / "config.toml"),
                                          f"model.input_info.{modality}")
    assert "10000000" in error.message and "config.toml and preprocessor.json" in error.fix


def test_zero_temperature_and_checkpoint_every_are_config_errors(trained, tmp_path: Path,
                                                                 capsys) -> None:
    data = trained[0]
    config = tmp_path / "c.toml"
    config.write_text("steps = 2\n[learner_options]\ntemperature = 0\n")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--config",
                 str(config), "--no-progress", "--device", "cpu", "--no-cache"]) == 2
    assert "temperature" in capsys.readouterr().err
    with pytest.raises(ConfigError) as caught:
        Trainer(TrainConfig(data=str(data), checkpoint_every=0), tmp_path / "b")
    assert caught.value.column == "checkpoint_every"
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"),
                 "--checkpoint-every", "0", "--no-progress"]) == 2


def _edit_json(path: Path, change) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("change", [
    lambda s: s.pop("loaders"),
    lambda s: s["loaders"]["image"].update(std=[0.0, 1.0, 1.0]),
    lambda s: s["loaders"]["image"].update(mean=[0.5, 0.5]),
    lambda s: s["loaders"]["measurements"].update(std=[float("nan")] * 4),
    lambda s: s["loaders"]["image"]["options"].update(size=0),
], ids=["missing-field", "zero-std", "wrong-shape", "nan-std", "bad-option"])
def test_preprocessor_json_is_checked(trained, tmp_path: Path, change) -> None:
    run = _copy(trained[1], tmp_path)
    _edit_json(run / "preprocessor.json", change)
    error = _error(run)
    assert error.file == str(run / "preprocessor.json")


def test_preprocessor_json_names_the_loader(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    _edit_json(run / "preprocessor.json",
               lambda s: s["loaders"]["image"].update(std=[0.0, 1.0, 1.0]))
    assert _error(run).column == "loaders.image"


@pytest.mark.parametrize(("table", "line", "key"), [
    ("[dataset]", "bogus = 1", "dataset.bogus"),
    ("[dataset.modalities.image]", "bogus = 1", "dataset.modalities.image"),
])
def test_config_toml_with_an_unknown_dataset_key(trained, tmp_path: Path, table: str,
                                                 line: str, key: str) -> None:
    run = _copy(trained[1], tmp_path)
    text = (run / "config.toml").read_text()
    assert f"{table}\n" in text
    (run / "config.toml").write_text(text.replace(f"{table}\n", f"{table}\n{line}\n"))
    error = _error(run)
    assert error.file == str(run / "config.toml") and error.column == key


@pytest.mark.parametrize(("change", "key", "said"), [
    (lambda s: s["loaders"]["image"].update(kind="hologram"), "loaders.image.kind",
     "unknown loader kind 'hologram'"),
    (lambda s: s["loaders"]["image"].update(kind="text"), "loaders.image.kind",
     "is of kind 'image', but its loader state is of kind 'text'"),  # it was called unknown
    (lambda s: s["loaders"]["caption"].update(fitted="yes"), "loaders.caption.fitted", ""),
    (lambda s: s.update(fitted="yes"), "fitted", ""),
    (lambda s: s["loaders"].update(caption="fitted"), "loaders.caption", ""),
], ids=["unknown-kind", "other-kind", "loader-fitted-string", "fitted-string",
        "state-string"])
def test_preprocessor_json_with_a_bad_kind_or_fitted_state(trained, tmp_path: Path, change,
                                                           key: str, said: str) -> None:
    run = _copy(trained[1], tmp_path)
    _edit_json(run / "preprocessor.json", change)
    error = _error(run)
    assert error.file == str(run / "preprocessor.json") and error.column == key
    assert said in error.message


def test_train_data_pointing_nowhere_is_an_error_only_when_the_data_is_needed(
        trained, tmp_path: Path) -> None:
    data, source, _ = trained
    run = _copy(source, tmp_path)
    text = (run / "config.toml").read_text()
    line = next(t for t in text.splitlines() if t.startswith("data = "))
    (run / "config.toml").write_text(text.replace(line, f'data = "{tmp_path / "moved"}"'))
    loaded = load_run(run)  # predict needs only the run's own preprocessing
    assert len(FewShotClassifier(run).fit(data / "support.csv").classes_) > 1
    with pytest.raises(RunError) as caught:
        load_run_data(loaded)
    assert caught.value.file == str(run / "config.toml")
    assert caught.value.column == "train.data"
    assert load_run_data(loaded, data).store.ids  # another dataset is still fine


@pytest.mark.parametrize("how", ["nan", "missing", "shape"])
def test_model_safetensors_is_checked(trained, tmp_path: Path, how: str) -> None:
    run = _copy(trained[1], tmp_path)
    state = load_file(str(run / "model.safetensors"))
    key = sorted(k for k in state if state[k].is_floating_point())[0]
    if how == "nan":
        state[key] = state[key].clone().fill_(float("nan"))
    elif how == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(7, 3)
    save_file(state, str(run / "model.safetensors"))
    error = _error(run)
    assert error.file == str(run / "model.safetensors") and error.column == key


@pytest.mark.parametrize(("name", "content", "key"), [
    ("support.json", "{not json", None),
    ("support.json", '{"classes": [], "modalities": [], "form": "embeddings"}', "classes"),
    ("support.json", "[" * 5000 + "]" * 5000, None),
    ("support.safetensors", "garbage", None),
])
def test_saved_classifier_files_are_checked(trained, tmp_path: Path, name: str, content: str,
                                            key: str | None) -> None:
    saved = _copy(trained[2], tmp_path)
    (saved / name).write_text(content)
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / name) and error.column == key


@pytest.mark.parametrize("name", ["preprocessor.json", "support.json",
                                  "support.safetensors"])
def test_a_run_file_that_is_a_fifo_is_refused_without_blocking(trained, tmp_path: Path,
                                                                name: str) -> None:
    """A FIFO in place of one of these files blocked every verb that loads the run."""
    saved = _copy(trained[2], tmp_path)
    (saved / name).unlink()
    os.mkfifo(saved / name)
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / name) and "not a regular file" in error.message


def test_saved_support_labels_out_of_range(trained, tmp_path: Path) -> None:
    saved = _copy(trained[2], tmp_path)
    tensors = load_file(str(saved / "support.safetensors"))
    tensors["labels"] = tensors["labels"] + 100
    save_file(tensors, str(saved / "support.safetensors"))
    error = _error(saved, FewShotClassifier.load)
    assert error.column == "labels" and error.file == str(saved / "support.safetensors")



def test_saved_support_json_without_its_tensors_is_an_error_not_an_unfitted_classifier(
        trained, tmp_path: Path) -> None:
    saved = _copy(trained[2], tmp_path)
    (saved / "support.safetensors").unlink()
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / "support.safetensors")
    assert "support.json" in error.fix


def _edit_support(saved: Path, change) -> None:
    tensors = load_file(str(saved / "support.safetensors"))
    change(tensors)
    save_file(tensors, str(saved / "support.safetensors"))


@pytest.mark.parametrize(("change", "key"), [
    (lambda t: t.update(present=torch.zeros_like(t["present"])), "present"),
    (lambda t: t.update(present=torch.ones(len(t["labels"]), 9, dtype=torch.bool)), "present"),
    (lambda t: t.update(labels=torch.zeros_like(t["labels"])), "classes"),
])
def test_saved_support_presence_and_classes_are_checked(trained, tmp_path: Path, change,
                                                         key: str) -> None:
    """A row with no modality, a `present` of the wrong width, or a class of support.json
    without a sample: refused on load, naming the file and tensor (they loaded and predicted,
    or failed in predict naming no file)."""
    saved = _copy(trained[2], tmp_path)
    _edit_support(saved, change)
    error = _error(saved, FewShotClassifier.load)
    name = "support.json" if key == "classes" else "support.safetensors"
    assert error.file == str(saved / name) and error.column == key


def test_saved_support_lookalike_classes_and_links_out_are_refused(trained,
                                                                    tmp_path: Path) -> None:
    """support.json naming 'a' and 'a ' loaded as two classes (fit refuses them); a support
    file linked out of the classifier's folder was followed."""
    saved = _copy(trained[2], tmp_path)
    meta = json.loads((saved / "support.json").read_text())
    meta["classes"][1] = meta["classes"][0] + " "
    (saved / "support.json").write_text(json.dumps(meta))
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / "support.json") and error.column == "classes"
    saved = _copy(trained[2], tmp_path / "linked")
    outside = tmp_path / "outside.safetensors"
    (saved / "support.safetensors").rename(outside)
    (saved / "support.safetensors").symlink_to(outside)
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / "support.safetensors") and "outside" in error.message


def test_saved_support_modalities_named_twice(trained, tmp_path: Path) -> None:
    saved = _copy(trained[2], tmp_path)
    meta = json.loads((saved / "support.json").read_text())
    meta["modalities"] = meta["modalities"][:1] * 2
    (saved / "support.json").write_text(json.dumps(meta))
    error = _error(saved, FewShotClassifier.load)
    assert error.file == str(saved / "support.json") and error.column == "modalities"


def test_saved_support_embeddings_are_tied_to_the_weights_that_made_them(
        trained, tmp_path: Path) -> None:
    """Weights replaced by another run's of the same shape loaded without a word, and the
    saved support embeddings were compared with queries the other network embedded.
    support.json records the weights' SHA-256; a folder saved before it did still loads."""
    data, run, saved = trained
    config = load_config(run / "config.toml").updated({"seed": 7})
    Trainer(config, tmp_path / "other", progress=False).fit()
    swapped = _copy(saved, tmp_path)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", swapped / "model.safetensors")
    error = _error(swapped, FewShotClassifier.load)
    assert error.column == "model" and error.file == str(swapped / "support.json")
    meta = json.loads((swapped / "support.json").read_text())
    for recorded, loads in (("not a digest", False), (None, True)):
        if recorded is None:
            meta.pop("model")
        else:
            meta["model"] = recorded
        (swapped / "support.json").write_text(json.dumps(meta))
        if loads:  # saved before the digest was recorded: not checked
            assert FewShotClassifier.load(swapped).classes_ == meta["classes"]
        else:
            assert _error(swapped, FewShotClassifier.load).column == "model"
    query = _write(data / "query-tied.csv", _rows(data)[8:12])
    assert FewShotClassifier.load(saved).predict(query) is not None  # the saved one loads


@pytest.mark.parametrize("change", ["width", "dtype"])
def test_saved_support_embeddings_must_fit_the_model(trained, tmp_path: Path,
                                                     change: str) -> None:
    saved = _copy(trained[2], tmp_path)
    tensors = load_file(str(saved / "support.safetensors"))
    z = tensors["z"]
    tensors["z"] = z[..., :7].contiguous() if change == "width" else z.double()
    save_file(tensors, str(saved / "support.safetensors"))
    error = _error(saved, FewShotClassifier.load)
    assert error.column == "z" and error.file == str(saved / "support.safetensors")

def test_a_query_without_any_modality_gets_an_error_not_a_label(trained, tmp_path) -> None:
    data, run, saved = trained
    rows = _rows(data)[8:11]
    for column in ("image", "caption", "sound", "track", "body_length_cm", "body_width_cm",
                   "weight_g", "air_temp_c"):
        rows[1][column] = ""
    query = _write(data / "query-empty.csv", rows)
    with pytest.raises(ModalityError) as caught:
        FewShotClassifier.load(saved).predict(query)
    assert caught.value.file == str(query) and caught.value.row == 2


def test_a_support_sample_without_any_modality_is_an_error_not_dropped(trained,
                                                                        capsys) -> None:
    """As in the query: a support row with every modality empty names its row (it was
    dropped without a word, so the classifier had fewer examples than it was given)."""
    data, run, _ = trained
    rows = _rows(data)[:8]
    for column in ("image", "caption", "sound", "track", "body_length_cm", "body_width_cm",
                   "weight_g", "air_temp_c"):
        rows[2][column] = ""
    support = _write(data / "support-empty.csv", rows)
    classifier = FewShotClassifier(run)
    samples = classifier.load_samples(support, labelled=True)
    with pytest.raises(ModalityError) as caught:
        classifier.fit(samples, samples.labels)
    assert caught.value.row == 3
    assert main(["predict", str(run), "--support", str(support), "--query",
                 str(support)]) != 0
    assert f"{support}, row 3:" in capsys.readouterr().err


def test_a_lacking_column_is_warned_of_once_and_on_the_command_line_in_words(
        trained, capsys, monkeypatch) -> None:
    """predict warned twice of a query table's lacking column (the table's loader, then the
    classifier, in other words), and the command line showed each warning with the library's
    source line under it."""
    data, run, _ = trained
    rows = _rows(data)
    fields = [c for c in rows[0] if c != "sound"]
    support = _write(data / "support-nosound.csv", rows[:8])
    query = _write(data / "query-nosound.csv",
                   [{k: row[k] for k in fields} for row in rows[8:11]], fields)
    with pytest.warns(UserWarning) as caught:
        main(["predict", str(run), "--support", str(support), "--query", str(query)])
    assert len([w for w in caught if "sound" in str(w.message)]) == 1
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["metamodal", "predict", str(run), "--support",
                                     str(support), "--query", str(query)])
    with monkeypatch.context() as patched:
        patched.setattr(warnings, "showwarning", warnings.showwarning)  # restored after
        assert main() == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {query}: no column ['sound']") and ".py:" not in err


def test_tabular_columns_are_matched_by_name(trained, tmp_path: Path) -> None:
    data, run, saved = trained
    clf = FewShotClassifier.load(saved)
    columns = ["body_length_cm", "body_width_cm", "weight_g", "air_temp_c"]
    rows = [{"id": r["id"], **{c: r[c] for c in columns}} for r in _rows(data)[8:]
            if all(r[c] for c in columns)][:8]
    shuffled = tmp_path / "shuffled"
    shutil.copytree(data, shuffled)
    toml = (shuffled / "dataset.toml").read_text()
    toml = toml[:toml.index("[modalities.image]")] + (
        '[modalities.measurements]\nkind = "tabular"\n'
        f"columns = {json.dumps(columns[::-1])}\n")
    (shuffled / "dataset.toml").write_text(toml)
    _write(shuffled / "samples.csv",
           [{**r, "species": "x", "family": "f"} for r in rows],
           ["id", "species", "family", *columns[::-1]])
    same = tmp_path / "same.csv"
    _write(same, rows, ["id", *columns[::-1]])
    expected = clf.predict_proba(_write(tmp_path / "q.csv", rows))
    np.testing.assert_allclose(clf.predict_proba(same), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(shuffled), expected, rtol=1e-5, atol=1e-6)


def test_a_table_with_some_of_a_tabular_modality_s_columns_names_the_missing_ones(
        trained, tmp_path: Path) -> None:
    """It said no modality had a column, though weight_g is one of measurements'."""
    data, _, saved = trained
    clf = FewShotClassifier.load(saved)
    columns = ["body_length_cm", "body_width_cm", "weight_g", "air_temp_c"]
    rows = [{"id": r["id"], **{c: r[c] for c in columns}} for r in _rows(data)[8:]
            if all(r[c] for c in columns)][:4]
    some = _write(tmp_path / "some.csv", [{"id": r["id"], "weight_g": r["weight_g"]}
                                          for r in rows])
    with pytest.raises(ModalityError, match="measurements lacks body_length_cm, body_width_cm, "
                                            "air_temp_c") as caught:
        clf.predict(some)
    assert caught.value.file == str(some) and "leave a cell empty" in caught.value.fix
    rows[1]["air_temp_c"] = ""  # what the fix says: an empty cell is a missing value
    assert len(clf.predict(_write(tmp_path / "all.csv", rows))) == 4


def test_a_checkpoint_that_cannot_be_written_is_an_output_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's writer reports a full disk or a file-size limit as a RuntimeError ("unexpected
    pos"), which ended training in a bare traceback. It is an OutputError naming
    checkpoint.pt, and no temporary file is left."""
    from metamodal.train import checkpoint

    def failing(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 25 vs 16")

    monkeypatch.setattr(checkpoint.torch, "save", failing)
    with pytest.raises(OutputError, match="cannot be written") as raised:
        checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert raised.value.file == str(tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []
