"""Data-parallel meta-training (`metamodal.train.distributed`): two processes started by
torchrun (gloo, CPU, 127.0.0.1) train as one process does, a killed process stops the job and
``--resume`` (or ``torchrun --max-restarts``) finishes it with the same weights, and bad input
gets a clear error.

Tolerances: with one task per process (``meta_batch`` 2 over 2 processes) the float32 weights
are bitwise those of one process, as each process's gradient is one task's and a sum of two
numbers does not depend on their order; the BatchNorm running statistics, composed from each
process's (`RunningStats`), agree to 1e-6. With two tasks per process the gradient sums are
taken in another order, so the comparison is made in float64, to 1e-10 (the largest
difference measured is ~2e-12, on convolution biases that a BatchNorm follows: their
gradient is zero up to rounding, which Adam scales up).

Every launched process tree has a hard time limit and is killed as a group when it passes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, RunError
from metamodal.train.distributed import Job, Launch, RunningStats, join, prepared_fingerprint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
LIMIT_S = 180
"""The hard time limit of one launch (the whole process tree is killed after it)."""


def _config(data: Path, learner: str, meta_batch: int) -> dict[str, Any]:
    return dict(data=str(data), modalities=["image", "measurements"], learner=learner,
                steps=6, meta_batch=meta_batch, ways=2, shots=1, queries=1, dim=8,
                val_every=3, val_episodes=4, checkpoint_every=2, seed=1, device="cpu",
                cache=False, dist_timeout=60.0,
                max_minutes=600.0)  # rank 0's time plan sent to every process (it holds 6 steps)


CASES = {  # name: (learner, meta_batch, float64)
    "protonet-float32": ("protonet", 2, False),
    "maml-float32": ("maml", 2, False),
    "protonet-float64": ("protonet", 4, True),
    "maml-float64": ("maml", 4, True),
}


def _launch(args: list[str], *, timeout: float = LIMIT_S) -> tuple[subprocess.CompletedProcess,
                                                                    float]:
    """Run ``args`` in a session of its own (killed as a whole after ``timeout`` seconds);
    the finished process and its wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{args[:6]} did not end within {timeout} s:\n{err[-3000:]}")
    done = subprocess.CompletedProcess(args, process.returncode, out, err)
    return done, time.monotonic() - started


def _torchrun(*args: str, restarts: int = 0) -> tuple[subprocess.CompletedProcess, float]:
    return _launch([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                    "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", "127.0.0.1:0", "--max-restarts", str(restarts),
                    "--monitor-interval", "0.2", *args])


def _spec(path: Path, runs: list[dict[str, Any]], **extra: Any) -> str:
    path.write_text(json.dumps({"runs": runs, **extra}))
    return str(path)


def _final(run_dir: Path) -> dict[str, Any]:
    """The last checkpoint of a run: its weights, buffers and progress."""
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


def _differences(a: Path, b: Path) -> tuple[float, float]:
    """The largest absolute difference of the parameters and of the floating-point buffers
    (BatchNorm running statistics) of two runs' final states."""
    first, second = _final(a), _final(b)
    assert first["model"].keys() == second["model"].keys()
    params = buffers = 0.0
    for key, x in first["model"].items():
        y = second["model"][key]
        if not x.is_floating_point():
            assert torch.equal(x, y), key  # num_batches_tracked: every update counted
            continue
        gap = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        if "running_" in key:
            buffers = max(buffers, gap)
        else:
            params = max(params, gap)
    return params, buffers


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("dist") / "data", classes=12, per_class=3,
                          image_size=8)


def _runs(data: Path, root: Path, *, evaluate: bool = False) -> list[dict[str, Any]]:
    runs = [{"config": _config(data, learner, batch), "out": str(root / name),
             "float64": wide} for name, (learner, batch, wide) in CASES.items()]
    if evaluate:
        runs[0]["evaluate"] = {"episodes_count": 24, "json": str(root / "eval.json")}
    return runs


@pytest.fixture(scope="module")
def alone(data: Path) -> Path:
    """Every case trained by one process (no torchrun)."""
    root = data.parent / "alone"
    done, _ = _launch([sys.executable, str(WORKER), _spec(data.parent / "alone.json",
                                                          _runs(data, root))])
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def together(data: Path) -> Path:
    """Every case trained by two processes (and the first evaluated by both)."""
    root = data.parent / "together"
    done, _ = _torchrun(str(WORKER), _spec(data.parent / "together.json",
                                           _runs(data, root, evaluate=True)))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_as_one(alone: Path, together: Path, case: str) -> None:
    params, buffers = _differences(alone / case, together / case)
    if CASES[case][2]:  # float64, two tasks per process: sums in another order
        assert params < 1e-10 and buffers < 1e-10, (params, buffers)
    else:  # float32, one task per process: the same sums
        assert params == 0.0, params
        assert buffers < 1e-6, buffers
    one, two = _final(alone / case)["progress"], _final(together / case)["progress"]
    assert (one["best"], one["best_step"], one["step"]) == (two["best"], two["best_step"], 6)


def test_only_rank_0_writes_and_the_run_records_its_world_size(alone: Path,
                                                               together: Path) -> None:
    from metamodal.runs.directory import read_run_config

    run = together / "protonet-float32"
    assert read_run_config(run)["train"]["world_size"] == 2
    assert read_run_config(alone / "protonet-float32")["train"]["world_size"] == 1
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file, rank 0's
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validations = [r["step"] for r in records if "val_acc" in r]
    assert validations == [3, 6]  # once each, not once per process


def test_an_evaluation_shared_out_over_two_processes_gives_that_of_one(together: Path) -> None:
    from metamodal.api import evaluate

    whole = evaluate(together / "protonet-float32", episodes_count=24, baseline=False,
                     progress=False).result
    shared = json.loads((together / "eval.json").read_text())
    assert shared["episodes"] == 24
    assert shared["accuracies"] == pytest.approx(whole.accuracies, abs=0)
    assert shared["episode_digest"] == whole.episode_digest


def test_a_killed_process_stops_the_job_and_resume_finishes_it(data: Path,
                                                               alone: Path) -> None:
    run = data.parent / "killed"
    runs = [{"config": _config(data, "protonet", 2), "out": str(run)}]
    mark = data.parent / "killed-at"
    done, _ = _torchrun(str(WORKER), _spec(data.parent / "kill.json", runs,
                                           kill={"rank": 1, "step": 3, "mark": str(mark)}))
    stopped = time.time() - float(mark.read_text())
    assert done.returncode != 0
    assert stopped < 30, stopped  # the job stops; it does not wait for the dead process
    assert _final(run)["progress"]["step"] == 2 and not _final(run)["progress"]["finished"]
    # the command line, as a user resumes it
    done, _ = _torchrun("-m", "metamodal", "train", "--data", str(data), "--out", str(run),
                        "--resume", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best validation accuracy") == 1  # rank 0 prints
    params, buffers = _differences(alone / "protonet-float32", run)
    assert params == 0.0 and buffers < 1e-6, (params, buffers)


def test_torchrun_restarts_resume_from_the_last_checkpoint(data: Path, alone: Path) -> None:
    run = data.parent / "restarted"
    runs = [{"config": _config(data, "protonet", 2), "out": str(run)}]
    done, _ = _torchrun(str(WORKER), _spec(data.parent / "restart.json", runs, kill={
        "rank": 1, "step": 3, "mark": str(data.parent / "restarted-at")}), restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    params, buffers = _differences(alone / "protonet-float32", run)
    assert params == 0.0 and buffers < 1e-6, (params, buffers)


def test_each_process_reads_its_own_copy_of_the_data(data: Path) -> None:
    """A process other than rank 0 opened rank 0's --data path (sent with its settings), not
    its own copy: another machine's copy at another path was never read, nor compared."""
    own = Path(shutil.copytree(data, data.parent / "own-copy"))
    table = own / "samples.csv"
    lines = table.read_text().splitlines()
    column = lines[0].split(",").index("body_length_cm")
    for row, line in enumerate(lines[1:], start=1):  # its normalisation statistics differ
        cells = line.split(",")
        cells[column] = str(float(cells[column]) + 1) if cells[column] else ""
        lines[row] = ",".join(cells)
    table.write_text("\n".join(lines) + "\n")
    runs = [{"config": _config(data, "protonet", 2), "out": str(data.parent / "own")}]
    done, _ = _torchrun(str(WORKER), _spec(data.parent / "own.json", runs,
                                           vary={"data": [str(data), str(own)]}))
    assert done.returncode != 0 and "decoded other data than rank 0" in done.stderr


# -- bad input, in one process -----------------------------------------------------------


def test_a_world_size_that_does_not_divide_the_meta_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="meta_batch 3 does not divide over 2") as error:
        Job(0, 2).check_trainable(TrainConfig(meta_batch=3), "episodic", multitask=False)
    assert error.value.column == "meta_batch" and "--meta-batch 2 or 4" in error.value.fix
    Job(1, 2).check_trainable(TrainConfig(meta_batch=4), "episodic", multitask=False)
    assert Job(1, 2).shard(range(8, 12)) == range(10, 12)


@pytest.mark.parametrize(("config", "training", "multitask", "key"), [
    (TrainConfig(learner="finetune", meta_batch=2), "supervised", False, "learner"),
    (TrainConfig(align_only=True, meta_batch=2), "episodic", False, "align_only"),
    (TrainConfig(meta_batch=2), "episodic", True, "tasks"),
])
def test_training_that_is_not_shared_out_is_refused(config: TrainConfig, training: str,
                                                    multitask: bool, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        Job(0, 2).check_trainable(config, training, multitask)
    assert error.value.column == key
    Job.alone().check_trainable(config, training, multitask)  # one process trains anything


class _Pair(Job):
    """Rank 0 of a job of two whose other process answers ``other``."""

    def __init__(self, other: Any) -> None:
        super().__init__(0, 2)
        self.other = other

    def all_gather_object(self, value: Any) -> list[Any]:
        return [value, self.other(value)]


def _prepared(data: Path) -> Any:
    from metamodal.runs.prepared import prepare_data

    return prepare_data(data, seed=0, modalities=["measurements"], cache=False)


def test_processes_with_other_settings_or_code_are_refused(data: Path) -> None:
    config = TrainConfig(data="/one/copy", lr=1e-3)

    def other_flags(mine: dict) -> dict:
        return {**mine, "settings": {**mine["settings"], "lr": 2e-3}}

    with pytest.raises(ConfigError, match=r"other settings \(lr: rank 0 0.001, rank 1 0.002\)"):
        _Pair(other_flags).check_same(config)
    with pytest.raises(ConfigError, match="process\\(es\\) 1 run other code than rank 0"):
        _Pair(lambda mine: {**mine, "code": "0123456789abcdef"}).check_same(config)
    with pytest.raises(ConfigError, match="decoded other data"):
        _Pair(lambda mine: "another").check_data(prepared_fingerprint(_prepared(data)), data)
    # the dataset's path may differ between machines; its content is compared
    _Pair(lambda mine: {**mine, "settings": {**mine["settings"]}}).check_same(
        config.updated({"data": "/another/copy"}))


def test_a_rendezvous_that_cannot_be_reached_fails_in_bounded_time() -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    started = time.monotonic()
    expected = f"could not join the job at 127.0.0.1:{port} within 2 s"
    with pytest.raises(RunError, match=expected), join("cpu", timeout_s=2, env=env):
        pass
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("env", "name"), [
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "two", "RANK": "0", "MASTER_PORT": "1"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}, "MASTER_ADDR"),
])
def test_a_bad_launch_environment_is_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as error:
        Launch.from_environment(env)
    assert error.value.column == name


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_compose_to_those_of_one_process(momentum: float | None) -> None:
    """Two processes, as threads, each move a copy of a BatchNorm layer over its shard; the
    composition equals the layer moved over every shard in order."""
    torch.manual_seed(0)
    shards = [[torch.randn(5, 3) * (1 + i) + i for i in range(2)],
              [torch.randn(4, 3) - 2, torch.randn(6, 3), torch.randn(3, 3) * 3]]
    alone = nn.BatchNorm1d(3, momentum=momentum).double()
    for _ in range(3):  # earlier steps: statistics that are not the initial ones
        alone(torch.randn(4, 3, dtype=torch.float64))
    start = {k: v.clone() for k, v in alone.state_dict().items()}
    for shard in shards:
        for x in shard:
            alone(x.double())
    copies = [nn.BatchNorm1d(3, momentum=momentum).double() for _ in shards]
    barrier, sums = threading.Barrier(2), [None, None]

    def all_reduce(rank: int, tensor: torch.Tensor) -> None:
        sums[rank] = tensor.clone()
        barrier.wait()
        total = sums[0] + sums[1]
        barrier.wait()
        tensor.copy_(total)

    def process(rank: int) -> None:
        layer = copies[rank]
        layer.load_state_dict(start)
        stats = RunningStats.of(layer)
        stats.begin()
        for x in shards[rank]:
            layer(x.double())
        stats.compose(rank, 2, lambda t: all_reduce(rank, t), torch.device("cpu"))
        stats.close()

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for copy in copies:
        for key, value in alone.state_dict().items():
            assert torch.allclose(copy.state_dict()[key].double(), value.double(),
                                  rtol=0, atol=1e-12), key


def test_a_shared_evaluation_equals_the_whole(data: Path) -> None:
    """Two processes' shares (each one's gather answered with the other's predictions)
    give the result of one process's evaluation."""
    from metamodal.evaluate.protocol import evaluate
    from metamodal.model import FewShotModel

    prepared = _prepared(data)
    torch.manual_seed(0)
    model = FewShotModel.build(kinds=prepared.preprocessor.kinds(),
                               input_info=prepared.preprocessor.input_info(), dim=8,
                               fusion="mean", learner="protonet").eval()
    classes = prepared.split.train
    options = dict(ways=2, shots=1, queries=1, episodes=7, seed=3)
    whole = evaluate(model, prepared.store, classes, **options)
    shares: dict[int, Any] = {}

    class Gathered(Exception):
        """Rank 1's share is taken; the rest of its evaluation is not needed."""

    class Share:
        def __init__(self, rank: int) -> None:
            self.rank, self.world_size = rank, 2

        def all_gather_object(self, value: Any) -> list[Any]:
            shares[self.rank] = value
            if self.rank == 1:
                raise Gathered
            return [value, shares[1]]

    with pytest.raises(Gathered):
        evaluate(model, prepared.store, classes, **options, shard=Share(1))
    shared = evaluate(model, prepared.store, classes, **options, shard=Share(0))
    assert len(shares[0]) == 4 and len(shares[1]) == 3  # episodes 0, 2, 4, 6 and 1, 3, 5
    assert shared.accuracies == whole.accuracies
    assert (shared.accuracy, shared.macro_f1) == (whole.accuracy, whole.macro_f1)


def test_world_size_is_recorded_not_a_flag() -> None:
    from metamodal.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "r", "--world-size", "2"])
    assert TrainConfig().world_size == 1
    with pytest.raises(ConfigError, match="dist_backend"):
        TrainConfig(dist_backend="mpi").validate()


def test_a_search_is_not_a_torchrun_job(monkeypatch: pytest.MonkeyPatch) -> None:
    from metamodal import api

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="a search is not a torchrun job"):
        api.search("data", space="space.toml", out="out")


def test_a_verb_that_does_not_share_its_work_is_not_a_torchrun_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`torchrun -m metamodal ensemble` (or make-synthetic, report, export, ...) ran the verb
    once in every process, each writing the same --out: one failed on another's output and
    the job exited non-zero though the ensemble was written (with --overwrite they replaced
    each other's). Only train and eval share their work out; the others are refused
    before anything is written. A job of one process runs them as before."""
    from metamodal.cli import main

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    for argv, out in ((["ensemble", "a", "b", "--out", str(tmp_path / "ens")], "ens"),
                      (["make-synthetic", str(tmp_path / "data"), "--classes", "3"], "data")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"metamodal {argv[0]} is not a torchrun job" in err and "WORLD_SIZE" in err
        assert not (tmp_path / out).exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert main(["make-synthetic", str(tmp_path / "data"), "--classes", "15",
                 "--per-class", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    # a RANK a scheduler left, without torchrun's WORLD_SIZE: one process, which prints (it
    # printed nothing, and exited 0)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "1")
    assert main(["inspect", str(tmp_path / "data")]) == 0
    assert "data" in capsys.readouterr().out


def test_a_study_database_on_a_network_file_system_is_warned_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("optuna")
    from metamodal.search import study

    monkeypatch.setattr(study, "network_filesystem", lambda path: "nfs4")
    with pytest.warns(UserWarning, match=r"network file system \(nfs4\).*journal:PATH"):
        study.open_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)
    monkeypatch.setattr(study, "network_filesystem", lambda path: None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study.open_storage(f"sqlite:///{tmp_path / 'local.db'}", tmp_path)
