"""Alignment runs end to end through the command line: ``align``, ``train --init-from`` and
``--align-weight``, ``retrieve``, ``zero-shot`` and ``eval --robustness`` with imputation."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metamodal.api import retrieve
from metamodal.cli import main
from metamodal.datasets.synthetic import shared_attributes
from metamodal.errors import ConfigError, DatasetError
from metamodal.evaluate.retrieval import CEILING
from metamodal.mapping import read_descriptions
from metamodal.runs.directory import load_run
from metamodal.runs.weights import WEIGHTS_FILE
from metamodal.train.alignment import ALIGNMENT_FILE, load_alignment

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--dim", "8", "--no-progress", "--device", "cpu"]
EPISODES = ["--ways", "3", "--shots", "1", "--queries", "2"]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small generated dataset and a run of ``metamodal align`` on it: (data, run)."""
    root = tmp_path_factory.mktemp("align")
    data, run = root / "data", root / "align"
    assert main(["make-synthetic", str(data), "--classes", "15", "--per-class", "8",
                 "--image-size", "8", "--seed", "3"]) == 0
    assert main(["align", "--data", str(data), "--modalities", "caption,measurements",
                 "--out", str(run), "--steps", "20", "--batch-size", "32",
                 "--positives", "class", "--val-every", "10", *SMALL]) == 0
    return data, run


def test_make_synthetic_writes_a_description_of_every_class(aligned) -> None:
    data, _ = aligned
    labels = {line.split(",")[1] for line in (data / "samples.csv").read_text().splitlines()[1:]}
    descriptions = read_descriptions(data, labels)
    assert set(descriptions) == labels
    assert all(len(text.split()) >= 8 for text in descriptions.values())


def test_align_writes_a_run_with_its_alignment(aligned) -> None:
    _, run = aligned
    document = tomllib.loads((run / "config.toml").read_text())
    assert document["alignment"]["modalities"] == ["caption", "measurements"]
    assert document["alignment"]["positives"] == "class"
    assert document["train"]["align_only"] is True
    aligner = load_alignment(run)
    assert sorted(aligner.maps) == ["caption->measurements", "measurements->caption"]
    assert (run / ALIGNMENT_FILE).is_file()
    with pytest.raises(ConfigError) as caught:  # as load_run: not torch's own error
        load_alignment(run, device="nope")
    assert caught.value.column == "device"


def test_retrieve_reports_both_directions_with_baselines(aligned, tmp_path: Path,
                                                         capsys) -> None:
    _, run = aligned
    out = tmp_path / "retrieval.json"
    assert main(["retrieve", str(run), "--query-modality", "caption", "--target-modality",
                 "measurements", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    methods = {(r["method"], r["direction"], r["level"]) for r in report["rows"]}
    for method in ("aligned encoders", "baseline: random", "baseline: ridge on untrained "
                   "encoders", "baseline: cca on untrained encoders"):
        for direction in ("caption->measurements", "measurements->caption"):
            for level in ("instance", "class"):
                assert (method, direction, level) in methods
    assert all(0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1
               for r in report["rows"])
    assert report["matches"] and len(report["matches"][0]["targets"]) == 5
    assert "median rank" in capsys.readouterr().out


def test_a_baseline_run_must_read_the_aligned_run_s_inputs(aligned, tmp_path: Path,
                                                           capsys) -> None:
    """A baseline run without one of the modalities ended in a raw KeyError; one trained on
    other data (another vocabulary) was fed the aligned run's token ids (an IndexError, or
    meaningless rows when the sizes happened to agree). Both are typed errors naming the
    baseline; a baseline trained on the same data counts; a name given twice is refused."""
    data, run = aligned
    same = tmp_path / "same"
    assert main(["train", "--data", str(data), "--modalities", "caption,measurements",
                 "--out", str(same), "--steps", "2", "--val-every", "0", *EPISODES,
                 *SMALL]) == 0
    captions = tmp_path / "captions"
    assert main(["train", "--data", str(data), "--modalities", "caption", "--out",
                 str(captions), "--steps", "2", "--val-every", "0", *EPISODES, *SMALL]) == 0
    other_data, other = tmp_path / "other-data", tmp_path / "other"
    assert main(["make-synthetic", str(other_data), "--classes", "15", "--per-class", "6",
                 "--image-size", "8", "--seed", "5"]) == 0
    assert main(["train", "--data", str(other_data), "--modalities", "caption,measurements",
                 "--out", str(other), "--steps", "2", "--val-every", "0", *EPISODES,
                 *SMALL]) == 0
    capsys.readouterr()
    common = ["retrieve", str(run), "--query-modality", "caption", "--target-modality",
              "measurements"]
    for baseline, words in ((captions, f"{captions}, column baseline_runs: baseline run 'b' "
                             "has no encoder of 'measurements'"),
                            (other, f"{other / 'preprocessor.json'}, column loaders.caption: "
                             "baseline run 'b' decodes 'caption' otherwise")):
        assert main([*common, "--baseline-run", f"b={baseline}"]) == 2
        assert words in capsys.readouterr().err
    assert main([*common, "--baseline-run", f"b={same}", "--baseline-run", f"b={other}"]) == 2
    assert "--baseline-run names 'b' twice" in capsys.readouterr().err
    assert main([*common, "--baseline-run", f"b={same}"]) == 0
    assert "ridge on b" in capsys.readouterr().out


def test_resume_continues_only_a_run_of_its_own_verb(aligned, tmp_path: Path,
                                                      capsys) -> None:
    """align --resume of a finished train run exited 0 and reported the run's few-shot
    accuracy as a Recall@1; train --resume of an align run is refused the same way."""
    data, run = aligned
    trained = tmp_path / "trained"
    assert main(["train", "--data", str(data), "--modalities", "caption,measurements",
                 "--out", str(trained), "--steps", "2", "--val-every", "0", *EPISODES,
                 *SMALL]) == 0
    capsys.readouterr()
    assert main(["align", "--data", str(data), "--modalities", "caption,measurements",
                 "--out", str(trained), "--resume", *SMALL]) == 2
    assert "a run of `metamodal train`, which `align --resume` does not" in (
        capsys.readouterr().err)
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", *SMALL]) == 2
    assert "a run of `metamodal align`" in capsys.readouterr().err


def test_the_retrieval_ceiling_ranks_by_what_the_modalities_share(aligned) -> None:
    data, run = aligned
    test = load_run(run).split.test
    # caption and measurements share no attribute: the ceiling knows nothing beyond chance
    shared = shared_attributes("caption", "measurements", 15, seed=3)
    assert set(shared.values()) == {()}
    report = retrieve(run, "caption", "measurements", shared=shared)
    row = report.row(CEILING, "caption->measurements", "class")
    assert row.recall[1][0] < 0.6
    # a ceiling that knows each class exactly ranks its own class first, always
    report = retrieve(run, "caption", "measurements", shared={c: c for c in test})
    for direction in ("caption->measurements", "measurements->caption"):
        assert report.row(CEILING, direction, "class").recall[1] == (1.0, 0.0)
    with pytest.raises(DatasetError, match="no shared attributes given for class"):
        retrieve(run, "caption", "measurements", shared={c: c for c in test[1:]})


def test_retrieval_between_modalities_the_run_did_not_align_is_refused(aligned,
                                                                        capsys) -> None:
    _, run = aligned
    assert main(["retrieve", str(run), "--query-modality", "image", "--target-modality",
                 "caption"]) == 2
    err = capsys.readouterr().err
    assert "not aligned on image" in err and "metamodal align --modalities image,caption" in err


def test_aligning_a_modality_the_data_lacks_is_a_typed_error(aligned, tmp_path: Path,
                                                             capsys) -> None:
    data, _ = aligned
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--modalities",
                 "caption,measurements", "--align-modalities", "caption,image",
                 "--align-weight", "0.5", "--steps", "1", *EPISODES, *SMALL]) == 2
    err = capsys.readouterr().err
    assert "cannot align image" in err and "align two or more of: caption, measurements" in err


def test_init_from_copies_the_aligned_encoders(aligned, tmp_path: Path) -> None:
    data, run = aligned
    out = tmp_path / "init"
    assert main(["train", "--data", str(data), "--out", str(out), "--init-from", str(run),
                 "--modalities", "caption,measurements,track", "--steps", "1", "--lr", "1e-12",
                 "--val-episodes", "5", *EPISODES, *SMALL]) == 0
    before, after = load_file(str(run / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE))
    copied = [k for k in before if k.startswith("backbone.encoders.caption.")]
    assert copied and all(torch.allclose(before[k], after[k], atol=1e-6) for k in copied)
    assert any(k.startswith("backbone.encoders.track.") for k in after)  # fresh, not copied


def test_init_from_a_directory_without_a_run_is_a_typed_error(aligned, tmp_path: Path,
                                                              capsys) -> None:
    data, _ = aligned
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--init-from",
                 str(tmp_path), "--steps", "1", *EPISODES, *SMALL]) == 2
    assert "--init-from needs a finished run" in capsys.readouterr().err


def test_align_weight_trains_jointly_then_zero_shot_and_imputation(aligned, tmp_path: Path,
                                                                   capsys) -> None:
    data, run = aligned
    joint = tmp_path / "joint"
    assert main(["train", "--data", str(data), "--out", str(joint), "--init-from", str(run),
                 "--modalities", "caption,measurements,track", "--align-weight", "0.5",
                 "--positives", "class", "--steps", "10", "--val-episodes", "5", *EPISODES,
                 *SMALL]) == 0
    metrics = [json.loads(line) for line in (joint / "metrics.jsonl").read_text().splitlines()]
    assert all(row["train_loss"] == row["train_loss"] for row in metrics if "train_loss" in row)
    assert load_alignment(joint).modalities == ["caption", "measurements", "track"]

    out = tmp_path / "eval.json"
    assert main(["eval", str(joint), "--robustness", "--episodes-count", "5", "--json",
                 str(out), *EPISODES]) == 0
    imputation = json.loads(out.read_text())["imputation"]
    assert set(imputation) == {"caption", "measurements", "track"}
    assert len(imputation["track"]["imputation"]) == len(imputation["track"]["masking"]) == 4

    out = tmp_path / "zero.json"
    assert main(["zero-shot", str(joint), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--episodes-count", "5", "--am3-steps", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"0-shot", "1-shot"} and report["chance"] == 1 / 3
    assert "AM3 minus prototypes alone at 1-shot" in capsys.readouterr().out

    # classes described by their samples' captions instead of descriptions.toml
    assert main(["zero-shot", str(joint), "--descriptions-from", "caption", "--ways", "3",
                 "--shots", "1", "--queries", "2", "--episodes-count", "5", "--am3-steps", "5",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["descriptions"] == "the caption of each class's samples"
    assert set(report["results"]) == {"0-shot", "1-shot"}
    assert main(["report", str(joint), "--descriptions-from", "caption", "--ways", "3",
                 "--queries", "2", "--episodes-count", "5"]) == 0
    assert "Classes described by the caption of each class's samples." in (
        joint / "report" / "results.md").read_text()
    # the default shape, lowered to 8 samples a class: zero-shot's 5 shots fit as well
    assert main(["report", str(joint), "--episodes-count", "2", "--no-progress"]) == 0
    assert "5-shot" in (joint / "report" / "results.md").read_text()
    with pytest.warns(UserWarning, match="cross-modal sections .* are left out"):
        assert main(["report", str(joint), "--modalities", "caption", "--episodes-count", "2",
                     "--no-progress", *EPISODES]) == 0
    assert "5-shot" not in (joint / "report" / "results.md").read_text()
    assert main(["report", str(joint), "--descriptions-from", "sound"]) == 2
    assert "this run has no modality 'sound'" in capsys.readouterr().err
    for flags, message in ((["--descriptions-from", "image"], "cannot describe classes by"),
                           (["--descriptions-from", "caption", "--descriptions",
                             str(data / "descriptions.toml")], "exactly one source")):
        assert main(["zero-shot", str(joint), *flags, "--episodes-count", "5"]) == 2
        assert message in capsys.readouterr().err

    # a class without a description cannot be predicted zero-shot
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    texts = read_descriptions(copy)
    dropped = load_run(joint).split.test[0]
    (copy / "descriptions.toml").write_text("".join(
        f'"{k}" = "{v}"\n' for k, v in texts.items() if k != dropped))
    assert main(["zero-shot", str(joint), "--data", str(copy), "--ways", "3", "--queries", "2",
                 "--episodes-count", "5"]) == 2
    assert f"no description: {dropped}" in capsys.readouterr().err


@pytest.mark.parametrize("options,key", [
    ({"temperature": float("nan")}, "align_temperature"),
    ({"temperature": "hot"}, "align_temperature"),
    ({"temperature": 0.0}, "align_temperature"),
    ({"margin": -1.0}, "align_margin"),
    ({"margin": float("inf")}, "align_margin"),
    ({"learn_temperature": "yes"}, "align_learn_temperature"),
    ({"direction": 5}, "align_direction"),
    ({"positives": ["class"]}, "align_positives"),
])
def test_alignment_options_of_the_wrong_type_or_range_are_config_errors(options: dict,
                                                                         key: str) -> None:
    from metamodal.errors import ConfigError
    from metamodal.mapping import Aligner

    with pytest.raises(ConfigError) as located:
        Aligner(["a", "b"], dim=4, **options)
    assert located.value.column == key


@pytest.mark.parametrize("change", [
    lambda table: table.pop("modalities"),
    lambda table: table.update(dim="x"),
    lambda table: table.update(dim=10**9),
    lambda table: table.update(modalities="caption"),
    lambda table: table.update(temperature="hot"),
    lambda table: table.update(bogus=1),
])
def test_a_damaged_alignment_table_is_a_run_error_naming_the_file(aligned, tmp_path: Path,
                                                                  change) -> None:
    import tomli_w

    from metamodal.errors import RunError

    _, run = aligned
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    document = tomllib.loads((damaged / "config.toml").read_text())
    change(document["alignment"])
    (damaged / "config.toml").write_text(tomli_w.dumps(document))
    with pytest.raises(RunError) as error:
        load_alignment(damaged)
    assert error.value.file == str(damaged / "config.toml")
