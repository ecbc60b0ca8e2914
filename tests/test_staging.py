"""What a killed ``train --overwrite`` leaves beside the run is cleaned up when it is provably
stale and ours, and named otherwise; a finished run is never deleted before its replacement is
complete."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, OutputError, RunError
from metamodal.runs.directory import load_run
from metamodal.train.staging import OWNER_FILE, clean_leftovers, make_staging
from metamodal.train.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("staging") / "data", classes=15, per_class=4,
                          image_size=8, seed=1, track_length=16)


def _config(data: Path, **values) -> TrainConfig:
    base = dict(data=str(data), steps=3, ways=2, shots=1, queries=1, dim=8, val_every=0,
                val_episodes=2, device="cpu", cache=False, preprocess={"image": {"size": 8}},
                modalities=["image", "measurements"])
    return TrainConfig(**{**base, **values})


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_sigkill_during_overwrite_leaves_a_staging_folder_the_next_run_removes(
        data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    Trainer(_config(data), run_dir, progress=False).fit()
    before = _snapshot(run_dir)
    settings = json.dumps(json.dumps(_config(data, steps=50, seed=2).to_dict()))
    script = textwrap.dedent(f"""
        import json, os, signal
        from metamodal.config import TrainConfig
        from metamodal.train.trainer import Trainer
        config = TrainConfig.from_dict(json.loads({settings}))
        def kill(step, values):
            if step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        Trainer(config, {str(run_dir)!r}, progress=False, callbacks=[kill]).fit(overwrite=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert len(left) == 1 and left[0].name.startswith(".run.staging-")
    assert (left[0] / OWNER_FILE).is_file()
    assert _snapshot(run_dir) == before  # the finished run is untouched
    Trainer(_config(data, steps=2, seed=3), run_dir, progress=False).fit(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert load_run(run_dir).config.steps == 2
    assert not (run_dir / OWNER_FILE).exists()


def test_a_staging_folder_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    work = make_staging(tmp_path / "run")  # this very process: alive
    assert clean_leftovers(tmp_path / "run") == [] and work.is_dir()
    other = tmp_path / ".run.staging-other"
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps(
        {"host": socket.gethostname() + "-elsewhere", "pid": 2**22 + 1, "run": "run"}))
    assert clean_leftovers(tmp_path / "run") == [] and other.is_dir()  # another host's


def test_a_stale_staging_folder_of_another_run_is_not_touched(tmp_path: Path) -> None:
    stale = tmp_path / ".run.staging-abc"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": 2**22 + 1, "run": "other"}))
    with pytest.warns(UserWarning, match="staging-abc"):
        assert clean_leftovers(tmp_path / "run") == []
    assert stale.is_dir()


def test_a_staging_folder_without_owner_is_named_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    legacy = tmp_path / ".run.k2j3h4l_"
    legacy.mkdir()
    with pytest.warns(UserWarning, match=r"\.run\.k2j3h4l_.*delete them"):
        clean_leftovers(tmp_path / "run")
    assert legacy.is_dir()


def test_a_finished_run_moved_aside_is_named_and_never_deleted(data: Path,
                                                               tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    Trainer(_config(data), run_dir, progress=False).fit()
    aside = tmp_path / ".run.old-abcdefgh"
    run_dir.rename(aside)  # a kill between the two renames of a replacement
    before = _snapshot(aside)
    with pytest.raises(RunError, match="rename it back") as caught:
        Trainer(_config(data), run_dir, progress=False).fit()
    assert caught.value.file == str(aside)
    assert _snapshot(aside) == before and not run_dir.exists()
    aside.rename(run_dir)
    assert load_run(run_dir).config.steps == 3


def test_overwrite_through_a_link_replaces_the_run_it_leads_to_and_keeps_the_link(
        data: Path, tmp_path: Path) -> None:
    """``--out LINK --overwrite`` replaced the link with a new directory and left the link,
    renamed ``.LINK.old-*``, beside it (the run behind it untouched)."""
    Trainer(_config(data), tmp_path / "real", progress=False).fit()
    (tmp_path / "latest").symlink_to("real", target_is_directory=True)
    Trainer(_config(data, steps=4, seed=2), tmp_path / "latest",
            progress=False).fit(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "real"]
    assert (tmp_path / "latest").is_symlink()
    assert load_run(tmp_path / "real").config.steps == 4


def test_an_out_that_is_a_loop_of_links_is_a_typed_error(data: Path, tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OutputError, match="symbolic link that leads nowhere") as caught:
        Trainer(_config(data), tmp_path / "loop", progress=False).fit()
    assert caught.value.file == str(tmp_path / "loop")
    for config, out, key in ((_config(data), tmp_path / "loop" / "run", "out"),
                             (_config(tmp_path / "loop"), tmp_path / "run", "data")):
        with pytest.raises(ConfigError, match="cannot be resolved") as caught:
            Trainer(config, out, progress=False).fit()
        assert caught.value.column == key


def test_a_loop_of_links_anywhere_a_path_is_given_is_a_typed_error(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python raises a raw RuntimeError for a loop of symbolic links: ensemble members,
    --json, episodes --out, export's run and OUT printed tracebacks."""
    from metamodal.cli import main

    run = tmp_path / "run"
    Trainer(_config(data), run, progress=False).fit()
    (tmp_path / "loop").symlink_to("loop")
    loop = str(tmp_path / "loop")
    for argv in (["ensemble", str(run), loop, "--out", str(tmp_path / "e")],
                 ["eval", str(run), "--json", loop, "--ways", "2", "--queries", "1",
                  "--episodes-count", "2"],
                 ["episodes", str(data), "--out", loop, "--ways", "2", "--queries", "1"],
                 ["export", str(run), loop, "--format", "torchscript"],
                 ["export", loop, str(tmp_path / "x.pt"), "--format", "torchscript"]):
        assert main(argv) == 2, argv
        assert "cannot be resolved" in capsys.readouterr().err
