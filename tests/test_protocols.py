"""Published protocols: within-group episode files, the pooled error of fixed runs, and
validation at its own shape."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.data.batch import TensorStore
from metamodal.data.dataset import load_dataset
from metamodal.data.episode_files import protocol_episodes, read_episode_file
from metamodal.data.episodes import EpisodeSampler
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, InsufficientSamplesError
from metamodal.evaluate.stats import mean_ci95, pooled_error
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer
from metamodal.train.validation import resolve_validation_shape

pytestmark = pytest.mark.usefixtures("one_thread")


def _alphabets() -> tuple[list[str], list[str], list[str]]:
    """ids, labels, groups: alphabets A (5 characters), B (3), C (4); 4 drawings each."""
    ids, labels, groups = [], [], []
    for group, characters in (("A", 5), ("B", 3), ("C", 4)):
        for c in range(characters):
            for d in range(4):
                ids.append(f"{group}{c}_{d}")
                labels.append(f"{group}/c{c}")
                groups.append(group)
    return ids, labels, groups


def test_within_group_runs_keep_every_class_of_a_run_in_one_group() -> None:
    ids, labels, groups = _alphabets()
    runs = protocol_episodes(ids, labels, ways=3, shots=1, queries=2, runs=6, seed=4,
                             groups=groups, within=["A", "C"])
    assert [r.name for r in runs] == [f"run0{k}" for k in range(1, 7)]
    assert [r.group for r in runs] == ["A", "C"] * 3
    label_of = dict(zip(ids, labels, strict=True))
    for run in runs:
        assert len(run.support_ids) == 3 and len(run.query_ids) == 6
        assert not set(run.support_ids) & set(run.query_ids)  # different samples
        classes = {label_of[i] for i in run.support_ids + run.query_ids}
        assert len(classes) == 3 and {c.split("/")[0] for c in classes} == {run.group}
        for k, label in enumerate(run.classes):  # support grouped by class, queries too
            assert label_of[run.support_ids[k]] == label
            assert {label_of[i] for i in run.query_ids[2 * k: 2 * k + 2]} == {label}
    again = protocol_episodes(ids, labels, ways=3, shots=1, queries=2, runs=6, seed=4,
                              groups=groups, within=["A", "C"])
    assert [r.support_ids for r in again] == [r.support_ids for r in runs]
    other = protocol_episodes(ids, labels, ways=3, shots=1, queries=2, runs=6, seed=5,
                              groups=groups, within=["A", "C"])
    assert [r.support_ids for r in other] != [r.support_ids for r in runs]


def test_a_group_with_fewer_classes_than_ways_is_a_typed_error() -> None:
    ids, labels, groups = _alphabets()
    with pytest.raises(InsufficientSamplesError, match="'B' has 3 classes") as caught:
        protocol_episodes(ids, labels, ways=4, shots=1, queries=1, runs=2, groups=groups,
                          within="B")
    assert "--ways 3" in caught.value.fix and "A (5)" in caught.value.fix
    with pytest.raises(InsufficientSamplesError, match="no group"):
        protocol_episodes(ids, labels, ways=6, shots=1, queries=1, runs=2, groups=groups,
                          within="*")
    with pytest.raises(ConfigError, match="unknown group"):
        protocol_episodes(ids, labels, ways=2, shots=1, queries=1, runs=2, groups=groups,
                          within="Z")
    with pytest.raises(ConfigError, match="group column"):
        protocol_episodes(ids, labels, ways=2, shots=1, queries=1, runs=2, within="A")
    with pytest.warns(UserWarning, match="skipping 1 group"):
        runs = protocol_episodes(ids, labels, ways=4, shots=1, queries=1, runs=4,
                                 groups=groups, within="*")
    assert [r.group for r in runs] == ["A", "C", "A", "C"]


def test_across_groups_the_episodes_are_those_evaluate_samples() -> None:
    ids, labels, _ = _alphabets()
    classes = sorted(set(labels))[:8]
    runs = protocol_episodes(ids, labels, ways=5, shots=1, queries=3, runs=30, seed=7,
                             classes=classes)
    sampler = EpisodeSampler(TensorStore(ids, labels, {}, {}), classes, 5, 1, 3, seed=7)
    for k, run in enumerate(runs):
        support, query, chosen = sampler.indices(k)
        assert run.support_ids == [ids[i] for i in support.tolist()]
        assert run.query_ids == [ids[i] for i in query.tolist()] and run.classes == chosen
        assert {labels[ids.index(i)] for i in run.support_ids} <= set(classes)


def test_pooled_error_over_query_items_with_an_interval_over_runs() -> None:
    accuracies, counts = [0.9, 0.8, 1.0, 0.85], [20, 20, 20, 20]
    error, half = pooled_error(accuracies, counts)
    mean, mean_half = mean_ci95([1 - a for a in accuracies])
    assert error == pytest.approx(mean) and half == pytest.approx(mean_half)
    # unequal runs: items are pooled, not runs averaged
    error, half = pooled_error([1.0, 0.5], [30, 10])
    assert error == pytest.approx(5 / 40) and half > 0
    assert pooled_error([0.75], [4])[1] != pooled_error([0.75], [4])[1]  # one run: nan
    with pytest.raises(ConfigError):
        pooled_error([0.5, 0.5], [10])


# ----------------------------------------------------------------------------- validation shape


def _store(sizes: dict[str, int]) -> TensorStore:
    labels = [c for c, n in sizes.items() for _ in range(n)]
    return TensorStore([str(i) for i in range(len(labels))], labels, {}, {})


def test_validation_follows_training_lowered_to_what_the_split_supplies() -> None:
    seventeen = _store({f"c{i}": 20 for i in range(17)})
    classes = sorted(set(seventeen.labels))
    config = TrainConfig(ways=20, shots=1, queries=15)
    with pytest.warns(UserWarning, match="ways 20 -> 17"):
        assert resolve_validation_shape(config, seventeen, classes) == (17, 1, 15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_validation_shape(TrainConfig(ways=5), seventeen, classes) == (5, 1, 15)
    small = _store({f"c{i}": 6 for i in range(10)})
    with pytest.warns(UserWarning, match="queries 15 -> 1"):
        assert resolve_validation_shape(TrainConfig(ways=5, shots=5, queries=15), small,
                                        sorted(set(small.labels))) == (5, 5, 1)
    explicit = TrainConfig(ways=20, val_ways=10, val_queries=5)
    assert resolve_validation_shape(explicit, seventeen, classes) == (10, 1, 5)
    with pytest.raises(InsufficientSamplesError, match="needs 20 classes"):
        resolve_validation_shape(TrainConfig(ways=5, val_ways=20), seventeen, classes)
    with pytest.raises(ConfigError, match="val_shots"):
        TrainConfig(val_shots=-1).validate()


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 species in 6 families of 5: the validation split is one family of 5 classes."""
    return make_synthetic(tmp_path_factory.mktemp("protocols") / "data", classes=30,
                          per_class=6, seed=1, image_size=8)


def test_training_wider_than_the_validation_split_runs_to_the_end(families: Path,
                                                                  tmp_path: Path) -> None:
    config = TrainConfig(data=str(families), ways=6, shots=1, queries=2, steps=3, val_every=3,
                         val_episodes=4, dim=8, modalities=["measurements"], device="cpu")
    with pytest.warns(UserWarning, match="ways 6 -> 5"):
        result = Trainer(config, tmp_path / "run", progress=False).fit()
    assert result.steps == 3 and result.best_val_accuracy == result.best_val_accuracy
    with pytest.raises(InsufficientSamplesError):
        Trainer(config.updated({"val_ways": 6}), tmp_path / "run2", progress=False).fit()


def test_episodes_and_eval_on_a_fixed_protocol_through_the_command_line(
    families: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(families), "--out", str(run), "--modalities",
                 "measurements", "--ways", "6", "--val-ways", "4", "--val-queries", "3",
                 "--queries", "2", "--steps", "2", "--dim", "8", "--val-every", "2",
                 "--val-episodes", "3", "--no-progress", "--device", "cpu"]) == 0
    assert load_run(run).config.val_ways == 4
    episodes = tmp_path / "episodes.jsonl"
    assert main(["episodes", str(families), "--split", "test", "--within", "*", "--ways", "3",
                 "--shots", "1", "--queries", "2", "--runs", "5", "--seed", "3", "--out",
                 str(episodes)]) == 0
    assert "wrote 5 runs" in capsys.readouterr().out
    dataset = load_dataset(families)
    family_of = dict(zip(dataset.labels, dataset.groups, strict=True))
    data = load_run_data(load_run(run))
    read = read_episode_file(episodes, data.store)
    assert len(read) == 5
    for episode in read:
        assert set(episode.classes) <= set(data.split.test)
        assert len({family_of[c] for c in episode.classes}) == 1
    out = tmp_path / "result.json"
    assert main(["eval", str(run), "--episodes", str(episodes), "--json", str(out)]) == 0
    assert "error over all 30 query items of 5 runs" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["query_items"] == 30 and result["runs"] == 5
    assert result["error"] == pytest.approx(1 - result["accuracy"])
    assert result["error_ci95"] == pytest.approx(result["ci95"])

    assert main(["episodes", str(families), "--within", "family-00", "--ways", "6",
                 "--shots", "1", "--queries", "1", "--runs", "2", "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    assert "has 5 classes" in capsys.readouterr().err


def test_out_of_range_query_labels_are_typed_errors() -> None:
    from metamodal.data.batch import Episode, ModalityBatch
    from metamodal.errors import ConfigError, DatasetError
    from metamodal.evaluate.stats import confusion_matrices
    from metamodal.model import FewShotModel

    with pytest.raises(ConfigError, match="target lies outside 0..1"):
        confusion_matrices(torch.tensor([0, 1]), torch.tensor([0, 7]), torch.tensor([0, 0]),
                           1, 2)
    with pytest.raises(ConfigError, match="group lies outside"):
        confusion_matrices(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 3]),
                           1, 2)
    model = FewShotModel.build(kinds={"f": "tabular"}, input_info={"f": {"features": 3}}, dim=4)

    def batch(n: int) -> dict:
        return {"f": ModalityBatch(torch.randn(n, 3), torch.ones(n, dtype=torch.bool))}

    episode = Episode(batch(2), batch(2), torch.tensor([0, 1]), torch.tensor([0, 7]),
                      ["a", "b"], ["s0", "s1"], ["q0", "q1"])
    with pytest.raises(DatasetError, match="query labels must lie in 0..1"):
        model.loss(episode)
    episode.query_labels = torch.tensor([1, 0])
    loss, logits = model.loss(episode)
    assert logits.shape == (2, 2) and bool(torch.isfinite(loss))
