"""Ensembles of runs (``metamodal ensemble``): they build with both methods, load as runs that
``eval``, ``predict``, `FewShotClassifier` and the server accept, their evaluation equals
the combination of the members' probabilities computed by hand, their combination is fitted
on validation classes only, and runs that cannot be combined get typed errors."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import os
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch

from metamodal import api
from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.config import TestTime, TrainConfig
from metamodal.data.batch import ModalityBatch
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, RunError
from metamodal.evaluate import episode_plans, protocol
from metamodal.evaluate.episode_plans import sampled_episodes
from metamodal.evaluate.protocol import episode_logits
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.protonet import ProtoNet
from metamodal.model import EnsembleModel, FewShotModel
from metamodal.model.ensemble import combine_log_probs
from metamodal.runs import ensemble as fitting
from metamodal.runs import load_run, load_run_data
from metamodal.runs.directory import read_run_config
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSET = ["image", "caption", "measurements"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs of one synthetic dataset (ProtoNet gated, ProtoNet late, MAML on three
    modalities), a run of another dataset, and the mean and stack ensembles of the three."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_synthetic(root / "data", classes=15, per_class=4, image_size=8, seed=3)
    common = dict(data=str(data), ways=2, shots=1, queries=1, dim=8, val_every=0,
                  val_episodes=1, device="cpu", cache=False)
    Trainer(TrainConfig(steps=3, fusion="gated", **common), root / "gated",
            progress=False).fit()
    Trainer(TrainConfig(steps=3, fusion="late", seed=0, **common), root / "late",
            progress=False).fit()
    Trainer(TrainConfig(modalities=SUBSET, learner="maml",
                        learner_options={"inner_steps": 1, "eval_steps": 2}, steps=1,
                        **common), root / "maml", progress=False).fit()
    other = make_synthetic(root / "other-data", classes=15, per_class=4, image_size=8, seed=4)
    Trainer(TrainConfig(steps=1, **{**common, "data": str(other), "seed": 5}), root / "other",
            progress=False).fit()
    members = [str(root / name) for name in ("gated", "late", "maml")]
    shape = dict(ways=2, queries=2, episodes_count=20, seed=1)
    api.ensemble(members, out=str(root / "mean"), method="mean", **shape)
    api.ensemble(members, out=str(root / "stack"), method="stack", **shape)
    return {"data": data, "root": root, "members": members, "mean": root / "mean",
            "stack": root / "stack", "other": root / "other"}


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "samples.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_ensemble_runs_are_self_contained_and_load(runs: dict[str, Path]) -> None:
    for method in ("mean", "stack"):
        run = load_run(runs[method])
        assert isinstance(run.model, EnsembleModel) and run.model.method == method
        assert len(run.model.members) == 3
        assert run.model.modalities == ["image", "caption", "sound", "track", "measurements"]
        assert run.model.members[2].modalities == SUBSET
        assert sorted(run.preprocessor.modalities) == sorted(run.model.modalities)
        for k in range(3):
            assert (runs[method] / "members" / str(k) / "config.toml").is_file()
        assert (runs[method] / "model.safetensors").is_file()
        assert run.ensemble["sources"] == [str(p) for p in runs["members"]]
        assert all(t > 0 for t in run.ensemble["temperatures"])
    assert load_run(runs["mean"]).ensemble["weights"] == [1.0, 1.0, 1.0]


def test_the_ensemble_survives_moving_its_members(runs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(runs["stack"], moved)
    before = api.evaluate(str(runs["stack"]), ways=2, queries=2, episodes_count=5,
                          baseline=False, progress=False).result.accuracies
    after = api.evaluate(str(moved), ways=2, queries=2, episodes_count=5, baseline=False,
                         progress=False).result.accuracies
    assert before == after


@pytest.mark.parametrize("method", ["mean", "stack"])
def test_evaluation_equals_the_members_probabilities_combined_by_hand(
        runs: dict[str, Path], method: str) -> None:
    report = api.evaluate(str(runs[method]), ways=2, queries=2, episodes_count=12, seed=7,
                          progress=False)
    assert report.name.startswith(f"ensemble-{method}(")
    assert report.baseline is not None  # the members' untrained baselines, averaged
    run = load_run(runs[method])
    prepared = load_run_data(run)
    plan = sampled_episodes(prepared.store, prepared.classes("test"), 2, 1, 2, 7, 12)
    temperatures = run.ensemble["temperatures"]
    weights = run.ensemble["weights"]
    member_logits = [episode_logits(load_run(p).model, prepared.store, plan)
                     for p in runs["members"]]
    expected = []
    for e in range(12):
        probs = [torch.softmax(member_logits[m][e] / temperatures[m], -1) for m in range(3)]
        if method == "mean":
            combined = sum(probs) / 3
        else:
            combined = torch.softmax(sum(w * p.log() for w, p in zip(weights, probs,
                                                                       strict=True)), -1)
        hits = combined.argmax(-1) == plan.query_labels[e]
        expected.append(float(hits.double().mean()))
    assert report.result.accuracies == pytest.approx(expected)


def test_an_ensemble_is_fitted_with_the_test_time_settings_its_members_keep(
        runs: dict[str, Path], tmp_path: Path) -> None:
    members = runs["members"][:2]  # the two ProtoNets
    shape = dict(method="mean", ways=2, queries=2, episodes_count=20, seed=1)
    plain = api.ensemble(members, out=str(tmp_path / "plain"), **shape)
    refined = api.ensemble(members, out=str(tmp_path / "refined"), transduction=3, **shape)
    assert refined.temperatures != plain.temperatures  # fitted on the refined logits
    for name, steps in (("plain", 0), ("refined", 3)):
        run = load_run(tmp_path / name)
        assert [m.learner.transduction for m in run.model.members] == [steps, steps]
        for k in range(2):  # what every later command loads
            member = read_run_config(tmp_path / name / "members" / str(k))
            assert member["train"]["transduction"] == steps
    assert load_run(members[0]).config.transduction == 0  # the members' own runs unchanged
    # a setting goes to the members that can take it: the late run weighs its modalities,
    # the gated one (no late fusion) keeps its own and still votes
    api.ensemble(members, out=str(tmp_path / "reliable"), fusion_reliability=1, **shape)
    kept = [read_run_config(tmp_path / "reliable" / "members" / str(k))["train"]
            for k in range(2)]
    assert [t["fusion_reliability"] for t in kept] == [0, 1]
    # refused only where no member can take it, naming every member and why
    gated, maml = members[0], runs["members"][2]
    with pytest.raises(ConfigError, match="no member of the ensemble") as error:
        api.ensemble([gated, maml], out=str(tmp_path / "bad"), fusion_reliability=1, **shape)
    assert error.value.column == "fusion_reliability"
    assert gated in error.value.message and maml in error.value.message
    assert not (tmp_path / "bad").exists()


def test_test_time_settings_go_to_the_members_that_can_take_them(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """With a MAML member, `--joint-transduction` said to give `--transduction 10`, which
    was then refused for the MAML member: a loop. The steps now go to the members with
    prototypes; a MAML member keeps its logits and still votes."""
    gated, late, maml = runs["members"]
    shape = dict(ways=2, queries=2, episodes_count=6, seed=1)
    with pytest.raises(ConfigError, match="no member with prototypes") as caught:
        api.ensemble([gated, maml], out=str(tmp_path / "x"), joint_transduction=True, **shape)
    assert "--transduction" in caught.value.fix and gated in caught.value.fix
    assert maml not in caught.value.fix
    out = tmp_path / "joint"
    made = api.ensemble([gated, maml], out=str(out), joint_transduction=True, transduction=2,
                        **shape)
    assert made.joint_transduction
    steps = [read_run_config(out / "members" / str(k))["train"]["transduction"]
             for k in range(2)]
    assert steps == [2, 0]
    run = load_run(out)
    assert [m.test_time.transduction for m in run.model.members] == [2, 0]
    assert run.name == "ensemble-mean+joint(protonet+gated, maml+gated)"
    # eval of an ensemble with a MAML member takes the same settings the same way
    report = api.evaluate(str(runs["mean"]), transduction=2, joint_transduction=True,
                          ways=2, queries=2, episodes_count=4, seed=2, baseline=False,
                          progress=False, json=str(tmp_path / "e.json"))
    assert report.name.startswith("ensemble-mean+joint(")
    written = json.loads((tmp_path / "e.json").read_text())
    assert [t["transduction"] for t in written["test_time"]] == [2, 2, 0]
    with pytest.raises(ConfigError, match="no member") as caught:  # no [augment], or MAML
        api.evaluate(str(runs["mean"]), tta=1, ways=2, queries=2, episodes_count=2,
                     progress=False)
    assert caught.value.column == "tta"


def test_an_ensemble_written_inside_a_run_is_refused(runs: dict[str, Path]) -> None:
    """ensemble --out RUN/ens was accepted, and training RUN again deleted it."""
    member = Path(runs["members"][0])
    before = sorted(p.name for p in member.iterdir())
    with pytest.raises(ConfigError, match="inside the run directory") as caught:
        api.ensemble(runs["members"][:2], out=str(member / "ens"))
    assert caught.value.column == "out"
    assert sorted(p.name for p in member.iterdir()) == before
    with pytest.raises(ConfigError, match="inside the run directory"):  # or an ensemble
        api.ensemble(runs["members"][:2], out=str(runs["mean"] / "deeper" / "ens"))


@pytest.fixture(scope="module")
def metric_ensemble(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack ensemble of the two ProtoNet runs and a ProtoNet on caption and
    measurements alone: members that all embed once."""
    root = tmp_path_factory.mktemp("metric-ensemble")
    Trainer(TrainConfig(data=str(runs["data"]), modalities=["caption", "measurements"],
                        ways=2, shots=1, queries=1, dim=8, steps=3, val_every=0,
                        val_episodes=1, device="cpu", cache=False), root / "subset",
            progress=False).fit()
    members = [*runs["members"][:2], str(root / "subset")]
    api.ensemble(members, out=str(root / "stack"), method="stack", ways=2, queries=2,
                 episodes_count=20, seed=1)
    return root / "stack"


@pytest.mark.parametrize("shown", [None, ["image", "caption"], ["image"]])
def test_an_ensemble_of_metric_learners_embeds_each_sample_once_per_member(
        metric_ensemble: Path, shown: list[str] | None) -> None:
    """Members that embed once are evaluated from their own embeddings, each sample embedded
    once per member, and give the log-probabilities of the ensemble's episode-by-episode
    ``adapt_predict``: with every modality, with samples missing a member's modalities,
    and with a selection that shows a member nothing."""
    run = load_run(metric_ensemble)
    prepared = load_run_data(run)
    store = prepared.store
    plan = sampled_episodes(store, prepared.classes("test"), 2, 1, 2, 7, 12)
    embedded = [0, 0, 0]
    for k, member in enumerate(run.model.members):
        def counting(batch: dict, embed=member.embed, k: int = k) -> object:
            embedded[k] += len(next(iter(batch.values())).present)
            return embed(batch)
        member.embed = counting
    fast = episode_logits(run.model, store, plan, modalities=shown)
    needed = torch.cat(plan.support + plan.query).unique().numel()
    assert all(count <= needed for count in embedded)  # once each, not once per episode
    if shown is None:
        assert embedded == [needed] * 3
    assert (embedded[2] == 0) == (shown == ["image"])  # the third sees neither
    selected = protocol.select_modalities(run.model, store, shown)
    episodes = zip(plan.support, plan.support_labels, plan.query, plan.ways, strict=True)
    slow = protocol._predict_per_episode(run.model, store, plan, episodes, selected, None, 0,
                                         "cpu")
    unseen = protocol.unseen_classes(store, plan, selected, None, 0)  # as episode_logits
    slow = [protocol._known(x, u) for x, u in zip(slow, unseen, strict=True)]
    for one, other in zip(fast, slow, strict=True):
        torch.testing.assert_close(one, other, atol=1e-5, rtol=1e-5)


def test_combine_log_probs_ignores_a_member_that_saw_nothing() -> None:
    logits = torch.tensor([[[3.0, 0.0]], [[0.0, 9.0]]])
    only_first = torch.tensor([[True], [False]])
    for method in ("mean", "stack"):
        out = combine_log_probs(logits, only_first, torch.ones(2), torch.ones(2), method)
        assert torch.allclose(out, torch.log_softmax(logits[0], -1))
    nobody = torch.zeros(2, 1, dtype=torch.bool)
    out = combine_log_probs(logits, nobody, torch.ones(2), torch.ones(2), "mean")
    assert torch.allclose(out.exp(), torch.full((1, 2), 0.5))


def test_fitting_draws_validation_episodes_never_test(runs: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[list[str]] = []
    real = episode_plans.sampled_episodes

    def spy(store, classes, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        drawn.append(list(classes))
        return real(store, classes, *args, **kwargs)

    monkeypatch.setattr(episode_plans, "sampled_episodes", spy)
    api.ensemble(runs["members"], out=str(tmp_path / "spied"), method="stack", ways=2,
                 queries=2, episodes_count=5)
    split = load_run(runs["members"][0]).split
    assert drawn and all(sorted(c) == sorted(split.val) for c in drawn)
    assert not set(split.test) & {c for classes in drawn for c in classes}


def test_stack_weights_follow_the_validation_data(runs: dict[str, Path]) -> None:
    """Fitted weights keep a member that is mostly right on validation and switch off one
    whose logits are noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (200,), generator=g)
    noisy = torch.where(torch.rand(200, generator=g) < 0.2,
                        torch.randint(0, 3, (200,), generator=g), labels)
    good = torch.nn.functional.one_hot(noisy, 3).float() * 2
    bad = torch.randn(200, 3, generator=g) * 2
    available = torch.ones(2, 200, dtype=torch.bool)
    weights = fitting.fit_stack_weights(torch.stack([good, bad]), available, labels,
                                        torch.ones(2))
    assert weights[0] > 0.5 and weights[1] < 0.01


def test_predict_classifier_and_server_accept_an_ensemble(runs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    rows = _rows(runs["data"])
    support, queries = rows[:8], rows[8:12]
    columns = list(rows[0])
    for name, part in (("support.csv", support), ("query.csv", queries)):
        with (runs["data"] / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(part)
    predicted = api.predict(str(runs["stack"]), support=str(runs["data"] / "support.csv"),
                            query=str(runs["data"] / "query.csv"))
    clf = FewShotClassifier(runs["stack"], media_root=runs["data"])
    X = [{k: (v or None) for k, v in row.items() if k not in ("id", "species", "family")}
         for row in support]
    clf.fit(X, [row["species"] for row in support])
    Q = [{k: (v or None) for k, v in row.items() if k not in ("id", "species", "family")}
         for row in queries]
    proba = clf.predict_proba(Q)
    assert proba.shape == (4, len(set(r["species"] for r in support)))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert [p["prediction"] for p in predicted.predictions] == clf.predict(Q)

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from metamodal.api.serve import create_app

    app = create_app(runs["stack"], state=tmp_path / "state", eval_episodes=0)
    with TestClient(app, raise_server_exceptions=False) as c:
        model = c.get("/api/model").json()
        assert model["learner"] == "ensemble" and model["joint_transduction"] is False
        fields = {f"e{n}.label": row["species"] for n, row in enumerate(support)}
        fields.update({f"e{n}.caption": row["caption"] for n, row in enumerate(support)
                       if row["caption"]})
        files = [(f"e{n}.image", (Path(row["image"]).name,
                                  (runs["data"] / row["image"]).read_bytes()))
                 for n, row in enumerate(support) if row["image"]]
        r = c.post("/api/tasks", data=fields, files=files)
        assert r.status_code == 201, r.text
        task = r.json()
        r = c.post(f"/api/tasks/{task['id']}/predict",
                   data={f"q{n}.caption": row["caption"] for n, row in enumerate(queries)
                         if row["caption"]})
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
    assert answers and all(sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
                           for p in answers)


def test_predict_classifier_and_server_take_joint_transduction_either_way(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """As eval does, predict, `FewShotClassifier` and serve take an ensemble's steps jointly
    or not for one use (they took them only as the ensemble was made): the joint ensemble
    without them predicts as one made without, and the other way round."""
    shape = dict(transduction=2, ways=2, queries=2, episodes_count=6, seed=1)
    joint, plain = tmp_path / "joint", tmp_path / "plain"
    api.ensemble(runs["members"][:2], out=str(joint), joint_transduction=True, **shape)
    api.ensemble(runs["members"][:2], out=str(plain), **shape)
    rows = _rows(runs["data"])
    X = [{k: (v or None) for k, v in row.items() if k not in ("id", "species", "family")}
         for row in rows]
    y = [row["species"] for row in rows[:10]]

    def proba(run: Path, **options) -> np.ndarray:
        clf = FewShotClassifier(run, media_root=runs["data"], **options).fit(X[:10], y)
        return clf.predict_proba(X[10:22])

    as_made, made_plain = proba(joint), proba(plain)
    assert not np.allclose(as_made, made_plain, atol=1e-6)
    np.testing.assert_allclose(proba(joint, joint_transduction=False), made_plain, atol=1e-6)
    np.testing.assert_allclose(proba(plain, joint_transduction=True), as_made, atol=1e-6)
    with pytest.raises(ConfigError, match="ensembles") as caught:  # one network
        proba(runs["members"][0], joint_transduction=False)
    assert caught.value.column == "joint_transduction"
    with pytest.raises(ConfigError, match="true, false or None") as caught:  # it meant True
        proba(joint, joint_transduction="false")
    assert caught.value.column == "joint_transduction"
    for name, part in (("support-j.csv", rows[:10]), ("query-j.csv", rows[10:22])):
        with (runs["data"] / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    predicted = api.predict(str(joint), support=str(runs["data"] / "support-j.csv"),
                            query=str(runs["data"] / "query-j.csv"), joint_transduction=False)
    np.testing.assert_allclose([[p["probabilities"][c] for c in sorted(set(y))]
                                for p in predicted.predictions], made_plain, atol=1e-6)

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from metamodal.api.serve import create_app

    app = create_app(joint, state=tmp_path / "state", eval_episodes=0,
                     joint_transduction=False)
    with TestClient(app) as c:
        assert c.get("/api/model").json()["joint_transduction"] is False


def test_a_reloaded_ensemble_predicts_the_same(runs: dict[str, Path], tmp_path: Path) -> None:
    rows = _rows(runs["data"])
    X = [{k: (v or None) for k, v in row.items() if k not in ("id", "species", "family")}
         for row in rows[:10]]
    y = [row["species"] for row in rows[:10]]
    clf = FewShotClassifier(runs["mean"], media_root=runs["data"]).fit(X, y)
    clf.save(tmp_path / "saved")
    again = FewShotClassifier.load(tmp_path / "saved", media_root=runs["data"])
    np.testing.assert_array_equal(clf.predict_proba(X), again.predict_proba(X))
    first = load_run(runs["mean"])
    second = load_run(runs["mean"])
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_runs_of_different_datasets_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="different .* classes") as info:
        api.ensemble([runs["members"][0], str(runs["other"])], out=str(tmp_path / "x"))
    assert str(runs["other"]) in str(info.value) and info.value.fix


def test_a_modality_decoded_differently_is_refused(runs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    common = dict(data=str(runs["data"]), ways=2, shots=1, queries=1, dim=8, val_every=0,
                  val_episodes=1, device="cpu", cache=False, steps=1,
                  modalities=["image", "caption"])
    Trainer(TrainConfig(preprocess={"image": {"size": 12}}, **common), tmp_path / "big",
            progress=False).fit()
    with pytest.raises(ConfigError, match="decode modality 'image' differently") as info:
        api.ensemble([runs["members"][0], str(tmp_path / "big")], out=str(tmp_path / "x"))
    assert info.value.column == "runs.image" and "size" in str(info.value)


def test_too_few_missing_or_damaged_runs_are_typed_errors(runs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        api.ensemble([runs["members"][0]], out=str(tmp_path / "x"))
    with pytest.raises(RunError, match="not found"):
        api.ensemble([runs["members"][0], str(tmp_path / "nope")], out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="already holds a run"):
        api.ensemble(runs["members"][:2], out=str(runs["mean"]))
    # an empty directory is usable (it was refused, and --overwrite refused it too); a
    # folder of other files is refused with a fix that works; so is a dataset's folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for out, words, fix in ((tmp_path / "full", "not a run directory", "new or empty"),
                            (runs["data"] / "ens", "dataset directory", "outside")):
        with pytest.raises(ConfigError, match=words) as caught:
            api.ensemble(runs["members"][:2], out=str(out), overwrite=True)
        assert fix in caught.value.fix and "--overwrite" not in caught.value.fix
    assert not (runs["data"] / "ens").exists()
    made = api.ensemble(runs["members"][:2], out=str(tmp_path / "empty"), ways=2, queries=2,
                        episodes_count=4)
    assert (Path(made.out) / "config.toml").is_file()
    # through a link, --overwrite replaced the link and left it beside, renamed .latest.old-*
    (tmp_path / "latest").symlink_to("empty", target_is_directory=True)
    api.ensemble(runs["members"][:2], out=str(tmp_path / "latest"), overwrite=True, ways=2,
                 queries=2, episodes_count=4)
    assert (tmp_path / "latest").is_symlink() and not list(tmp_path.glob(".latest*"))
    assert (tmp_path / "empty" / "config.toml").is_file()
    with pytest.raises(ConfigError, match="itself an ensemble"):
        api.ensemble([runs["members"][0], str(runs["mean"])], out=str(tmp_path / "x"))
    moved = tmp_path / "moved"  # a member whose dataset is gone: ensemble has no --data
    shutil.copytree(runs["members"][0], moved)
    config = tomllib.loads((moved / "config.toml").read_text())
    config["train"]["data"] = str(tmp_path / "gone")
    (moved / "config.toml").write_text(tomli_w.dumps(config))
    with pytest.raises(RunError, match="is not there") as caught:
        api.ensemble([str(moved), runs["members"][1]], out=str(tmp_path / "x"))
    assert caught.value.column == "train.data" and "--data" not in caught.value.fix
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["mean"], damaged)
    (damaged / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RunError, match="model weights are corrupt") as caught:
        load_run(damaged)
    assert "re-run `metamodal ensemble`" in caught.value.fix  # it asked for training
    shutil.copyfile(runs["mean"] / "model.safetensors", damaged / "model.safetensors")
    shutil.rmtree(damaged / "members" / "1")  # a member a link out of the ensemble: read
    (damaged / "members" / "1").symlink_to(runs["members"][1], target_is_directory=True)
    with pytest.raises(RunError, match="leads out of the ensemble") as caught:
        load_run(damaged)
    assert caught.value.column == "ensemble.members[1]"
    (damaged / "members" / "1").unlink()
    shutil.copytree(runs["mean"] / "members" / "1", damaged / "members" / "1")
    for name in ("preprocessor.json", "config.toml"):  # the fixes asked for a train run
        (damaged / "members" / "1" / name).unlink()
        with pytest.raises(RunError, match=f"member 1: .*{name} is missing") as caught:
            load_run(damaged)
        assert "re-run `metamodal ensemble`" in caught.value.fix
        shutil.copyfile(runs["mean"] / "members" / "1" / name, damaged / "members" / "1" / name)
    text = (runs["mean"] / "config.toml").read_text()
    (damaged / "config.toml").write_text(text.replace('"members/1"', '"../elsewhere"'))
    with pytest.raises(RunError, match="members"):
        load_run(damaged)
    (damaged / "config.toml").write_text(text.replace("temperatures = [", "temperatures = [-1, "))
    with pytest.raises(RunError, match="temperatures") as caught:
        load_run(damaged)
    assert caught.value.column == "ensemble.temperatures"
    weights = text[text.index("weights = ["):].split("]", 1)[0] + "]"
    (damaged / "config.toml").write_text(text.replace(weights, "weights = [-3.0, 1.0, 1.0]"))
    with pytest.raises(RunError, match="weights") as caught:  # was keyed temperatures
        load_run(damaged)
    assert caught.value.column == "ensemble.weights"
    names = text[text.index("names = ["):].split("]", 1)[0] + "]"  # shown, not used: kept
    (damaged / "config.toml").write_text(text.replace(names, "names = [1, 2]"))
    assert load_run(damaged).name == "ensemble-mean(1, 2)"
    (damaged / "config.toml").write_text(text)
    member = damaged / "members" / "1" / "config.toml"
    own = tomllib.loads(member.read_text())
    for broken in ({"train": 5}, {"foo": ["a"]}):
        member.write_text(tomli_w.dumps({**own, "split": {**own["split"], **broken}}))
        with pytest.raises(RunError, match="split") as caught:  # not a raw TypeError
            load_run(damaged)
        assert caught.value.file == str(member) and caught.value.column == "split"
    with pytest.raises(ConfigError, match="another learner"):
        api.evaluate(str(runs["mean"]), learner="protonet", episodes_count=2, ways=2,
                     queries=1, progress=False)


def test_the_command_line_builds_an_ensemble(runs: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["ensemble", *runs["members"][:2], "--out", str(out), "--method", "stack",
                 "--ways", "2", "--queries", "2", "--episodes-count", "4",
                 "--json", str(tmp_path / "e.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "temperature" in printed and "ensemble (fitted on these episodes)" in printed
    assert load_run(out).ensemble["method"] == "stack"
    assert (tmp_path / "e.json").is_file()
    assert main(["ensemble", runs["members"][0], "--out", str(tmp_path / "y")]) == 2


def test_the_ensemble_table_keeps_its_columns_with_long_run_names() -> None:
    from metamodal.api.ensemble import EnsembleResult

    result = EnsembleResult(out="ens", method="mean", members=["runs/a", "runs/" + "b" * 60],
                            names=["protonet+late"] * 2, temperatures=[1.0, 2.0],
                            weights=[1.0, 1.0], member_accuracy=[[0.9, 0.01], [0.8, 0.02]],
                            accuracy=[0.95, 0.01], validation={"episodes": 3, "ways": 2,
                                                               "shots": 1, "seed": 0})
    header, *rows = result.table().splitlines()[1:5]
    assert len({row.index(" ± ") for row in rows}) == 1  # the members' rows and the ensemble's
    assert header.index("val accuracy") + len("val accuracy") == rows[0].index(" ± ") + 8


def test_a_multi_task_first_member_predicts_the_main_label(runs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    config = TrainConfig(data=str(runs["data"]), tasks=["species", "genus"], steps=2, ways=2,
                         shots=1, queries=1, dim=8, val_every=0, val_episodes=1, device="cpu",
                         cache=False)
    Trainer(config, tmp_path / "mt", progress=False).fit()
    out = tmp_path / "ens"
    api.ensemble([str(tmp_path / "mt"), runs["members"][0]], out=str(out), ways=2, queries=1,
                 episodes_count=3)
    report = api.evaluate(str(out), ways=2, shots=1, queries=1, episodes_count=3,
                          progress=False, baseline=False)
    assert 0 <= report.result.accuracy <= 1 and report.tasks is None
    with pytest.raises(ConfigError):  # the other task's head is not part of the ensemble
        api.evaluate(str(out), task="genus", ways=2, shots=1, queries=1, episodes_count=3,
                     progress=False, baseline=False)



def test_a_member_blind_in_validation_is_refused_and_bounds_are_warned(
        runs: dict[str, Path], tmp_path: Path) -> None:
    common = dict(ways=2, shots=1, queries=1, dim=8, val_every=0, val_episodes=1,
                  device="cpu", cache=False)
    Trainer(TrainConfig(data=str(runs["data"]), modalities=["caption"], steps=1, **common),
            tmp_path / "caption", progress=False).fit()
    val = set(load_run(tmp_path / "caption").split.val)
    data = tmp_path / "data"  # the validation classes' captions emptied
    shutil.copytree(runs["data"], data)
    rows = _rows(data)
    for row in rows:
        if row["species"] in val:
            row["caption"] = ""
    with (data / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copytree(tmp_path / "caption", tmp_path / "blind")
    config = tomllib.loads((tmp_path / "blind" / "config.toml").read_text())
    config["train"]["data"] = str(data)
    (tmp_path / "blind" / "config.toml").write_text(tomli_w.dumps(config))
    with pytest.raises(ConfigError, match="sees none of its modalities") as caught:
        api.ensemble([str(tmp_path / "blind"), runs["members"][0]], out=str(tmp_path / "x"),
                     ways=2, queries=1, episodes_count=3)
    assert caught.value.column == "runs"
    with pytest.warns(UserWarning, match="at the bound") as caught:  # two queries in all
        result = api.ensemble(runs["members"][:2], out=str(tmp_path / "few"), ways=2,
                              queries=1, episodes_count=2)
    assert any(math.isclose(math.log(t), -5, abs_tol=1e-3) for t in result.temperatures)
    assert any(member in str(w.message) for w in caught for member in runs["members"][:2])


def test_overwriting_an_ensemble_keeps_the_old_one_until_the_new_one_is_in_place(
        runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old run was deleted before the new one was renamed into place (a failed rename
    left neither), and the new directory kept `tempfile.mkdtemp`'s mode 0700."""
    out = tmp_path / "ens"
    shape = dict(ways=2, queries=1, episodes_count=3)
    api.ensemble(runs["members"][:2], out=str(out), **shape)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    plain.rmdir()
    before = (out / "config.toml").read_bytes()
    real = {"rename": os.rename, "replace": os.replace}

    def failing(name: str):
        def move(src, dst, *args, **kwargs):
            if Path(dst) == out and ".old-" not in Path(src).name:
                raise OSError("the disk went away")
            return real[name](src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "rename", failing("rename"))
    monkeypatch.setattr(os, "replace", failing("replace"))
    with pytest.raises(OSError, match="disk went away"):
        api.ensemble(runs["members"][1:], out=str(out), overwrite=True, **shape)
    assert (out / "config.toml").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ens"]



def _member(balance: bool = False, steps: int = 3) -> FewShotModel:
    """A small ProtoNet on three tabular features, with ``steps`` transduction steps."""
    model = FewShotModel.build(kinds={"x": "tabular"}, input_info={"x": {"features": 3}},
                               dim=8, fusion="mean", learner="protonet").double().eval()
    model.set_test_time(TestTime(transduction=steps, transduction_balance=balance))
    return model


@pytest.mark.parametrize("balance", [False, True])
def test_joint_transduction_of_identical_members_is_each_ones_own(balance: bool) -> None:
    """At temperature 1, the mean of two identical members' probabilities is each one's:
    joint steps assign as each member's own would, and the ensemble's log-probabilities are
    the log-softmax of the member's transductive logits."""
    torch.manual_seed(0)
    first = _member(balance)
    ensemble = EnsembleModel([first, copy.deepcopy(first)], "mean").eval()
    ensemble.joint_transduction = True
    on = torch.ones(6, dtype=torch.bool)
    support = {"x": ModalityBatch(torch.randn(6, 3, dtype=torch.float64), on)}
    query = {"x": ModalityBatch(torch.randn(6, 3, dtype=torch.float64), on)}
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    own = first.adapt_predict(support, labels, query, 3)
    torch.testing.assert_close(ensemble.adapt_predict(support, labels, query, 3),
                               own.float().log_softmax(-1), rtol=0, atol=1e-5)
    first.set_test_time(TestTime())  # without steps the member's logits are its plain ones
    assert not torch.allclose(first.adapt_predict(support, labels, query, 3), own)


def test_joint_transduction_lets_a_confident_member_move_an_unsure_members_prototypes() -> None:
    """Member B alone takes query 0 (class 0, nearer B's class-1 support) for class 1, and
    its own soft k-means step pulls its class-1 prototype towards it. Member A tells the two
    queries apart with confidence; in one joint step, A's assignment moves B's class-0
    prototype towards query 0 and B gets it right."""
    head = ProtoNet().double().eval()
    labels = torch.tensor([0, 1])
    on = torch.ones(2, 1, dtype=torch.bool)

    def refinement(support: list[list[float]], query: list[list[float]]) -> Any:
        return head.refinement(None, Embeddings(torch.tensor(support, dtype=torch.float64), on),
                               labels, Embeddings(torch.tensor(query, dtype=torch.float64), on),
                               2)

    b_support, b_query = [[0.0, 0.0], [4.0, 0.0]], [[2.2, 0.0], [5.0, 0.0]]
    head.transduction = 1
    alone = head.logits(None, Embeddings(torch.tensor(b_support, dtype=torch.float64), on),
                        labels, Embeddings(torch.tensor(b_query, dtype=torch.float64), on), 2)
    assert alone.argmax(-1).tolist() == [1, 1]  # B's own step keeps query 0 wrong
    refinements = [refinement([[0.0], [10.0]], [[1.0], [9.0]]), refinement(b_support, b_query)]
    ensemble = EnsembleModel([_member(steps=1), _member(steps=1)], "mean").eval()
    logits = torch.stack([r.logits().float() for r in refinements])
    refined = ensemble.refine_jointly(logits, torch.ones(2, 2, dtype=torch.bool), refinements)
    assert refined[1].argmax(-1).tolist() == [0, 1]  # B, jointly: both right
    assert refined[0].argmax(-1).tolist() == [0, 1]
    assert ensemble.combine(refined, torch.ones(2, 2, dtype=torch.bool)).argmax(-1).tolist() \
        == [0, 1]


def test_a_joint_transduction_ensemble_is_written_loaded_and_evaluated_both_ways(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--joint-transduction`` is kept in the [ensemble] table; evaluation from embeddings
    (each sample embedded once per member) equals the episode-by-episode ``adapt_predict``,
    and differs from the same members' own steps; a damaged value is a typed error, and so
    is the flag where no member has steps to take."""
    out = tmp_path / "joint"
    assert main(["ensemble", *runs["members"][:2], "--out", str(out), "--transduction", "2",
                 "--joint-transduction", "--ways", "2", "--queries", "2",
                 "--episodes-count", "6", "--seed", "1"]) == 0
    assert "joint transduction" in capsys.readouterr().out
    run = load_run(out)
    assert run.ensemble["joint_transduction"] is True and run.model.joint_transduction
    assert run.name == "ensemble-mean+joint(protonet+gated, protonet+late)"  # in reports
    prepared = load_run_data(run)
    plan = sampled_episodes(prepared.store, prepared.classes("test"), 2, 1, 2, 7, 8)
    fast = episode_logits(run.model, prepared.store, plan)
    selected = protocol.select_modalities(run.model, prepared.store, None)
    episodes = zip(plan.support, plan.support_labels, plan.query, plan.ways, strict=True)
    slow = protocol._predict_per_episode(run.model, prepared.store, plan, episodes, selected,
                                         None, 0, "cpu")
    for one, other in zip(fast, slow, strict=True):
        torch.testing.assert_close(one, other, atol=1e-5, rtol=1e-5)
    run.model.joint_transduction = False
    own = episode_logits(run.model, prepared.store, plan)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(fast, own, strict=True))
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("httpx"):
        from fastapi.testclient import TestClient

        from metamodal.api.serve import create_app

        with TestClient(create_app(out, state=tmp_path / "state", eval_episodes=0)) as c:
            assert c.get("/api/model").json()["joint_transduction"] is True  # serve says so
    # one evaluation may take the steps the other way: an ensemble made without the flag
    # and evaluated with it equals the joint one, and the joint one evaluated without it
    # equals the one made without (the temperatures are fitted on the members' own steps)
    plain = tmp_path / "plain"
    api.ensemble(runs["members"][:2], out=str(plain), transduction=2, ways=2, queries=2,
                 episodes_count=6, seed=1)
    shape = dict(ways=3, shots=1, queries=3, episodes_count=12, seed=4, baseline=False,
                 progress=False)
    joint = api.evaluate(out, **shape)
    made_plain = api.evaluate(plain, **shape)
    assert joint.result.accuracies != made_plain.result.accuracies
    unjoined = api.evaluate(out, joint_transduction=False, json=str(tmp_path / "u.json"),
                            **shape)
    assert unjoined.result.accuracies == made_plain.result.accuracies
    assert unjoined.name == made_plain.name == "ensemble-mean(protonet+gated, protonet+late)"
    # the JSON says what was evaluated: it recorded "name": null and no settings
    api.evaluate(out, json=str(tmp_path / "j.json"), **shape)
    results = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in "ju"}
    assert results["j"]["name"] == joint.name and results["u"]["name"] == unjoined.name
    assert (results["j"]["joint_transduction"], results["u"]["joint_transduction"]) == (
        True, False)
    assert [t["transduction"] for t in results["j"]["test_time"]] == [2, 2]
    # no steps, no joint transduction: the name said "+joint" for the members' own logits
    stepless = api.evaluate(out, transduction=0, **shape)
    assert stepless.name == made_plain.name
    assert stepless.result.accuracies == api.evaluate(plain, transduction=0,
                                                      **shape).result.accuracies
    joined = api.evaluate(plain, joint_transduction=True, **shape)
    assert joined.result.accuracies == joint.result.accuracies and joined.name == joint.name
    with pytest.raises(ConfigError, match="ensembles") as caught:  # one network
        api.evaluate(runs["members"][0], joint_transduction=True, **shape)
    assert caught.value.column == "joint_transduction"
    with pytest.raises(ConfigError, match="no member with prototypes"):
        api.evaluate(plain, joint_transduction=True, transduction=0, **shape)
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text(text.replace("joint_transduction = true",
                                                  'joint_transduction = "yes"'))
    with pytest.raises(RunError, match="joint_transduction") as caught:
        load_run(out)
    assert caught.value.column == "ensemble.joint_transduction"
    with pytest.raises(ConfigError, match="no member with prototypes") as caught:  # no steps
        api.ensemble(runs["members"], out=str(tmp_path / "none"), joint_transduction=True)
    assert caught.value.column == "joint_transduction" and "--transduction" in caught.value.fix
    assert not (tmp_path / "none").exists()


def test_a_late_member_does_not_vote_where_a_class_lacks_the_querys_modality(
        runs: dict[str, Path]) -> None:
    """Supports of class a carry a caption only, of class b an image only; a query of an
    image. The late-fusion member compares a modality only where every class carries it, so it
    has no score for the query: its logits of zero counted as a vote of even probabilities,
    pulling the gated member's answer towards a coin toss. It abstains there now."""
    rows = _rows(runs["data"])
    clf = FewShotClassifier(runs["mean"], media_root=runs["data"])
    clf.fit([{"caption": rows[0]["caption"]}, {"image": rows[4]["image"]}], ["a", "b"])
    query = clf.encode([{"image": rows[5]["image"]}, {"caption": rows[1]["caption"],
                                                      "image": rows[1]["image"]}])
    model = clf.run_.model
    _, available = model.member_logits(clf.support_.batch, clf.support_labels_, query.batch, 2)
    late = [i for i, member in enumerate(model.members) if "late" in type(
        member.backbone.fusion).__name__.lower()]
    assert late and available[late[0]].tolist() == [False, False]
    assert available.any(0).tolist() == [True, True]  # the others vote
