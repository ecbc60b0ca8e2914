"""metamodal search: the space file and its errors, the storage, failed trials, the outputs,
two worker processes sharing one study, and the best trial reproducing its score."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from metamodal import api  # noqa: E402
from metamodal.config import TrainConfig, load_config  # noqa: E402
from metamodal.errors import ConfigError, RunError  # noqa: E402
from metamodal.search.space import SearchSpace  # noqa: E402

TRAIN = dict(steps=6, val_every=3, val_episodes=2, dim=8, ways=3, shots=1, queries=2,
             cache=False, device="cpu")
OBJECTIVE = dict(objective_ways=3, objective_queries=2, objective_episodes=12)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return api.make_synthetic(tmp_path_factory.mktemp("search") / "data", classes=20,
                              per_class=4, image_size=8, seed=1).path


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_a_space_names_training_settings_with_dotted_keys(tmp_path: Path) -> None:
    space = SearchSpace.from_toml(space_file(tmp_path, """
fusion = { choices = ["mean", "gated", "late"] }
lr = { low = 1e-4, high = 1e-2, log = true }
"learner_options.inner_steps" = { low = 1, high = 5 }
[encoders]
image = { choices = ["conv4", "resnet12"] }
"""))
    assert [p.name for p in space.params] == ["fusion", "lr", "learner_options.inner_steps",
                                              "encoders.image"]
    assert space.params[2].integer and not space.params[1].integer
    assert space.params[2].grid(space.file) == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="grid search needs"):
        space.grid()  # lr: a float range without a step


@pytest.mark.parametrize("text,key,words", [
    ("fusoin = { choices = ['mean'] }", "fusoin", "not a training setting"),
    ("lr = { low = 0.01, high = 0.001 }", "lr", "empty"),
    ("lr = { low = 0.01, high = 0.01 }", "lr", "empty"),
    ("fusion = { choices = [] }", "fusion", "at least one choice"),
    ("seed = { low = 0, high = 9 }", "seed", "may not vary"),
    ("'dim.x' = { choices = [1] }", "dim.x", "not a table"),
    ("dim = { choices = ['wide'] }", "dim", "not a valid training setting"),
    ("lr = { low = 0.0, high = 0.1, log = true }", "lr", "log range"),
    ("lr = 0.01", "lr", "needs { choices"),
    ("lr = { low = 1e-4, high = 1e-2, scale = 'log' }", "lr", "unknown key"),
    ("ways = { low = -5, high = 0 }", "ways", "not a valid training setting"),
    ("", None, "empty"),
    ("lr = [", None, "not valid TOML"),
])
def test_a_bad_space_is_a_config_error_naming_the_file_and_key(
        tmp_path: Path, text: str, key: str | None, words: str) -> None:
    path = space_file(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        SearchSpace.from_toml(path, TrainConfig())
    assert error.value.file == str(path) and error.value.column == key
    assert words in error.value.message and error.value.fix


def test_a_storage_that_cannot_be_opened_or_is_corrupt_is_a_typed_error(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    common = dict(space=str(space), out=str(tmp_path / "out"), trials=1, **TRAIN, **OBJECTIVE)
    with pytest.raises(ConfigError) as error:
        api.search(data, storage="nosuchdb://x/y", **common)
    assert error.value.column == "storage"
    with pytest.raises(ConfigError):
        api.search(data, storage=f"journal:{tmp_path / 'missing' / 'j.log'}", **common)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunError) as error:
        api.search(data, storage=f"sqlite:///{corrupt}", **common)
    assert error.value.file == str(corrupt)
    assert corrupt.read_bytes() == b"this is not a database" * 100  # nothing overwritten


def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "fusion = { choices = ['mean', 'nonexistent'] }")
    out = tmp_path / "out"
    result = api.search(data, space=str(space), out=str(out), trials=2, sampler="grid",
                        pruner="none", **TRAIN, **OBJECTIVE)
    states = {t["values"]["fusion"]: t for t in result.trials}
    assert states["nonexistent"]["state"] == "fail"
    assert "nonexistent" in states["nonexistent"]["error"]
    assert states["mean"]["state"] == "complete" and 0 <= states["mean"]["score"] <= 1
    assert result.best["values"] == {"fusion": "mean"}
    assert load_config(out / "best.toml").fusion == "mean"
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 3 and "nonexistent" in lines[2] + lines[1]
    assert (out / "report" / "history.png").stat().st_size > 0
    assert "<- best" in result.table()


def test_two_workers_share_one_study_and_the_best_trial_reproduces_its_score(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, """
fusion = { choices = ["mean", "gated"] }
lr = { low = 1e-3, high = 1e-2, log = true }
""")
    out = tmp_path / "out"
    storage = f"journal:{tmp_path / 'study.log'}"
    flags = ["--data", str(data), "--space", str(space), "--out", str(out), "--trials", "4",
             "--sampler", "random", "--storage", storage, "--study", "shared",
             "--pruner", "none"]
    for key, value in {**TRAIN, **OBJECTIVE}.items():
        flags += (["--no-cache"] if key == "cache" else
                  [f"--{key.replace('_', '-')}", str(value)])
    workers = [subprocess.Popen([sys.executable, "-m", "metamodal.cli", "search", *flags,
                                 "--sampler-seed", str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    storage_ = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log")))
    trials = optuna.load_study(study_name="shared", storage=storage_).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))) and 4 <= len(trials) <= 5
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == len(runs) and all(Path(r).is_dir() for r in runs)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    best = max(complete, key=lambda t: t.value)
    again = tmp_path / "again"
    api.train(again, config=load_config(out / "best.toml"), progress=False)
    score = api.evaluate(again, split="val", episodes=str(out / "val-episodes.jsonl"),
                         baseline=False, progress=False).result.accuracy
    assert score == pytest.approx(best.value, abs=1e-9)
