"""A time limit on training (``max_minutes``): the steps fitted to the time left at this
machine's pace, the learning-rate schedule compressed to end there without a jump, the plan
kept over a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_trainer import _Kill, _kill_at

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import RunError
from metamodal.train import trainer as trainer_module
from metamodal.train.budget import StepPlan, TimeBudget
from metamodal.train.checkpoint import CHECKPOINT_FILE
from metamodal.train.trainer import Trainer


def test_without_a_replan_the_plan_is_the_cosine_over_the_configured_steps() -> None:
    plan = StepPlan(20, "cosine")
    for step in range(25):
        expected = 0.5 * (1 + math.cos(math.pi * min(step, 20) / 20))
        assert plan(step) == pytest.approx(expected, abs=1e-15)
    assert StepPlan(20, "constant")(19) == 1.0


def test_a_replan_moves_the_end_without_a_jump_in_the_learning_rate() -> None:
    plan = StepPlan(100, "cosine")
    before = plan(40)
    plan.replan(40, 60)
    factors = [plan(step) for step in range(40, 61)]
    assert factors[0] == before  # no jump where the plan changed
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] == pytest.approx(0.0, abs=1e-15) and factors[-2] > 0
    plan.replan(50, 80)  # the time left grew again: the end moves later, still no jump
    assert plan(50) == factors[10] and plan(80) == pytest.approx(0.0, abs=1e-15)
    plan.replan(70, 10)  # no end before the steps done
    assert plan.steps == 70


def test_the_budget_holds_the_steps_the_time_left_allows() -> None:
    budget = TimeBudget(max_minutes=1, val_every=10, steps=1000)
    assert budget.last_step(0, 0.0) is None  # nothing timed yet
    for seconds in (9.0, 1.0, 1.0):  # the first step warms up: left out
        budget.record_step(seconds)
    budget.validation_seconds = 5.0  # 0.5 s a step, and 5 s at the end
    # 60 - 11 spent - 5 for the last validation = 44 s, at 1.5 s a step: 29 more steps
    assert budget.last_step(3, 11.0) == 32
    assert budget.last_step(3, 100.0) == 3  # over the limit: end now
    assert TimeBudget(max_minutes=600, val_every=10, steps=50).last_step(3, 11.0) is None
    roomy = TimeBudget(max_minutes=600, val_every=10, steps=50)
    roomy.record_step(1.0)
    roomy.record_step(1.0)
    assert roomy.last_step(3, 11.0) == 50  # never beyond the configured steps


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "tiny", classes=12, per_class=8,
                          seed=3, missing_rate=0.0, image_size=16)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The trainer's clock, moved only by its work: 1 s a training step, 5 s a validation."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    step_function, validate = Trainer._step_function, Trainer._validate

    def timed_steps(self, *args, **kwargs):
        step_loss = step_function(self, *args, **kwargs)

        def timed(step: int):
            clock.now += 1.0
            return step_loss(step)
        return timed

    def timed_validation(self, *args, **kwargs):
        clock.now += 5.0
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_step_function", timed_steps)
    monkeypatch.setattr(Trainer, "_validate", timed_validation)
    return clock


def _config(data: Path, **values) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "modalities": ["measurements"], "steps": 200,
                          "ways": 3, "queries": 2, "dim": 8, "val_every": 10,
                          "val_episodes": 4, "checkpoint_every": 5, "seed": 1, "device": "cpu",
                          "max_minutes": 1.0, **values})


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_time_limited_run_ends_within_its_minutes_with_its_schedule_compressed(
        data: Path, tmp_path: Path, clock: SimpleNamespace) -> None:
    result = Trainer(_config(data), tmp_path / "run", progress=False).fit()
    # 200 steps would take 200 s and 20 validations 100 s more: a minute holds about 36
    assert 30 <= result.steps < 45 and 50 <= result.seconds <= 60, result
    assert result.time_limited
    records = _records(tmp_path / "run")
    end = records[-1]
    assert end["event"] == "end" and end["time_limited"] is True
    assert end["train_seconds"] == result.seconds
    assert any(r["step"] == result.steps and "val_acc" in r for r in records)  # validated last
    saved = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert saved["progress"]["finished"] and saved["progress"]["step"] == result.steps
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    lrs = [r["lr"] for r in records if "lr" in r]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # decays, never jumps up


def test_a_run_the_limit_holds_trains_every_step(data: Path, tmp_path: Path,
                                                 clock: SimpleNamespace) -> None:
    result = Trainer(_config(data, steps=30, max_minutes=10.0), tmp_path / "run",
                     progress=False).fit()
    assert result.steps == 30 and _records(tmp_path / "run")[-1]["time_limited"] is False
    assert not result.time_limited


def test_the_report_says_the_limit_ended_training(data: Path, tmp_path: Path,
                                                  clock: SimpleNamespace) -> None:
    from metamodal import api

    report = api.train(tmp_path / "run", config=_config(data), progress=False)
    assert report.time_limited and report.to_dict()["time_limited"] is True
    assert "[ended by max_minutes]" in report.table() and report.steps < 200


def test_a_checkpoint_s_plan_is_checked_not_trusted(data: Path, tmp_path: Path,
                                                   clock: SimpleNamespace) -> None:
    with pytest.raises(_Kill):
        Trainer(_config(data), tmp_path / "run", progress=False,
                callbacks=[_kill_at(12)]).fit()
    state = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    plan = state["schedule"]["lr_lambdas"][0]
    for bad in ({"steps": "200"}, {"anchor_progress": 7.0}, {"anchor_step": 10**6},
                {"schedule": "exec"}):
        state["schedule"]["lr_lambdas"] = [{**plan, **bad}]
        torch.save(state, tmp_path / "run" / CHECKPOINT_FILE)
        with pytest.raises(RunError) as caught:
            Trainer(_config(data), tmp_path / "run", progress=False).fit(resume=True)
        assert caught.value.column == "schedule", bad


def test_a_resumed_time_limited_run_keeps_its_plan_and_its_spent_time(
        data: Path, tmp_path: Path, clock: SimpleNamespace) -> None:
    config = _config(data)
    full = Trainer(config, tmp_path / "full", progress=False).fit()
    with pytest.raises(_Kill):
        Trainer(config, tmp_path / "killed", progress=False, callbacks=[_kill_at(27)]).fit()
    saved = torch.load(tmp_path / "killed" / CHECKPOINT_FILE, weights_only=True)
    assert saved["progress"]["step"] == 25 and saved["schedule"]["lr_lambdas"][0]["steps"] < 200
    resumed = Trainer(config, tmp_path / "killed", progress=False).fit(resume=True)
    # the same pace on both: the same end, and the same weights
    assert (resumed.steps, resumed.seconds) == (full.steps, full.seconds)
    ends = [torch.load(tmp_path / run / CHECKPOINT_FILE, weights_only=True)["model"]
            for run in ("full", "killed")]
    for key in ends[0]:
        assert torch.equal(ends[0][key], ends[1][key]), key
