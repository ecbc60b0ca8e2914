"""Hostile flags and outputs of the commands beyond ``train``: where their files go, counts
that would allocate without end, lists that are not lists, runs combined with themselves and
outputs that would replace a run or a dataset. Each must end in a typed one-line error (exit
status 2) that leaves every input as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from metamodal import api
from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.config import MAX_EPISODES, TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, ModalityError, OutputError
from metamodal.mapping.retrieval import retrieval_ranks
from metamodal.train.trainer import Trainer

EPISODES = ["--ways", "2", "--queries", "1"]
RANGE = "outside its range"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, run, a second run of another seed) of a tiny model."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_synthetic(root / "data", classes=15, per_class=4, image_size=8, seed=1)
    made = []
    for seed in (0, 1):
        config = TrainConfig(data=str(data), steps=2, ways=2, shots=1, queries=1, dim=8,
                             val_every=0, val_episodes=2, device="cpu", cache=False, seed=seed,
                             preprocess={"image": {"size": 8}})
        Trainer(config, root / f"run{seed}", progress=False).fit()
        made.append(root / f"run{seed}")
    return data, made[0], made[1]


def _digest(directory: Path) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_an_output_file_that_is_a_directory_or_below_a_file_is_a_typed_error(
        runs, tmp_path: Path, capsys) -> None:
    data, run, _ = runs
    (tmp_path / "file").write_text("x")
    _refused(["episodes", str(data), "--out", str(tmp_path), *EPISODES, "--runs", "2"], capsys,
             str(tmp_path), "is a directory")
    _refused(["episodes", str(data), "--out", str(tmp_path / "file" / "e.jsonl"), *EPISODES,
              "--runs", "2"], capsys, str(tmp_path / "file"), "is a file")
    _refused(["eval", str(run), "--json", str(tmp_path), *EPISODES, "--episodes-count", "2"],
             capsys, "is a directory")
    _refused(["inspect", str(data), "--json", str(tmp_path)], capsys, "is a directory")
    assert (tmp_path / "file").read_text() == "x"


def test_a_classifier_saved_over_a_file_is_an_output_error(runs, tmp_path: Path) -> None:
    data, run, _ = runs
    (tmp_path / "file").write_text("x")
    clf = FewShotClassifier(run)
    support = clf.load_samples(data / "samples.csv", labelled=True)
    clf.fit(support, support.labels)
    with pytest.raises(OutputError) as caught:
        clf.save(tmp_path / "file")
    assert caught.value.file == str(tmp_path / "file")


@pytest.mark.parametrize("argv", [
    ["episodes", "{data}", "--out", "{tmp}/e.jsonl", *EPISODES, "--runs", "{huge}"],
    ["eval", "{run}", *EPISODES, "--episodes-count", "{huge}"],
    ["ensemble", "{run}", "{run2}", "--out", "{tmp}/ens", *EPISODES, "--episodes-count",
     "{huge}"],
    ["zero-shot", "{run}", "--episodes-count", "{huge}"],
])
def test_episode_counts_are_bounded(runs, tmp_path: Path, capsys, argv: list[str]) -> None:
    """Refused at once, where 10^8 episodes held gigabytes after a minute."""
    data, run, run2 = runs
    values = {"data": data, "run": run, "run2": run2, "tmp": tmp_path, "huge": MAX_EPISODES + 1}
    _refused([a.format(**values) for a in argv], capsys, f"at most {MAX_EPISODES:,}")


@pytest.mark.parametrize("flag", ["--episodes", "--config"])
def test_an_episode_or_config_file_that_is_a_fifo_is_refused_without_blocking(
        runs, tmp_path: Path, capsys, flag: str) -> None:
    data, run, _ = runs
    fifo = tmp_path / "file"
    os.mkfifo(fifo)
    argv = (["eval", str(run), "--episodes", str(fifo)] if flag == "--episodes" else
            ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--config", str(fifo)])
    status: list[int] = []
    worker = threading.Thread(target=lambda: status.append(main(argv)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the reader, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail(f"reading a FIFO given to {flag} hung")
    assert status == [2] and "FIFO" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["zero-shot", "{run}", "--shots", "a,b"], ("--shots", "'a'")),
    (["zero-shot", "{run}", "--shots", ""], ("--shots", "no values")),
    (["eval", "{run}", "--modalities", ","], ("--modalities", "no values")),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--tasks", "species,genus",
      "--task-weights", "1,heavy"], ("--task-weights", "'heavy'")),
    (["eval", "{run}", "--ways", "1"], ("ways", "fewer than 2")),
    (["retrieve", "{run}", "--query-modality", "image", "--target-modality", "caption",
      "--baseline-run", "x"], ("--baseline-run expects NAME=RUN", "give --baseline-run NAME=RUN")),
])
def test_list_flags_and_one_way_episodes_are_typed_errors(
        runs, tmp_path: Path, capsys, argv: list[str], words: tuple[str, ...]) -> None:
    data, run, _ = runs
    _refused([a.format(data=data, run=run, tmp=tmp_path) for a in argv], capsys, *words)


@pytest.mark.parametrize(("flag", "value"), [
    ("--align-weight", "nan"), ("--align-weight", "inf"), ("--am3-steps", "-1"),
    ("--align-steps", "0")])
def test_demo_refuses_mapping_settings_even_without_the_mapping(
        tmp_path: Path, capsys, flag: str, value: str) -> None:
    """They were accepted unread under --no-mapping (and refused only with the mapping)."""
    _refused(["demo", "--no-mapping", "--out", str(tmp_path / "d"), flag, value], capsys,
             flag.removeprefix("--").replace("-", "_"), "outside its range")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv", [
    ["eval", "{run}", "--seed", "{big}"],
    ["episodes", "{data}", "--out", "{tmp}/e.jsonl", "--split-seed", "{big}"],
    ["make-synthetic", "{tmp}/s", "--seed", "{big}"],
    ["eval", "{run}", "--seed", "-1"],
])
def test_a_seed_beyond_a_signed_64_bit_integer_is_refused(
        runs, tmp_path: Path, capsys, argv: list[str]) -> None:
    """eval crashed (ValueError: Overflow when unpacking long long) where torch's generator
    took the seed; make-synthetic and episodes accepted it."""
    data, run, _ = runs
    _refused([a.format(data=data, run=run, tmp=tmp_path, big=2**63) for a in argv], capsys,
             "seed", RANGE)
    assert not (tmp_path / "e.jsonl").exists() and not (tmp_path / "s").exists()


def test_a_diverging_training_is_a_typed_error_and_broken_embeddings_never_hit(
        runs, tmp_path: Path, capsys) -> None:
    """A NaN training loss went on to the end (align kept a diverged step's weights as its
    best: NaN similarities ranked every target first, a Recall@1 of 100%)."""
    data, _, _ = runs
    _refused(["train", "--data", str(data), "--out", str(tmp_path / "train"), "--steps", "6",
              "--val-every", "2", "--lr", "1000", "--no-progress", *EPISODES], capsys,
             "key lr", "training diverged", "lower lr")
    _refused(["align", "--modalities", "image,caption", "--data", str(data), "--out",
              str(tmp_path / "align"), "--objective", "margin", "--margin", "1e308"], capsys,
             "align_margin", "from 0 to 1000")  # it made the loss NaN
    broken = retrieval_ranks(torch.full((3, 2), float("nan")), torch.ones(3, 2),
                             torch.tensor([0, 0, 1]))
    assert broken.recall(1, "instance").sum() == 0 and broken.recall(1, "class").sum() == 0


def test_outputs_never_replace_a_device_a_fifo_a_dataset_s_files_or_a_run_s_files(
        runs, tmp_path: Path, capsys) -> None:
    """episodes --out and --json went through a rename that put a file in the place of a
    FIFO (or, as root, of /dev/null), of the dataset's own table or schema, or of an
    aligned run's alignment.safetensors; export --json could replace its own sidecar."""
    data, run, _ = runs
    dataset = Path(shutil.copytree(data, tmp_path / "data"))
    aligned = Path(shutil.copytree(run, tmp_path / "run"))
    (aligned / "alignment.safetensors").write_bytes(b"weights")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _digest(dataset), _digest(aligned)
    shape = [*EPISODES, "--runs", "2"]
    for argv, words in (
            (["episodes", str(dataset), "--out", str(dataset / "samples.csv"), *shape],
             ("key out", "a file of a dataset directory")),
            (["episodes", str(dataset), "--out", str(aligned / "config.toml"), *shape],
             ("key out", "a run's own config.toml")),
            (["episodes", str(dataset), "--out", str(fifo), *shape], ("not a regular file",)),
            (["inspect", str(dataset), "--json", str(dataset / "dataset.toml")],
             ("key json", "a file of a dataset directory")),
            (["inspect", str(dataset), "--json", str(fifo)], ("not a regular file",)),
            (["eval", str(run), "--data", str(dataset), "--json", str(dataset / "samples.csv"),
              *EPISODES], ("key json", "a file of a dataset directory")),
            (["eval", str(aligned), "--json", str(aligned / "alignment.safetensors"),
              *EPISODES], ("key json", "alignment.safetensors")),
            (["export", str(run), str(tmp_path / "m.pt"), "--format", "torchscript",
              "--json", str(tmp_path / "m.json")], ("key json", "the export's own file"))):
        _refused(argv, capsys, *words)
    assert (_digest(dataset), _digest(aligned)) == before and fifo.is_fifo()
    assert not (tmp_path / "m.pt").exists()


def test_a_run_is_never_written_into_a_dataset_or_a_folder_of_other_files(
        runs, tmp_path: Path, capsys) -> None:
    """train / align --out accepted the dataset directory itself or a folder of the user's
    files; the next --overwrite replaced that directory whole: the dataset or the user's
    files were deleted. A folder a run killed early left (only run files) is still fine."""
    data, _, _ = runs
    dataset = Path(shutil.copytree(data, tmp_path / "data"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = _digest(dataset)
    small = ["--steps", "2", "--val-every", "0", "--no-progress"]
    for verb, extra in (("train", ["--ways", "2", "--queries", "1"]),
                        ("align", ["--modalities", "image,caption"])):
        for out, words in ((dataset, ("key out", "dataset directory")),
                           (dataset / "runs" / "a", ("key out", "dataset directory")),
                           (mine, ("key out", "thesis.tex", "holds no run"))):
            _refused([verb, "--data", str(dataset), "--out", str(out), *extra, *small],
                     capsys, *words)
    assert _digest(dataset) == before and (mine / "thesis.tex").read_text() == "years of work"
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.toml").write_text("steps = 2\n")  # a run killed before its log began
    shape = ["--ways", "2", "--queries", "1"]
    assert main(["train", "--data", str(dataset), "--out", str(early), *shape, *small]) == 0
    # --overwrite replaced a finished run's directory whole, with a dataset or notes in it
    (early / "report").mkdir()  # a run's own: replaced with it
    inner = Path(shutil.copytree(dataset, early / "data"))
    (early / "notes.txt").write_text("mine")
    _refused(["train", "--data", str(inner), "--out", str(early), "--overwrite", *shape,
              *small], capsys, "key out", "data, notes.txt besides its run")
    assert (early / "notes.txt").read_text() == "mine" and (inner / "dataset.toml").is_file()
    shutil.rmtree(inner)
    (early / "notes.txt").unlink()
    assert main(["train", "--data", str(dataset), "--out", str(early), "--overwrite", *shape,
                 *small]) == 0
    # --out . from inside the run: a raw OSError after the whole training, leftovers inside
    here = os.getcwd()
    try:
        os.chdir(early)
        _refused(["train", "--data", str(dataset), "--out", ".", "--overwrite", *shape,
                  *small], capsys, "key out", "working directory")
    finally:
        os.chdir(here)
    assert not [p for p in early.iterdir() if p.name.startswith(".")]


def test_no_dataset_or_download_is_written_inside_a_run(runs, tmp_path: Path,
                                                       capsys) -> None:
    """make-synthetic, import and download wrote into a run directory, whose next
    train --overwrite deleted what they wrote."""
    data, run, _ = runs
    inside = Path(shutil.copytree(run, tmp_path / "run"))
    before = _digest(inside)
    photos = tmp_path / "photos"
    for label in ("a", "b"):
        (photos / label).mkdir(parents=True)
        shutil.copy(next((data / "images").iterdir()), photos / label / "1.png")
    for argv in (["make-synthetic", str(inside / "data"), "--classes", "15",
                  "--per-class", "2"],
                 ["import", "imagefolder", str(photos), str(inside / "photos")],
                 ["download", "omniglot", str(inside), "--url", "http://127.0.0.1:9/",
                  "--no-progress"]):
        _refused(argv, capsys, "the run directory")
    assert _digest(inside) == before and sorted(p.name for p in inside.iterdir()) == sorted(
        p.name for p in run.iterdir())


@pytest.mark.parametrize(("argv", "words"), [
    (["episodes", "{data}", "--out", "{tmp}/e.jsonl", "--ways", "1", "--queries", "1"],
     ("ways", RANGE)),
    (["episodes", "{data}", "--out", "{tmp}/e.jsonl", "--queries", "0"], ("queries", RANGE)),
    (["zero-shot", "{run}", "--queries", "0"], ("queries", RANGE)),
    (["zero-shot", "{run}", "--ways", "1"], ("ways", RANGE)),
    (["zero-shot", "{run}", "--am3-steps", "-5"], ("am3_steps", RANGE)),
    (["export", "{run}", "{tmp}/m.onnx", "--opset", "0"], ("opset", RANGE)),
    (["import", "omniglot", "{tmp}", "{tmp}/o", "--stroke-length", "1000000000000"],
     ("stroke_length", RANGE)),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--lr", "1e39"], ("lr", "at most 1000")),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--dist-timeout", "1e300"],
     ("dist_timeout", "a week")),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--max-minutes", "nan"],
     ("max_minutes", "a year")),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--max-minutes", "-1"],
     ("max_minutes", "a year")),
    (["retrieve", "{run}", "--query-modality", "image", "--target-modality", "caption",
      "--device", "nope"], ("key device", "unknown device")),
    # memory grew until the process died / a dataset no verb could use was downloaded
    (["make-synthetic", "{tmp}/s", "--classes", "15", "--per-class", "1000000000"],
     ("per_class", "100,000")),
    (["download", "omniglot", "{tmp}/dl", "--image-size", "100000", "--url",
      "http://127.0.0.1:9/"], ("image_size", "4096")),
    (["download", "omniglot", "{tmp}/dl", "--url", ""], ("key url", "unsupported URL ''")),
])
def test_out_of_range_settings_are_refused_before_any_work(
        runs, tmp_path: Path, capsys, argv: list[str], words: tuple[str, ...]) -> None:
    """Each was accepted: a 1-way episode file that eval rejects, NaN accuracies, a negative
    step count read as 0, an exporter's 100 KB dump, a length inspect refuses later, an
    overflow inside the optimiser or torch's timeout, an AssertionError from torch.cuda."""
    data, run, _ = runs
    _refused([a.format(data=data, run=run, tmp=tmp_path) for a in argv], capsys, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_master_port_outside_tcp_s_range_is_a_typed_error() -> None:
    from metamodal.train.distributed import Launch

    with pytest.raises(ConfigError, match="MASTER_PORT 70000 is not a TCP port"):
        Launch.from_environment({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": "70000"})


def test_an_ensemble_of_a_run_with_itself_or_over_a_dataset_is_refused(
        runs, tmp_path: Path, capsys) -> None:
    data, run, run2 = runs
    _refused(["ensemble", str(run), f"{run.parent}/./{run.name}/", "--out",
              str(tmp_path / "e"), *EPISODES], capsys, "same run")
    dataset = Path(shutil.copytree(data, tmp_path / "data"))
    before = _digest(dataset)
    _refused(["ensemble", str(run), str(run2), "--out", str(dataset), "--overwrite",
              *EPISODES], capsys, "inside the dataset directory")
    assert _digest(dataset) == before


def test_export_refuses_an_ensemble_and_the_run_s_own_files(runs, tmp_path: Path,
                                                           capsys) -> None:
    _, run, run2 = runs
    assert main(["ensemble", str(run), str(run2), "--out", str(tmp_path / "ens"),
                 *EPISODES, "--episodes-count", "4"]) == 0
    _refused(["export", str(tmp_path / "ens"), str(tmp_path / "m.pt"), "--format",
              "torchscript"], capsys, "ensemble")
    own = Path(shutil.copytree(run, tmp_path / "own"))
    before = _digest(own)
    _refused(["export", str(own), str(own / "model.safetensors"), "--overwrite", "--format",
              "torchscript"], capsys, "a file of the run")
    assert _digest(own) == before


def test_export_refuses_a_dataset_s_files_and_another_run_s(runs, tmp_path: Path,
                                                            capsys) -> None:
    """export OUT --overwrite wrote a TorchScript archive over a dataset's dataset.toml (and
    the training data's samples.csv); its --json was refused there already."""
    data, run, run2 = runs
    dataset = Path(shutil.copytree(data, tmp_path / "data"))
    other = Path(shutil.copytree(run2, tmp_path / "other"))
    before = _digest(dataset), _digest(other)
    for out, words in ((dataset / "dataset.toml", "a file of a dataset directory"),
                       (dataset / "samples.csv", "a file of a dataset directory"),
                       (other / "config.toml", "a run's own config.toml")):
        _refused(["export", str(run), str(out), "--overwrite", "--format", "torchscript",
                  "--no-check"], capsys, "key out", words)
    assert (_digest(dataset), _digest(other)) == before


def test_python_api_misuse_is_a_config_error(runs, tmp_path: Path) -> None:
    """Wrong types handed to the API's entry points: a typed error, not an AttributeError."""
    from metamodal import api
    from metamodal.data.dataset import load_dataset
    from metamodal.data.episode_files import protocol_episodes
    from metamodal.evaluate.protocol import EvalResult
    from metamodal.runs import load_run

    data, run, _ = runs
    with pytest.raises(ConfigError, match="not a EvalSettings"):
        api.evaluate(run, settings={"ways": 2})
    for call in (lambda: load_dataset(None), lambda: load_run(None), lambda: api.compare("a")):
        with pytest.raises(ConfigError, match="not a"):
            call()
    a = EvalResult(0.8, 0.02, 0.8, 2, 5, 1, 15, 0, accuracies=[0.7, 0.9], episode_digest="x")
    b = EvalResult(0.6, 0.02, 0.6, 2, 5, 1, 15, 0, accuracies=[0.6, 0.6], episode_digest="y")
    with pytest.raises(ConfigError, match="different episodes"):
        api.compare({"a": a, "b": b})
    ids, labels = ["a1", "a2", "b1", "b2"], ["a", "a", "b", "b"]
    with pytest.raises(ConfigError, match="4 ids but 1 groups"):
        protocol_episodes(ids, labels, ways=2, shots=1, queries=1, runs=1, groups=["G"],
                          within="*")
    with pytest.raises(ConfigError, match="no queries"):
        protocol_episodes(ids, labels, ways=2, shots=1, queries=0, runs=1)


@pytest.mark.parametrize("flags", [
    ["--baseline-steps", "0"], ["--steps", "0"], ["--maml-steps", "0"], ["--dim", "0"],
    ["--maml-lr", "nan"], ["--maml-lr", "inf"], ["--maml-inner-steps", "0"],
    ["--per-class", "1"],
])
def test_the_demo_checks_every_setting_before_any_work(tmp_path: Path, capsys,
                                                       flags: list[str]) -> None:
    """Each was refused only after the dataset was generated, or after seven runs trained."""
    _refused(["demo", "--out", str(tmp_path / "demo"), "--no-progress", *flags], capsys,
             flags[0].removeprefix("--").replace("-", "_"))
    assert not (tmp_path / "demo").exists()


def test_the_demo_api_checks_its_precision_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision"):
        api.demo(tmp_path / "demo", precision="fp8")
    assert not (tmp_path / "demo").exists()


def test_a_huge_inner_learning_rate_is_refused_and_named(runs, tmp_path: Path, capsys) -> None:
    """1e300 trained into a NaN loss whose fix named lr, not learner_options.inner_lr."""
    data, _, _ = runs
    _refused(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--learner", "maml",
              "--inner-lr", "1e300", "--steps", "2", "--no-progress", *EPISODES], capsys,
             "learner_options.inner_lr", "at most 1000")
    assert not (tmp_path / "m").exists()


def test_a_demo_directory_made_with_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    """The demo reused OUT/data and OUT/runs whatever sizes were asked for, and reported on
    the old ones without a word."""
    from metamodal.api.demo_record import SETTINGS_RECORD, check_demo_settings
    from metamodal.api.settings import DemoSettings

    out = tmp_path / "demo"
    check_demo_settings(out, DemoSettings(classes=30), None)  # what a first demo records
    _refused(["demo", "--out", str(out), "--classes", "60", "--no-progress"], capsys,
             "key classes", "classes = 30, not 60", "another --out")
    check_demo_settings(out, DemoSettings(classes=30, episodes=7), None)  # evaluation only
    assert sorted(p.name for p in out.iterdir()) == [SETTINGS_RECORD]
    (out / SETTINGS_RECORD).write_text("[" * 5000)
    _refused(["demo", "--out", str(out), "--no-progress"], capsys, SETTINGS_RECORD,
             "cannot be read")


@pytest.mark.parametrize(("argument", "value"), [
    ("out", 5), ("out", ""), ("data", 5), ("settings", {"steps": 5}), ("echo", None),
    ("progress", "no"), ("quick", "yes")])
def test_demo_arguments_of_the_wrong_type_are_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argument: str, value: object) -> None:
    monkeypatch.chdir(tmp_path)
    arguments = {"out": tmp_path / "demo", argument: value}
    with pytest.raises(ConfigError, match=f"demo: {argument}") as caught:
        api.demo(**arguments)
    assert caught.value.column == argument and not any(tmp_path.iterdir())


def test_a_report_never_replaces_a_page_it_did_not_write(tmp_path: Path) -> None:
    """report_results replaced a user's index.html and results.md; '' wrote into the working
    directory; a result that was not an EvalResult was an AttributeError."""
    from metamodal.evaluate.result import EvalResult

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>")
    (site / "results.md").write_text("notes")
    with pytest.raises(OutputError, match="no report wrote"):
        api.report_results(site, {})
    assert (site / "index.html").read_text() == "<h1>my homepage</h1>"
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "results.md"]
    with pytest.raises(OutputError, match="no report directory"):
        api.report_results("", {})
    with pytest.raises(ConfigError, match="comparison"):
        api.report_results(tmp_path / "r", {"a": 1})
    result = EvalResult(0.9, 0.01, 0.9, 600, 5, 1, 15, 0)
    for _ in range(2):  # a report's own directory is written again
        assert (api.report_results(tmp_path / "r", {"m": result}).path / "index.html").is_file()
    # a user's plots in a folder no report wrote, and a report folder that is a link out
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "figure-1.png").write_bytes(b"my photo")
    (tmp_path / "link").symlink_to(plots)
    for out, words in ((plots, "figure-1.png and no report"), (tmp_path / "link",
                                                                "symbolic link")):
        with pytest.raises(OutputError, match=words):
            api.report_results(out, {"m": result})
    assert sorted(p.name for p in plots.iterdir()) == ["figure-1.png"]
    # a report stopped before its results.json (written last) is written again
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "methods.png").write_bytes(b"half a report")
    assert (api.report_results(stopped, {"m": result}).path / "results.json").is_file()


@pytest.mark.parametrize(("call", "argument"), [
    (lambda run: api.worked_episode(run, ways=None), "ways"),
    (lambda run: api.worked_episode(run, shots=""), "shots"),
    (lambda run: api.worked_episode(run, queries=float("nan")), "queries"),
    (lambda run: api.project(run, modalities="image"), "modalities"),
    (lambda run: api.ensemble(str(run), out="ens"), "runs"),
    (lambda run: api.import_dataset(["imagefolder"], "a", "b"), "layout"),
    (lambda run: api.inspect(run, json=5), "json"),
    (lambda run: api.retrieve(run, "image", "caption", shared=5), "shared"),
    (lambda run: api.train(run, callbacks=print), "callbacks"),
    (lambda run: api.report_results(None, {}), "out"),
    (lambda run: api.worked_episode(run, wayz=5), None),
    (lambda run: api.project(run, modalities=["imag"]), "modalities"),
])
def test_api_arguments_of_the_wrong_type_are_config_errors(runs, call, argument) -> None:
    """Each was a raw TypeError, ValueError, KeyError or AttributeError from deep inside."""
    _, run, _ = runs
    with pytest.raises((ConfigError, ModalityError)) as caught:  # an unknown modality
        call(run)
    assert caught.value.column == argument
