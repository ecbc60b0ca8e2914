"""Every flag of the ``metamodal`` command comes from a settings field, and back."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from metamodal import api
from metamodal.api.fields import field_help
from metamodal.cli import build_parser, collect
from metamodal.config import TrainConfig


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


@pytest.mark.parametrize(("verb", "cls"), [
    ("eval", api.EvalSettings), ("report", api.ReportSettings), ("predict", api.PredictSettings),
    ("episodes", api.EpisodesSettings), ("make-synthetic", api.SyntheticSettings),
    ("download", api.DownloadSettings), ("retrieve", api.RetrieveSettings),
    ("zero-shot", api.ZeroShotSettings), ("cache", api.CacheSettings),
    ("ensemble", api.EnsembleSettings),
])
def test_each_settings_field_is_a_flag_with_its_documentation(verb: str, cls: type) -> None:
    parser = _subparser(verb)
    names = {f.name for f in dataclasses.fields(cls)}
    assert names <= _dests(parser)
    helps = {a.dest: a.help or "" for a in parser._actions}
    documented = {}
    for base in reversed(cls.__mro__):  # a class's own words for a field it redefines
        if dataclasses.is_dataclass(base):
            documented.update(field_help(base))
    for name in names:
        assert documented[name].replace("`", "")[:20] in helps[name], name


def test_train_flags_are_the_config_fields_that_are_not_tables() -> None:
    parser = _subparser("train")
    scalar = {f.name for f in dataclasses.fields(TrainConfig)
              if not f.name.endswith("options")
              and f.name not in ("preprocess", "align_only", "world_size")}
    assert scalar <= _dests(parser)
    args = parser.parse_args(["--out", "r", "--data", "d", "--ways", "3", "--modalities",
                              "a,b", "--encoder", "a=conv4", "--augment", "image.rotate=10",
                              "--no-cache", "--objective", "margin"])
    values = collect(args, TrainConfig, [f.name for f in dataclasses.fields(TrainConfig)])
    assert values == {"data": "d", "ways": 3, "modalities": ["a", "b"],
                      "encoders": {"a": "conv4"}, "augment": {"image": {"rotate": 10}},
                      "cache": False, "align_objective": "margin"}
    assert TrainConfig().updated(values).ways == 3  # they are valid config keys


def test_only_given_flags_reach_the_api() -> None:
    args = _subparser("eval").parse_args(["RUN", "--shots", "5"])
    assert collect(args, api.EvalSettings, ["run", "shots", "ways", "baseline"]) == {
        "run": "RUN", "shots": 5}


def test_an_unknown_setting_is_a_config_error() -> None:
    from metamodal.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown setting"):
        api.evaluate("RUN", shot=5)


@pytest.mark.parametrize(("options", "name"), [
    ({"shots": "5"}, "shots"), ({"split": "tset"}, "split"), ({"ablation": 1}, "ablation"),
    ({"modalities": "image"}, "modalities"), ({"split": Path("test")}, "split"),
    ({"modalities": []}, "modalities"),
])
def test_a_setting_of_the_wrong_type_is_a_config_error_naming_it(options: dict,
                                                                 name: str) -> None:
    from metamodal.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        api.evaluate("RUN", **options)  # refused before the run is read
    assert caught.value.column == name


def test_a_path_is_taken_where_a_setting_is_a_string() -> None:
    from metamodal.api.fields import make

    settings = make(api.EvalSettings, {"run": Path("RUN"), "data": Path("DATA")}, verb="evaluate")
    assert (settings.run, settings.data) == ("RUN", "DATA")


def test_fusion_flags_land_in_fusion_options_merged_with_the_config_files() -> None:
    from metamodal.cli import _train

    args = _subparser("train").parse_args(["--out", "r", "--fusion", "late", "--distill", "2",
                                           "--unimodal-loss", "0.5"])
    values = _train(args, lambda **given: given)
    assert values["fusion"] == "late"
    assert values["fusion_options"] == {"distill": 2.0, "unimodal_loss": 0.5}
    args = _subparser("train").parse_args(["--out", "r", "--distill", "1"])
    from_file = TrainConfig(fusion="late", fusion_options={"unimodal_loss": 1.0})
    merged = from_file.merged({"fusion_options": _train(args, lambda **g: g)["fusion_options"]})
    assert merged.fusion_options == {"unimodal_loss": 1.0, "distill": 1.0}
    assert "fusion_options" not in _train(_subparser("train").parse_args(["--out", "r"]),
                                          lambda **given: given)
