"""metamodal search: the space file and its errors, the storage, failed trials, the outputs,
two worker processes sharing one study, and the best trial reproducing its score."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from metamodal import api  # noqa: E402
from metamodal.api.search import FIXED_ATTR  # noqa: E402
from metamodal.config import TrainConfig, load_config  # noqa: E402
from metamodal.errors import ConfigError, RunError  # noqa: E402
from metamodal.search import study as study_module  # noqa: E402
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
"""), TrainConfig(learner="maml"))
    assert [p.name for p in space.params] == ["fusion", "lr", "learner_options.inner_steps",
                                              "encoders.image"]
    assert space.params[2].integer and not space.params[1].integer
    assert space.params[2].grid(space.file) == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="grid search needs"):
        space.grid()  # lr: a float range without a step


def test_an_option_is_checked_against_every_component_a_trial_may_choose(
        tmp_path: Path) -> None:
    space = SearchSpace.from_toml(space_file(tmp_path, """
learner = { choices = ["maml", "anil"] }
"learner_options.inner_steps" = { low = 1, high = 5 }
"encoders.image" = { choices = ["conv4"] }
"encoder_options.image.blocks" = { low = 2, high = 4 }
"""))
    assert len(space.params) == 4
    base = TrainConfig(learner="maml", learner_options={"inner_steps": 2})
    SearchSpace.from_toml(space_file(tmp_path, "lr = { low = 0.001, high = 0.01 }"), base)
    with pytest.raises(ConfigError) as error:  # the base's options do not fit a choice
        SearchSpace.from_toml(space_file(tmp_path, "learner = { choices = ['protonet'] }"),
                              base)
    assert error.value.column == "learner" and "inner_steps" in error.value.message


@pytest.mark.parametrize("text,key,words", [
    ("fusoin = { choices = ['mean'] }", "fusoin", "not a training setting"),
    ("lr = { low = 0.01, high = 0.001 }", "lr", "empty"),
    ("lr = { low = 0.01, high = 0.01 }", "lr", "empty"),
    ("fusion = { choices = [] }", "fusion", "at least one choice"),
    ("seed = { low = 0, high = 9 }", "seed", "may not vary"),
    # each of these passed, then trained no trial or one that means nothing
    ("modalities = { choices = [[]] }", "modalities", "names no modality"),
    ("world_size = { choices = [2] }", "world_size", "recorded by training"),
    ("align_only = { choices = [true] }", "align_only", "trains none"),
    ("dist_backend = { choices = ['gloo', 'nccl'] }", "dist_backend", "each worker's machine"),
    ("compile = { choices = [true, false] }", "compile", "each worker's machine"),
    ("'dim.x' = { choices = [1] }", "dim.x", "not a table"),
    ("dim = { choices = ['wide'] }", "dim", "not a valid training setting"),
    ("lr = { low = 0.0, high = 0.1, log = true }", "lr", "log range"),
    ("lr = 0.01", "lr", "needs { choices"),
    ("lr = { low = 1e-4, high = 1e-2, scale = 'log' }", "lr", "unknown key"),
    ("ways = { low = -5, high = 0 }", "ways", "not a valid training setting"),
    ("'learner_options.inner_steps' = { low = -5, high = 1 }", "learner_options.inner_steps",
     "learner 'protonet' has no hyper-parameter 'inner_steps'"),
    ("learner = { choices = ['maml', 'protonet'] }\n"
     "'learner_options.inner_steps' = { low = 1, high = 5 }", "learner_options.inner_steps",
     "learner 'protonet' has no hyper-parameter"),
    ("fusion = { choices = ['gated', 'nosuch'] }", "fusion", "unknown fusion 'nosuch'"),
    ("'encoders.image' = { choices = ['nosuch'] }", "encoders.image", "unknown encoder"),
    ("'fusion_options.hidden' = { low = 1.0, high = 8.0 }", "fusion_options.hidden",
     "not of type int"),
    ("'encoders.image' = { choices = ['resnet12'] }\n"
     "'encoder_options.image.hidden' = { choices = [8] }", "encoder_options.image.hidden",
     "no hyper-parameter 'hidden'"),
    ("'encoder_options.image.nosuch' = { choices = [1] }", "encoder_options.image.nosuch",
     "no encoder takes"),
    ("dim = { low = 4, high = 8, step = 0.5 }", "dim", "whole step"),
    ("dim = { low = 4, high = 8, step = 0 }", "dim", "step must be"),
    ("dim = { low = 4, high = 8, step = -1 }", "dim", "step must be"),
    ("dim = { low = 4, high = 8, step = 5 }", "dim", "step must be"),
    ("lr = { low = 0.1, high = 0.2, step = nan }", "lr", "step must be"),
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


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_space_that_is_not_a_regular_file_is_refused_without_opening_it(
        tmp_path: Path, kind: str) -> None:
    path = tmp_path / "space.toml"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
        threading.Thread(target=_unblock, args=(path,), daemon=True).start()
    with pytest.raises(ConfigError) as error:
        SearchSpace.from_toml(path)
    assert error.value.file == str(path)
    assert ("FIFO" if kind == "fifo" else "directory") in error.value.message


def _unblock(fifo: Path) -> None:
    """Should the space's reader be blocked on ``fifo``, give it an end of file (no reader:
    nothing to do), so that the test fails instead of hanging."""
    time.sleep(5)
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as error:
        assert error.errno in (errno.ENXIO, errno.ENOENT)


def test_a_grid_of_too_many_combinations_is_refused_before_anything_is_written(
        tmp_path: Path, data: Path) -> None:
    path = space_file(tmp_path, """
dim = { low = 1, high = 100 }
val_episodes = { low = 1, high = 100 }
batch_size = { low = 1, high = 11 }
""")
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as error:
        api.search(data, space=str(path), out=str(out), sampler="grid", trials=1, **TRAIN,
                   **OBJECTIVE)
    assert error.value.file == str(path) and "110,000 combinations" in error.value.message
    assert not out.exists()


def test_a_float_grid_stays_inside_its_range(tmp_path: Path, data: Path) -> None:
    """0.3 + 3 * 0.2 is 0.9000000000000001 in floats: the grid's last point passed the range
    (and modality_dropout's bound, 0.9), and its trial failed with a fix asking for what was
    given. Every grid point is a number of the range, and every trial trains."""
    path = space_file(tmp_path, '"augment.modality_dropout" = { low = 0.3, high = 0.9, '
                                'step = 0.2 }')
    assert SearchSpace.from_toml(path, TrainConfig()).grid() == {
        "augment.modality_dropout": [0.3, 0.5, 0.7, 0.9]}
    tiny = tmp_path / "tiny.toml"
    tiny.write_text("weight_decay = { low = 1e-13, high = 4e-13, step = 1e-13 }")
    assert SearchSpace.from_toml(tiny, TrainConfig()).grid() == {  # not rounded to one value
        "weight_decay": [1e-13, 2e-13, 3e-13, 4e-13]}
    result = api.search(data, space=str(path), out=str(tmp_path / "out"), sampler="grid",
                        trials=4, pruner="none", **TRAIN, **OBJECTIVE)
    assert sorted(t["values"]["augment.modality_dropout"] for t in result.trials) == [
        0.3, 0.5, 0.7, 0.9]
    assert all(t["state"] == "complete" for t in result.trials)


@pytest.mark.parametrize("key,value", [
    ("trials", 0), ("trials", -3), ("trials", 100_001), ("study", ""), ("study", "  "),
    ("study", "s" * 513), ("study", "a\nb"), ("study", "x\x1b[2J"), ("sampler_seed", -1),
    ("sampler_seed", 2**32),
    ("objective_episodes", 100_000_000), ("objective_episodes", 0), ("objective_ways", 1),
    ("objective_queries", 0),
])
def test_a_search_setting_out_of_range_is_refused_before_anything_is_written(
        tmp_path: Path, data: Path, key: str, value: object) -> None:
    space = space_file(tmp_path, "lr = { low = 0.001, high = 0.01 }")
    out = tmp_path / "out"
    settings = {**TRAIN, **OBJECTIVE, "trials": 1, key: value}
    with pytest.raises(ConfigError) as error:
        api.search(data, space=str(space), out=str(out), **settings)
    assert error.value.column == key and error.value.fix
    assert not out.exists()


def test_an_out_that_is_a_file_is_a_config_error(tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "lr = { low = 0.001, high = 0.01 }")
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(ConfigError) as error:
        api.search(data, space=str(space), out=str(out), trials=1, **TRAIN, **OBJECTIVE)
    assert error.value.column == "out" and error.value.file == str(out)
    assert out.read_text() == "not a folder"


def test_a_storage_that_cannot_be_opened_or_is_corrupt_is_a_typed_error(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    common = dict(space=str(space), out=str(tmp_path / "out"), trials=1, **TRAIN, **OBJECTIVE)
    with pytest.raises(ConfigError) as error:
        api.search(data, storage="nosuchdb://x/y", **common)
    assert error.value.column == "storage"
    with pytest.raises(ConfigError):
        api.search(data, storage=f"journal:{tmp_path / 'missing' / 'j.log'}", **common)
    for memory in ("sqlite:///:memory:", "sqlite://"):  # a raw traceback from the heartbeat
        with pytest.raises(ConfigError, match="in-memory"):
            api.search(data, storage=memory, **common)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunError) as error:
        api.search(data, storage=f"sqlite:///{corrupt}", **common)
    assert error.value.file == str(corrupt)
    assert corrupt.read_bytes() == b"this is not a database" * 100  # nothing overwritten


def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(
        tmp_path: Path, data: Path) -> None:
    # a modality the dataset lacks: only training finds out
    space = space_file(tmp_path, "modalities = { choices = [['image'], ['nonexistent']] }")
    out = tmp_path / "out"
    result = api.search(data, space=str(space), out=str(out), trials=2, sampler="grid",
                        pruner="none", **TRAIN, **OBJECTIVE)
    states = {t["values"]["modalities"]: t for t in result.trials}
    assert states["nonexistent"]["state"] == "fail"
    assert "nonexistent" in states["nonexistent"]["error"]
    assert states["image"]["state"] == "complete" and 0 <= states["image"]["score"] <= 1
    assert result.best["values"] == {"modalities": "image"}
    assert load_config(out / "best.toml").modalities == ["image"]
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 3 and "nonexistent" in lines[2] + lines[1]
    assert (out / "report" / "history.png").stat().st_size > 0
    assert "<- best" in result.table()


def test_a_search_whose_every_trial_failed_is_a_config_error_naming_the_first_failure(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "modalities = { choices = [['nonexistent']] }")
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as error:
        api.search(data, space=str(space), out=str(out), trials=1, pruner="none", **TRAIN,
                   **OBJECTIVE)
    assert "every trial" in error.value.message and "nonexistent" in error.value.message
    assert error.value.file == str(space)
    assert "nonexistent" in (out / "trials.csv").read_text()


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


def test_a_second_study_in_the_same_out_is_refused_and_a_killed_trial_is_replaced(
        tmp_path: Path, data: Path) -> None:
    """A second --study in the same --out replaced the first study's trial runs (its numbers
    start at 0 too); a trial whose worker was killed counted toward --trials, so a rerun
    never replaced it and the search ended without a best trial."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    out = tmp_path / "out"
    run = dict(space=str(space), out=str(out), pruner="none", **TRAIN, **OBJECTIVE)
    api.search(data, trials=1, **run)
    before = sorted(p.read_bytes() for p in (out / "trials" / "0000").rglob("*") if p.is_file())
    with pytest.raises(ConfigError, match="not trials of study 'other'") as caught:
        api.search(data, trials=1, study="other", **run)
    assert caught.value.column == "study" and "0000" in caught.value.message
    assert sorted(p.read_bytes() for p in (out / "trials" / "0000").rglob("*")
                  if p.is_file()) == before
    # a worker killed mid-trial: Optuna's heartbeat fails its trial, with no error of ours
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name="metamodal", storage=storage)
    killed = study.ask()
    killed.set_user_attr("run", str(out / "trials" / f"{killed.number:04d}"))
    study.tell(killed, state=optuna.trial.TrialState.FAIL)
    result = api.search(data, trials=2, **run)
    states = sorted(t["state"] for t in result.trials)
    assert states == ["complete", "complete", "fail"] and result.best is not None
    reason = next(t["error"] for t in result.trials if t["number"] == killed.number)
    assert "worker stopped" in reason and "worker stopped" in result.table()


def test_two_studies_started_together_on_one_out_cannot_both_train_there(
        tmp_path: Path, data: Path) -> None:
    """Two workers of different studies (a typo in one's --study), or of one name in two
    storages (a typo in one's --storage), started at the same moment both passed the check
    of OUT's trial folders (none existed yet) and trained into the same trials/0000,
    replacing each other's run. The first worker records its study's name and token in
    OUT/study.txt before any trial; a worker of another study is refused by that record."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.txt").write_text("a\n" + "0" * 32 + "\n")  # claimed, nothing trained yet
    run = dict(space=str(space), out=str(out), pruner="none", trials=1,
               storage=f"journal:{tmp_path / 'study.log'}", **TRAIN, **OBJECTIVE)
    for study, column, words in (("b", "study", "holds the trials of study 'a'"),
                                 ("a", "storage", "another study named 'a'")):
        with pytest.raises(ConfigError, match=words) as caught:
            api.search(data, study=study, **run)
        assert caught.value.column == column and caught.value.file == str(out / "study.txt")
    assert not (out / "trials").exists()
    fresh = {**run, "out": str(tmp_path / "fresh"), "storage": f"journal:{tmp_path / 'c.log'}"}
    assert api.search(data, study="c", **fresh).best is not None
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "c.log")))
    token = optuna.load_study(study_name="c", storage=storage).user_attrs["out_token"]
    record = tmp_path / "fresh" / "study.txt"
    assert record.read_text() == f"c\n{token}\n"
    assert len(api.search(data, study="c", **{**fresh, "trials": 2}).trials) == 2
    for damaged in ("", f"c\r\n{token}\n", f"\n{token}\n", "c\n"):
        record.write_text(damaged)  # the fix (remove it) works, where --study '' cannot
        with pytest.raises(ConfigError, match="cannot be read") as caught:
            api.search(data, study="c", **fresh)
        assert f"remove {record}" in caught.value.fix
    record.unlink()
    os.mkfifo(record)  # never opened: it would hang
    with pytest.raises(ConfigError, match="cannot be read"):
        api.search(data, study="c", **fresh)


def test_a_worker_waits_for_the_token_of_a_study_another_has_just_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that loads a study another worker has created, before its token is recorded,
    takes the token that worker records; a study an older metamodal began gets one."""
    search_module = sys.modules["metamodal.api.search"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log")))
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    later = threading.Timer(0.3, lambda: optuna.load_study(
        study_name="s", storage=storage).set_user_attr("out_token", "f" * 32))
    later.start()
    study, token = search_module.open_study(storage, "s", None, None)
    later.join()
    assert token == "f" * 32
    optuna.create_study(study_name="old", storage=storage, direction="maximize"
                        ).set_user_attr(FIXED_ATTR, {})
    monkeypatch.setattr(search_module, "TOKEN_WAIT", 60.0)  # not waited for: begun before
    started = time.monotonic()
    study, token = search_module.open_study(storage, "old", None, None)
    assert time.monotonic() - started < 5 and study.user_attrs["out_token"] == token


def test_a_killed_workers_trial_on_a_journal_is_failed_and_replaced(
        tmp_path: Path, data: Path) -> None:
    """The journal storage keeps no heartbeat of Optuna's: a killed worker's trial stayed
    running for ever and counted toward --trials, so a rerun never replaced it. Trials now
    beat (`TrialHeartbeat`); one whose beat is past the grace is failed when a search starts,
    one beating within it is another worker's and is left running."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    out = tmp_path / "out"
    run = dict(space=str(space), out=str(out), pruner="none", study="j",
               storage=f"journal:{tmp_path / 'study.log'}", **TRAIN, **OBJECTIVE)
    first = api.search(data, trials=1, **run)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log")))
    study = optuna.load_study(study_name="j", storage=storage)
    beat = study.trials[0].user_attrs[study_module.HEARTBEAT_ATTR]  # the finished trial's
    assert abs(beat - time.time()) < 600 and first.trials[0]["state"] == "complete"
    killed, alive = study.ask(), study.ask()
    killed.set_user_attr("run", str(out / "trials" / f"{killed.number:04d}"))
    killed.set_user_attr(study_module.HEARTBEAT_ATTR,
                         time.time() - study_module.HEARTBEAT_GRACE - 60)
    alive.set_user_attr("run", str(out / "trials" / f"{alive.number:04d}"))
    alive.set_user_attr(study_module.HEARTBEAT_ATTR, time.time())
    result = api.search(data, trials=3, **run)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[killed.number] == "fail" and states[alive.number] == "running"
    assert sorted(states.values()) == ["complete", "complete", "fail", "running"]
    assert result.best is not None


def test_a_trial_stopped_by_sigterm_is_failed_and_replaced(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (a timeout, a batch system's preemption) stops a verb by raising
    `metamodal.cli.Terminated`, which Optuna lets through without failing the trial: it
    stayed running, counted toward --trials, and the same search started again trained
    nothing and wrote no best.toml. It is failed as Ctrl-C fails it, and replaced."""
    from metamodal.cli import Terminated

    search_module = sys.modules["metamodal.api.search"]
    real_train = search_module.train

    def terminated(*args, **kwargs):
        raise Terminated("SIGTERM")

    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    out = tmp_path / "out"
    run = dict(space=str(space), out=str(out), pruner="none", study="j", trials=1,
               storage=f"journal:{tmp_path / 'study.log'}", **TRAIN, **OBJECTIVE)
    monkeypatch.setattr(search_module, "train", terminated)
    with pytest.raises(Terminated):
        api.search(data, **run)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log")))
    (stopped,) = optuna.load_study(study_name="j", storage=storage).get_trials()
    assert stopped.state == optuna.trial.TrialState.FAIL and "error" not in stopped.user_attrs
    monkeypatch.setattr(search_module, "train", real_train)
    result = api.search(data, **run)
    assert sorted(t["state"] for t in result.trials) == ["complete", "fail"]
    assert result.best is not None and (out / "best.toml").is_file()


def test_a_trial_heartbeat_beats_until_its_block_ends() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()

    def last() -> float:
        return study.trials[0].user_attrs[study_module.HEARTBEAT_ATTR]

    with study_module.TrialHeartbeat(trial, interval=0.01):
        first = last()
        deadline = time.monotonic() + 30
        while last() == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert last() > first  # beat again while the block runs
    ended = last()
    time.sleep(0.1)
    assert last() == ended  # and not after


def test_continuing_a_study_with_other_fixed_settings_is_refused(
        tmp_path: Path, data: Path) -> None:
    """A study continued with other objective episodes, steps or dataset scored its new
    trials on the episode file written for the first ones (of another dataset's classes,
    even) and ranked them together, without a word."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    run = dict(space=str(space), out=str(tmp_path / "out"), pruner="none")
    api.search(data, trials=1, **run, **TRAIN, **OBJECTIVE)
    other = api.make_synthetic(tmp_path / "other", classes=20, per_class=4, image_size=8,
                               seed=5).path
    for source, changes, key in ((data, {"objective_episodes": 9}, "objective_episodes"),
                                 (data, {"steps": 5}, "steps"), (other, {}, "data")):
        with pytest.raises(ConfigError, match="began (with|on another dataset)") as caught:
            api.search(source, trials=2, **run, **{**TRAIN, **OBJECTIVE, **changes})
        assert caught.value.column == key
    assert len(api.search(data, trials=2, **run, **TRAIN, **OBJECTIVE).trials) == 2


def test_a_study_goes_on_with_its_dataset_at_another_path_but_not_with_it_edited(
        tmp_path: Path, data: Path) -> None:
    """Workers on machines that mount one dataset at different paths were refused: the study
    named its dataset by the first worker's absolute path. It now names it by the digest of
    its schema, sample table and splits, so a copy anywhere goes on and an edited one is
    refused; a study that recorded a path (an older metamodal's) is compared by the path."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    run = dict(space=str(space), out=str(tmp_path / "out"), pruner="none", **TRAIN,
               **OBJECTIVE)
    api.search(data, trials=1, **run)
    mounted = shutil.copytree(data, tmp_path / "mnt" / "shared" / "data")
    result = api.search(mounted, trials=2, **run)
    assert [t["state"] for t in result.trials] == ["complete", "complete"]
    assert Path(result.trials[1]["run"]).is_dir()
    table = mounted / "samples.csv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:-1]))  # a row less
    with pytest.raises(ConfigError, match="began on another dataset") as caught:
        api.search(mounted, trials=3, **run)
    assert caught.value.column == "data" and "a copy at any path" in caught.value.fix

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    study = optuna.load_study(study_name="metamodal", storage=storage)
    fixed = study.user_attrs[FIXED_ATTR]
    fixed["train"]["data"] = str(data.resolve())
    study.set_user_attr(FIXED_ATTR, fixed)
    with pytest.raises(ConfigError, match="began with data") as caught:
        api.search(tmp_path / "mnt" / "shared" / "data", trials=3, **run)
    assert len(api.search(data, trials=3, **run).trials) == 3


@pytest.mark.parametrize(("key", "value"), [("ci95", "abc"), ("config", None),
                                            ("run", ["x"])])
def test_a_damaged_trial_record_is_a_run_error(
        tmp_path: Path, data: Path, key: str, value: object) -> None:
    """A study whose storage lost a trial's config, or holds text for its interval, ended
    in a KeyError or a format ValueError once the trials had run."""
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    run = dict(space=str(space), out=str(tmp_path / "out"), pruner="none", **TRAIN,
               **OBJECTIVE)
    api.search(data, trials=1, **run)
    with sqlite3.connect(tmp_path / "out" / "study.db") as db:  # what a damaged file holds
        if value is None:
            db.execute("DELETE FROM trial_user_attributes WHERE key = ?", (key,))
        else:
            db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = ?",
                       (json.dumps(value), key))
    with pytest.raises(RunError, match=key) as caught:
        api.search(data, trials=1, **run)
    assert caught.value.column == key


def test_a_journal_cut_mid_record_is_refused_at_its_line_and_goes_on_once_cut(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed while appending leaves the journal's last line incomplete: Optuna read
    it without a word, then appended onto that line (a raw JSONDecodeError, and the journal
    unreadable from then on). It is refused at its line, with the cut that repairs it."""
    monkeypatch.setattr(study_module, "JOURNAL_SETTLE", 0.01)
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    journal = tmp_path / "study.log"
    run = dict(space=str(space), out=str(tmp_path / "out"), pruner="none", study="j",
               storage=f"journal:{journal}", **TRAIN, **OBJECTIVE)
    api.search(data, trials=1, **run)
    whole = journal.read_bytes()
    lines = whole.count(b"\n")
    journal.write_bytes(whole[:-20])
    with pytest.raises(RunError, match="incomplete") as caught:
        api.search(data, trials=2, **run)
    assert caught.value.row == lines and caught.value.column == "storage"
    assert journal.read_bytes() == whole[:-20]  # nothing appended onto the cut line
    size = int(caught.value.fix.split("truncate -s ")[1].split()[0])
    os.truncate(journal, size)  # the fix's cut
    assert len(api.search(data, trials=2, **run).trials) >= 2
    damaged = journal.read_bytes().split(b"\n")
    damaged[2] = b'{"op_code": 1, "worker_id": "x", "study_id": 0,'
    journal.write_bytes(b"\n".join(damaged))
    with pytest.raises(RunError, match="cannot be replayed") as caught:
        api.search(data, trials=3, **run)
    assert caught.value.row == 3
    for record in (b'{"op_code": 99}', b'{"op_code": "8", "worker_id": "x"}',
                   b'{"op_code": 2}', b'{"op_code": 0, "worker_id": "x"}'):
        # objects with an op_code Optuna does not know: its bare AssertionError, no line;
        # a known op_code without its operation's fields: its bare KeyError, no line
        damaged[2] = record
        journal.write_bytes(b"\n".join(damaged))
        with pytest.raises(RunError, match="cannot be replayed") as caught:
            api.search(data, trials=3, **run)
        assert caught.value.row == 3


def test_a_journal_damaged_while_the_search_runs_is_a_typed_error_at_its_line(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker killed while appending, during this worker's trial: this worker then
    appended onto the cut line and Optuna's raw JSONDecodeError ended the search. It is the
    error `check_journal` gives at the start, naming the line."""
    search_module = sys.modules["metamodal.api.search"]  # the module, not api.search
    monkeypatch.setattr(study_module, "JOURNAL_SETTLE", 0.01)
    journal = tmp_path / "study.log"

    def objective(*args, **kwargs):
        def score(trial) -> float:
            with journal.open("ab") as handle:  # a record cut short by a killed worker
                handle.write(b'{"op_code": 4, "worker_id": "gone", "trial_')
            return 0.5
        return score

    monkeypatch.setattr(search_module, "objective", objective)
    space = space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')
    with pytest.raises(RunError, match="cannot be replayed") as caught:
        api.search(data, trials=2, space=str(space), out=str(tmp_path / "out"),
                   pruner="none", study="j", storage=f"journal:{journal}", **TRAIN,
                   **OBJECTIVE)
    assert caught.value.column == "storage" and caught.value.row is not None


def test_a_study_file_that_is_a_fifo_a_search_output_or_in_a_dataset_is_refused(
        tmp_path: Path, data: Path) -> None:
    """A FIFO journal hung the search; a journal at OUT/trials.csv (or best.toml, a report
    page) was overwritten by the search's own outputs, the study lost; a SQLite file inside
    the dataset directory was created there."""
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    out = tmp_path / "out"
    common = dict(space=str(space), out=str(out), trials=1, **TRAIN, **OBJECTIVE)
    fifo = tmp_path / "j.fifo"
    os.mkfifo(fifo)
    inside = data / "new.db"
    for storage, words in ((f"journal:{fifo}", "FIFO"),
                           (f"journal:{out / 'trials.csv'}", "writes in its --out"),
                           (f"journal:{out / 'report' / 'index.html'}", "writes in its --out"),
                           (f"sqlite:///{out / 'best.toml'}", "writes in its --out"),
                           (f"sqlite:///{inside}", "inside a dataset directory")):
        with pytest.raises(ConfigError, match=words) as caught:
            api.search(data, storage=storage, **common)
        assert caught.value.column == "storage"
    assert not inside.exists() and not (out / "report").exists()


def test_an_objective_the_data_cannot_supply_records_nothing_in_the_study(
        tmp_path: Path, data: Path) -> None:
    """A search refused for its objective's episodes had already recorded them as the
    study's: the corrected command was then refused, with a fix to give the bad value."""
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    out = tmp_path / "out"
    run = dict(space=str(space), out=str(out), trials=1, pruner="none", **TRAIN)
    with pytest.raises(ConfigError, match="--objective-ways") as caught:
        api.search(data, **run, **{**OBJECTIVE, "objective_ways": 50})
    assert "validation episodes" in caught.value.message
    assert not (out / "study.db").exists() and not any(out.iterdir())
    result = api.search(data, **run, **OBJECTIVE)
    assert [t["state"] for t in result.trials] == ["complete"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_bad_fixed_setting_is_keyed_by_its_flag_not_by_the_space(
        tmp_path: Path, data: Path) -> None:
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    for key, value in (("steps", 0), ("max_minutes", float("nan")), ("dim", 0)):
        with pytest.raises(ConfigError) as caught:
            api.search(data, space=str(space), out=str(tmp_path / "out"), trials=1,
                       **{**TRAIN, key: value}, **OBJECTIVE)
        assert caught.value.column == key and caught.value.file is None


def test_a_worker_with_another_space_or_a_foreign_study_is_refused_before_any_trial(
        tmp_path: Path, data: Path) -> None:
    """A worker whose space chose among other values failed every trial it drew with
    Optuna's "CategoricalDistribution does not support dynamic value space", and those
    failures counted toward --trials; a study no metamodal search made ran a trial first."""
    out = tmp_path / "out"
    run = dict(out=str(out), pruner="none", **TRAIN, **OBJECTIVE)
    api.search(data, space=str(space_file(tmp_path, 'fusion = { choices = ["mean", "gated"] }')),
               trials=1, **run)
    other = tmp_path / "other.toml"
    other.write_text('fusion = { choices = ["mean", "late"] }')
    with pytest.raises(ConfigError, match="another search space") as caught:
        api.search(data, space=str(other), trials=3, **run)
    assert caught.value.file == str(other) and caught.value.column == "fusion"
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    assert len(optuna.load_study(study_name="metamodal", storage=storage).trials) == 1

    foreign = optuna.create_study(storage=storage, study_name="foreign")
    foreign.add_trial(optuna.trial.create_trial(
        params={"fusion": "bogus"}, value=0.5,
        distributions={"fusion": optuna.distributions.CategoricalDistribution(["bogus"])}))
    with pytest.raises(ConfigError, match="no metamodal search made") as caught:
        api.search(data, space=str(other), trials=3, study="foreign",
                   **{**run, "out": str(tmp_path / "out2")},
                   storage=f"sqlite:///{out / 'study.db'}")
    assert caught.value.column == "study"


def test_an_out_in_a_run_or_a_dataset_directory_is_refused_before_anything_is_written(
        tmp_path: Path, data: Path) -> None:
    """`--out RUN` replaced the run's report page with the search's and mixed its trials
    into the run; `--out DATA` wrote them into the dataset directory."""
    space = space_file(tmp_path, "fusion = { choices = ['mean'] }")
    run = tmp_path / "run"
    api.train(run, data=str(data), **{**TRAIN, "steps": 2}, progress=False)
    before = sorted(p.name for p in run.iterdir())
    for out, words in ((run, "is the run directory"), (run / "search", "lies inside the run"),
                       (data, "inside the dataset directory"),
                       (data / "search", "inside the dataset directory")):
        with pytest.raises(ConfigError, match=words) as caught:
            api.search(data, space=str(space), out=str(out), trials=1, **TRAIN, **OBJECTIVE)
        assert caught.value.column == "out"
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (data / "search").exists() and not (data / "study.db").exists()
