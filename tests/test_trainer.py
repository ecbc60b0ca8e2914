"""Meta-training end to end: learning, resume, run directories, bad configs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from metamodal import api
from metamodal.classifier import FewShotClassifier
from metamodal.config import TrainConfig, load_config
from metamodal.data.episodes import EpisodeSampler
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import (
    ConfigError,
    InsufficientSamplesError,
    MetamodalError,
    RunError,
    UnknownNameError,
)
from metamodal.evaluate.protocol import evaluate
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.checkpoint import CHECKPOINT_FILE
from metamodal.train.trainer import Trainer

SMALL = {"image": {"size": 16}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded dataset: 30 classes x 10 samples."""
    return make_synthetic(tmp_path_factory.mktemp("data") / "tiny", classes=30, per_class=10,
                          seed=3, image_size=16)


def _config(data: Path, **values) -> TrainConfig:
    base = dict(data=str(data), steps=20, ways=3, shots=1, queries=3, dim=16, val_every=10,
                val_episodes=10, checkpoint_every=5, seed=1, preprocess=SMALL, device="cpu",
                )
    base.update(values)
    return TrainConfig(**base)


def test_meta_training_beats_chance_on_unseen_classes(tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_data, steps=300, val_every=100, val_episodes=30, lr=3e-3,
                     modalities=["caption", "measurements", "track"])
    result = Trainer(config, tmp_path / "run", progress=False).fit()
    run = load_run(result.run_dir)
    data = load_run_data(run)
    score = evaluate(run.model, data.store, data.split.test, ways=3, shots=1, queries=3,
                     episodes=200, seed=5)
    # chance is 1/3; a model that learned nothing stays within a few points of it
    assert score.accuracy - score.ci95 > 0.55, score


def test_run_directory_contract(tiny_data: Path, tmp_path: Path) -> None:
    Trainer(_config(tiny_data, steps=10), tmp_path / "run", progress=False).fit()
    run_dir = tmp_path / "run"
    for name in ("config.toml", "model.safetensors", "metrics.jsonl", "preprocessor.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [10]
    assert any("val_acc" in r for r in records)
    assert load_config(run_dir / "config.toml").steps == 10


class _Kill(Exception):
    pass


def _kill_at(step_to_die: int):
    def callback(step: int, values: dict) -> None:
        if step == step_to_die:
            raise _Kill

    return callback


def _interrupted_run(data: Path, run_dir: Path) -> None:
    """A 30-step run killed at step 5, leaving the checkpoint of step 4 in ``run_dir``."""
    with pytest.raises(_Kill):
        Trainer(_config(data, steps=30, val_every=0, checkpoint_every=2), run_dir,
                progress=False, callbacks=[_kill_at(5)]).fit()


@pytest.mark.parametrize(("learner", "extra"), [
    ("protonet", {}), ("nearest-centroid", {}),
    ("maml++", {"meta_batch": 2, "learner_options": {"inner_steps": 2},
                "modalities": ["image", "measurements"]}),
])
def test_resume_after_kill_matches_uninterrupted_run(
    tiny_data: Path, tmp_path: Path, learner: str, extra: dict
) -> None:
    config = _config(tiny_data, steps=20, learner=learner, batch_size=16, **extra)
    Trainer(config, tmp_path / "full", progress=False).fit()
    with pytest.raises(_Kill):
        Trainer(config, tmp_path / "killed", progress=False, callbacks=[_kill_at(13)]).fit()
    killed = torch.load(tmp_path / "killed" / CHECKPOINT_FILE, weights_only=False)
    assert killed["progress"]["step"] == 10
    Trainer(config, tmp_path / "killed", progress=False).fit(resume=True)
    full = torch.load(tmp_path / "full" / CHECKPOINT_FILE, weights_only=False)["model"]
    resumed = torch.load(tmp_path / "killed" / CHECKPOINT_FILE, weights_only=True)["model"]
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    def records(run: str) -> list[dict]:  # the same, except the wall-clock time
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
                for line in lines]

    assert records("full") == records("killed")
    assert json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])[
        "train_seconds"] > 0


def test_training_is_deterministic_under_a_seed(tiny_data: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        Trainer(_config(tiny_data, steps=5, val_every=0), tmp_path / name, progress=False).fit()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("key,value", [("learner", "protonett"), ("fusion", "nope")])
def test_unknown_component_name_lists_registered_names(
    tiny_data: Path, tmp_path: Path, key: str, value: str
) -> None:
    with pytest.raises(UnknownNameError) as error:
        Trainer(_config(tiny_data, **{key: value}), tmp_path / "run", progress=False).fit()
    assert value in str(error.value)
    assert ("protonet" if key == "learner" else "gated") in str(error.value)


def test_am3_is_refused_since_training_episodes_carry_no_descriptions(
    tiny_data: Path, tmp_path: Path
) -> None:
    config = _config(tiny_data, learner="am3", modalities=["measurements"])
    with pytest.raises(ConfigError, match="description") as error:
        Trainer(config, tmp_path / "run", progress=False).fit()
    assert error.value.column == "learner" and "zero-shot" in error.value.fix


def test_unknown_encoder_name_lists_registered_names(tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_data, encoders={"image": "conv5"})
    with pytest.raises(UnknownNameError) as error:
        Trainer(config, tmp_path / "run", progress=False).fit()
    assert "conv4" in str(error.value)


def test_config_rejects_unknown_keys_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('learner = "protonet"\nwayz = 5\n')
    with pytest.raises(ConfigError, match="wayz"):
        load_config(path)
    path.write_text('ways = "five"\n')
    with pytest.raises(ConfigError, match="ways"):
        load_config(path)
    path.write_text("ways = [\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="ways"):
        TrainConfig(data="x", ways=1).validate()


def test_missing_or_corrupt_run_directory(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="config.toml"):
        load_run(tmp_path / "empty")
    run_dir = tmp_path / "run"
    Trainer(_config(tiny_data, steps=5, val_every=0), run_dir, progress=False).fit()
    (run_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match="model.safetensors"):
        load_run(run_dir)
    (run_dir / "config.toml").write_text("[train\n")
    with pytest.raises(RunError, match="corrupt"):
        load_run(run_dir)


def test_sampler_on_run_store_uses_only_test_classes(tiny_data: Path, tmp_path: Path) -> None:
    Trainer(_config(tiny_data, steps=5, val_every=0), tmp_path / "run", progress=False).fit()
    data = load_run_data(load_run(tmp_path / "run"))
    assert not set(data.split.train) & set(data.split.test)
    episode = EpisodeSampler(data.store, data.split.test, 3, 1, 2, seed=0)[0]
    assert set(episode.classes) <= set(data.split.test)


def test_early_stopping_keeps_the_best_validated_weights(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    monkeypatch.setattr(Trainer, "_validate", lambda self, *args: next(scores))
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    trainer = Trainer(_config(tiny_data, steps=60, val_every=5, patience=2), tmp_path / "run",
                      progress=False)

    def snapshot(step: int, values: dict) -> None:
        if "val_acc" in values:
            snapshots[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.callbacks.append(snapshot)
    result = trainer.fit()
    # validations at steps 5, 10, 15, 20: best 0.7 at step 10, then two without improvement
    assert (result.stopped_early, result.steps, result.best_step) == (True, 20, 10)
    assert result.best_val_accuracy == pytest.approx(0.7)
    saved = load_run(tmp_path / "run").model.state_dict()
    for key, value in snapshots[10].items():
        assert torch.equal(saved[key], value), key
    assert any(not torch.equal(v, snapshots[20][k]) for k, v in snapshots[10].items())


def test_cosine_schedule_decays_the_learning_rate(tiny_data: Path, tmp_path: Path) -> None:
    Trainer(_config(tiny_data, steps=20, lr=1e-2), tmp_path / "run", progress=False).fit()
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl")
                                            .read_text().splitlines()) if "lr" in r}
    assert lrs[10] == pytest.approx(0.5e-2)
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "learner,fusion",
    [("protonet", f) for f in ("concat", "mean", "attention", "tensor", "lowrank", "late")]
    + [(lr, "gated") for lr in ("matchingnet", "relationnet", "siamese", "finetune")]
    + [("nearest-centroid", "late")]
    + [("nearest-centroid", "concat")],
)
def test_every_component_trains_and_round_trips_through_the_run(
    tiny_data: Path, tmp_path: Path, learner: str, fusion: str
) -> None:
    config = _config(tiny_data, steps=6, val_every=0, learner=learner, fusion=fusion,
                     batch_size=16, learner_options={"steps": 5} if learner == "finetune" else {},
                     pretrain_classifier="cosine" if fusion == "concat" else "linear")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    if learner in ("nearest-centroid", "finetune"):
        classifier = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=False)
        expected = ["weight"] if fusion == "concat" else ["linear.weight", "linear.bias"]
        assert list(classifier["classifier"]) == expected  # Baseline++ cosine vs linear
    run = load_run(tmp_path / "run")
    trained = trainer.model.state_dict()
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    data = load_run_data(run)
    a = evaluate(run.model, data.store, data.split.test, ways=3, shots=1, queries=2, episodes=8)
    b = evaluate(trainer.model, data.store, data.split.test, ways=3, shots=1, queries=2,
                 episodes=8)
    assert a.accuracies == pytest.approx(b.accuracies)


def test_run_records_an_absolute_dataset_path(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_data.parent)
    config = _config(Path(tiny_data.name), steps=2, val_every=0)
    Trainer(config, tmp_path / "run", progress=False).fit()
    monkeypatch.chdir(tmp_path)
    assert Path(load_run(tmp_path / "run").config.data) == tiny_data.resolve()


def test_an_unfinished_run_is_refused_without_resume_and_discarded_by_overwrite(
    tiny_data: Path, tmp_path: Path
) -> None:
    """A fresh start deleted an unfinished run's checkpoint without a word."""
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_data, run_dir)
    checkpoint = (run_dir / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(RunError, match="unfinished run") as caught:
        Trainer(_config(tiny_data, steps=30, val_every=0, seed=2), run_dir, progress=False).fit()
    assert caught.value.file == str(run_dir) and "--resume" in caught.value.fix
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == checkpoint
    with pytest.raises(_Kill):  # a fresh start must not leave the former checkpoint behind
        Trainer(_config(tiny_data, steps=30, val_every=0, seed=2), run_dir, progress=False,
                callbacks=[_kill_at(3)]).fit(overwrite=True)
    assert not (run_dir / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize(("name", "spoil"), [
    (CHECKPOINT_FILE, "fifo"), ("metrics.jsonl", "fifo"), ("metrics.jsonl", "folder"),
    ("metrics.jsonl", "dangling link"), ("tensorboard", "file"), ("tensorboard", "fifo"),
])
def test_a_run_entry_of_the_wrong_kind_is_refused_before_it_is_opened(
        tiny_data: Path, tmp_path: Path, name: str, spoil: str) -> None:
    """--resume of a run whose checkpoint.pt or metrics.jsonl is a FIFO hung for ever; a
    folder or a dangling link there, or a file where tensorboard/ belongs, was a raw
    traceback. Each is refused, naming it, and the run resumes once it is moved away."""
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_data, run_dir)
    entry = run_dir / name
    kept = tmp_path / "kept"
    entry.rename(kept)
    {"fifo": lambda: os.mkfifo(entry), "folder": entry.mkdir, "file": entry.touch,
     "dangling link": lambda: entry.symlink_to(tmp_path / "gone")}[spoil]()
    config = _config(tiny_data, steps=30, val_every=0, checkpoint_every=2)
    with pytest.raises(RunError) as caught:
        Trainer(config, run_dir, progress=False).fit(resume=True)
    assert caught.value.file == str(entry) and "move it out" in caught.value.fix
    entry.rmdir() if spoil == "folder" else entry.unlink()
    kept.rename(entry)
    assert Trainer(config, run_dir, progress=False).fit(resume=True).steps == 30


def test_a_run_killed_before_its_first_checkpoint_is_unfinished(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Validation before the first checkpoint wrote model.safetensors, and such a killed run
    was taken for finished: train refused it as one, eval used its half-trained weights."""
    run_dir = tmp_path / "run"
    config = _config(tiny_data, steps=30, val_every=2, checkpoint_every=10)
    with pytest.raises(_Kill):
        Trainer(config, run_dir, progress=False, callbacks=[_kill_at(3)]).fit()
    assert (run_dir / "model.safetensors").is_file()
    assert not (run_dir / CHECKPOINT_FILE).exists()
    with pytest.raises(RunError, match="before its first checkpoint") as caught:
        Trainer(config, run_dir, progress=False).fit()
    assert caught.value.file == str(run_dir) and "--overwrite" in caught.value.fix
    for load in (load_run, lambda run: api.evaluate(run, episodes_count=2, progress=False),
                 FewShotClassifier.load):
        with pytest.raises(RunError, match="did not finish") as caught:
            load(run_dir)
        assert caught.value.file == str(run_dir) and "--overwrite" in caught.value.fix
    Trainer(_config(tiny_data, steps=4, val_every=2), run_dir,
            progress=False).fit(overwrite=True)
    assert load_run(run_dir).config.steps == 4  # trained again: finished


def test_a_killed_run_with_a_checkpoint_loads_only_once_resumed_to_its_end(
    tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_data, run_dir)
    with pytest.raises(RunError, match="did not finish") as caught:
        load_run(run_dir)
    assert "--resume" in caught.value.fix
    Trainer(_config(tiny_data, steps=30, val_every=0, checkpoint_every=2), run_dir,
            progress=False).fit(resume=True)
    assert load_run(run_dir).config.steps == 30
    # killed between the last checkpoint and the end record: --resume writes the record
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "end"
    log.write_text("".join(line + "\n" for line in lines[:-1]))
    with pytest.raises(RunError, match="did not finish"):
        load_run(run_dir)
    Trainer(_config(tiny_data, steps=30, val_every=0, checkpoint_every=2), run_dir,
            progress=False).fit(resume=True)
    assert log.read_text().splitlines() == lines[:-1] + [lines[-1]]
    load_run(run_dir)
    # a run whose log is gone (or a directory FewShotClassifier.save wrote) is not told by
    # its log: without a checkpoint it loads, as before the end record decided
    log.unlink()
    (run_dir / CHECKPOINT_FILE).unlink()
    assert load_run(run_dir).config.steps == 30


def test_an_output_directory_inside_a_run_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    """train --out RUN/x was accepted, and training RUN again (--overwrite) deleted it."""
    run_dir = tmp_path / "run"
    Trainer(_config(tiny_data, steps=2, val_every=0), run_dir, progress=False).fit()
    before = _snapshot(run_dir)
    for inner in (run_dir / "inner", run_dir / "a" / "b"):
        with pytest.raises(ConfigError, match="inside the run directory") as caught:
            api.train(str(inner), data=str(tiny_data), steps=2, ways=3, queries=3,
                      val_every=0, preprocess=SMALL, progress=False)
        assert caught.value.column == "out" and str(tmp_path) in caught.value.fix
    assert _snapshot(run_dir) == before


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_finished_run_is_refused_without_overwrite(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    Trainer(_config(tiny_data, steps=4, val_every=0), run_dir, progress=False).fit()
    before = _snapshot(run_dir)
    with pytest.raises(RunError, match="finished run") as caught:
        Trainer(_config(tiny_data, steps=4, val_every=0, seed=3), run_dir, progress=False).fit()
    assert caught.value.file == str(run_dir)
    assert _snapshot(run_dir) == before


def test_overwrite_keeps_the_finished_run_until_the_new_one_is_written(
    tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    Trainer(_config(tiny_data, steps=4, val_every=0), run_dir, progress=False).fit()
    before = _snapshot(run_dir)
    # invalid inputs: nothing is touched
    with pytest.raises(MetamodalError):
        Trainer(_config(tiny_data, steps=4, val_every=0, ways=500), run_dir,
                progress=False).fit(overwrite=True)
    assert _snapshot(run_dir) == before
    # killed while training: the finished run is still there, no staging directory is left
    with pytest.raises(_Kill):
        Trainer(_config(tiny_data, steps=30, val_every=0, seed=2), run_dir, progress=False,
                callbacks=[_kill_at(3)]).fit(overwrite=True)
    assert _snapshot(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # complete: replaced
    Trainer(_config(tiny_data, steps=6, val_every=0, seed=2), run_dir,
            progress=False).fit(overwrite=True)
    assert load_run(run_dir).config.steps == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_a_crafted_checkpoint_runs_no_code(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_data, run_dir)
    monkeypatch.chdir(tmp_path)
    torch.save({"config": {}, "payload": _Payload()}, run_dir / CHECKPOINT_FILE)
    with pytest.raises(RunError, match="corrupt") as caught:
        Trainer(_config(tiny_data, steps=30), run_dir, progress=False).fit(resume=True)
    assert caught.value.file == str(run_dir / CHECKPOINT_FILE)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x80\x02}q\x00."])
def test_a_garbage_checkpoint_is_a_run_error(
    tiny_data: Path, tmp_path: Path, content: bytes
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CHECKPOINT_FILE).write_bytes(content)
    with pytest.raises(RunError) as caught:
        Trainer(_config(tiny_data, steps=3), run_dir, progress=False).fit(resume=True)
    assert caught.value.file == str(run_dir / CHECKPOINT_FILE)


def test_a_checkpoint_with_a_bad_entry_is_a_run_error_naming_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_data, run_dir)
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    state["progress"] = {"step": "x", "unknown": 1}
    torch.save(state, run_dir / CHECKPOINT_FILE)
    with pytest.raises(RunError) as caught:
        Trainer(_config(tiny_data, steps=30), run_dir, progress=False).fit(resume=True)
    assert caught.value.column == "progress"
    state["progress"] = {}
    state["config"]["checkpoint_every"] = 0
    torch.save(state, run_dir / CHECKPOINT_FILE)
    with pytest.raises(ConfigError) as caught:
        Trainer(_config(tiny_data, steps=30), run_dir, progress=False).fit(resume=True)
    assert caught.value.column == "checkpoint_every"
    assert caught.value.file == str(run_dir / CHECKPOINT_FILE)


def test_a_checkpoint_with_a_bad_aligner_entry_is_a_run_error_naming_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The aligner's entry was loaded outside the checks: a raw RuntimeError or TypeError."""
    run_dir = tmp_path / "run"
    with pytest.raises(_Kill):
        Trainer(_config(tiny_data, steps=30, val_every=0, checkpoint_every=2, align_weight=0.5),
                run_dir, progress=False, callbacks=[_kill_at(5)]).fit()
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    for bad in ({"bogus": torch.zeros(1)}, [1, 2, 3]):
        state["aligner"] = bad
        torch.save(state, run_dir / CHECKPOINT_FILE)
        with pytest.raises(RunError) as caught:
            Trainer(_config(tiny_data, steps=30), run_dir, progress=False).fit(resume=True)
        assert caught.value.column == "aligner" and "--overwrite" in caught.value.fix


def test_resuming_on_a_changed_dataset_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    """A run resumed on relabelled data went on from its checkpoint without a word: not the
    run it continued, and not bit-exact with one trained without the kill."""
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    run_dir = tmp_path / "run"
    _interrupted_run(data, run_dir)
    table = data / "samples.csv"
    lines = table.read_text().splitlines()
    first, last = lines[1].split(","), lines[-1].split(",")
    first[1:4], last[1:4] = last[1:4], first[1:4]  # two samples swap their classes
    lines[1], lines[-1] = ",".join(first), ",".join(last)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="not the one the checkpoint was trained on") as caught:
        Trainer(_config(data, steps=30), run_dir, progress=False).fit(resume=True)
    assert caught.value.column == "data" and caught.value.file == str(data)


def test_a_too_small_validation_split_names_the_split_and_the_flags(
    tiny_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(InsufficientSamplesError) as caught:
        Trainer(_config(tiny_data, val_ways=40), tmp_path / "run", progress=False).fit()
    error = caught.value
    assert error.column == "val" and error.file == str(tiny_data / "splits.toml")
    assert "--val-ways" in error.fix and "or fewer" not in error.fix
    with pytest.raises(InsufficientSamplesError) as caught:
        Trainer(_config(tiny_data, ways=40), tmp_path / "run", progress=False).fit()
    assert caught.value.column == "train" and caught.value.file == str(tiny_data / "splits.toml")
    assert not (tmp_path / "run").exists()
