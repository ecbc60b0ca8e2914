"""Optimisation-based learners through the whole pipeline: train (meta-batches), evaluate
episode by episode, the CLI, `FewShotClassifier`, and run directories that do not match."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import RunError
from metamodal.evaluate.protocol import evaluate
from metamodal.runs.directory import load_run, load_run_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A small dataset, a MAML run and a ProtoNet run trained through the CLI."""
    root = tmp_path_factory.mktemp("gradient")
    data = root / "data"
    assert main(["make-synthetic", str(data), "--classes", "24", "--per-class", "8",
                 "--image-size", "16", "--seed", "4"]) == 0
    config = root / "config.toml"
    config.write_text('dim = 16\nval_episodes = 5\nval_every = 0\nmodalities = ["image", '
                      '"measurements", "caption"]\n[preprocess.image]\nsize = 16\n')
    common = ["--data", str(data), "--config", str(config), "--ways", "3", "--shots", "1",
              "--queries", "2", "--steps", "4", "--no-progress", "--device", "cpu"]
    assert main(["train", "--out", str(root / "maml"), "--learner", "maml", "--meta-batch",
                 "2", "--inner-steps", "2", "--eval-steps", "3", *common]) == 0
    assert main(["train", "--out", str(root / "protonet"), *common]) == 0
    return data, root / "maml", root / "protonet"


def test_the_run_records_the_inner_loop_options(runs: tuple[Path, Path, Path]) -> None:
    run = load_run(runs[1])
    assert run.config.meta_batch == 2
    assert run.config.learner_options == {"inner_steps": 2, "eval_steps": 3}
    assert (run.model.learner.inner_steps, run.model.learner.eval_steps) == (2, 3)
    assert not run.model.capabilities().embeds_once


def test_evaluation_runs_each_episode_through_adapt_predict(
    runs: tuple[Path, Path, Path]
) -> None:
    run = load_run(runs[1])
    data = load_run_data(run)
    result = evaluate(run.model, data.store, data.split.test, ways=3, shots=1, queries=2,
                      episodes=6, seed=2)
    sampler = EpisodeSampler(data.store, data.split.test, 3, 1, 2, seed=2)
    accuracies = []
    with torch.no_grad():
        for i in range(6):
            episode = sampler[i]
            logits = run.model.episode_logits(episode)
            accuracies.append(float((logits.argmax(1) == episode.query_labels).float().mean()))
    assert result.accuracies == pytest.approx(accuracies)
    # hiding a modality is done in the batch: a model that saw only 'image' sees no caption
    only_image = evaluate(run.model, data.store, data.split.test, ways=3, shots=1, queries=2,
                          episodes=6, seed=2, modalities=["image"])
    assert only_image.modalities == ["image"]


def test_cli_eval_json_for_a_maml_run(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    assert main(["eval", str(runs[1]), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--episodes-count", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 5 and 0 <= result["accuracy"] <= 1 and result["ways"] == 3


def _tables(data: Path, run: Path) -> tuple[Path, Path]:
    test = load_run(run).split.test[:3]
    with (data / "samples.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["species"] in test]
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_class.setdefault(row["species"], []).append(row)
    paths = []
    for name, chosen in (("support", [r[0] for r in by_class.values()]),
                         ("query", [r for rs in by_class.values() for r in rs[1:3]])):
        path = data / f"{name}-maml.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(chosen[0]))
            writer.writeheader()
            writer.writerows(chosen)
        paths.append(path)
    return paths[0], paths[1]


def test_classifier_keeps_the_support_samples_and_round_trips(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, maml, protonet = runs
    support, query = _tables(data, maml)
    clf = FewShotClassifier(maml).fit(support)
    assert clf.support_.embeddings is None and set(clf.support_.batch) == {
        "image", "measurements", "caption"}
    proba = clf.predict_proba(query)
    assert proba.shape == (6, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    clf.save(tmp_path / "saved")
    again = FewShotClassifier.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict_proba(query), proba, rtol=1e-5, atol=1e-6)
    # a saved support set of another learner's form is refused with the file named
    FewShotClassifier(protonet).fit(support).save(tmp_path / "proto")
    shutil.copyfile(tmp_path / "proto" / "support.safetensors",
                    tmp_path / "saved" / "support.safetensors")
    shutil.copyfile(tmp_path / "proto" / "support.json", tmp_path / "saved" / "support.json")
    with pytest.raises(RunError, match="support.json.*embeddings.*samples"):
        FewShotClassifier.load(tmp_path / "saved")


@pytest.mark.parametrize(("key", "dtype"), [("image.values", torch.float64),
                                          ("caption.values", torch.int32),
                                          ("caption.lengths", torch.int32),
                                          ("image.present", torch.uint8)])
def test_saved_support_samples_of_another_dtype_are_refused(
    runs: tuple[Path, Path, Path], tmp_path: Path, key: str, dtype: torch.dtype
) -> None:
    """A saved MAML support set whose decoded samples are not of the loaders' dtypes is a
    `RunError` naming the tensor: float64 pixels were a bare RuntimeError inside the encoder
    at predict, int32 token ids were used as they were."""
    data, maml, _ = runs
    support, _ = _tables(data, maml)
    FewShotClassifier(maml).fit(support).save(tmp_path / "saved")
    path = tmp_path / "saved" / "support.safetensors"
    tensors = load_file(str(path))
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, str(path))
    with pytest.raises(RunError) as raised:
        FewShotClassifier.load(tmp_path / "saved")
    assert raised.value.column == key and raised.value.file == str(path)
    assert str(dtype).removeprefix("torch.") in raised.value.message


def test_a_run_directory_of_one_learner_loaded_as_another(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, maml, protonet = runs
    mixed = tmp_path / "mixed"
    shutil.copytree(protonet, mixed)
    shutil.copyfile(maml / "model.safetensors", mixed / "model.safetensors")
    # MAML keeps no output-layer weights; the ProtoNet config expects its temperature
    with pytest.raises(RunError, match="model.safetensors.*another learner"):
        load_run(mixed)
