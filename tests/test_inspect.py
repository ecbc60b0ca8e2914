"""Tests of dataset inspection: statistics, every problem listed at once, never raising."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sample_media import MEDIA_MODALITIES, write_media

from metamodal.data.inspect import InspectionReport, format_inspection, inspect_dataset

SCHEMA = """
name = "zoo"
label = "label"
group = "family"
""" + MEDIA_MODALITIES

HEADER = "id,label,family,photo,caption,sound,track,w,h\n"
GOOD_ROWS = (
    "1,cat,felid,a.png,a red cat,a.wav,a.npy,1,2\n"
    "2,cat,felid,b.png,grey cat,,b.npy,3,\n"
    "3,dog,canid,,a brown dog,b.wav,,5,6\n"
    "4,dog,canid,a.png,,a.wav,a.npy,,\n"
    "5,wolf,canid,b.png,wolf,b.wav,b.npy,7,8\n"
)


def problems(report: InspectionReport) -> list:
    """The report's problems other than the split being too small to train on with default
    episodes, which the tiny fixture below always has (tested in test_hostile_inputs.py)."""
    return [p for p in report.problems if " split has " not in p.message]


def make(root: Path, rows: str = GOOD_ROWS, schema: str = SCHEMA) -> Path:
    write_media(root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    np.save(root / "nan.npy", np.array([[0.0, np.inf]], dtype=np.float32))
    (root / "dataset.toml").write_text(schema)
    (root / "samples.csv").write_text(HEADER + rows)
    return root


def test_statistics_of_a_good_dataset(tmp_path: Path) -> None:
    report = inspect_dataset(make(tmp_path))
    assert problems(report) == []
    assert not report.ok  # 3 classes cannot make a default 5-way training episode
    assert (report.name, report.samples, report.classes, report.groups) == ("zoo", 5, 3, 2)
    assert report.class_size == {"min": 1, "median": 2, "max": 2}
    assert any("wolf" in w for w in report.warnings)  # a single-sample class
    m = report.modalities
    assert m["photo"].kind == "image" and m["photo"].present == 4
    assert m["photo"].missing_rate == 0.2
    assert m["photo"].details["width"] == {"min": 6, "median": 9.0, "max": 12}
    assert m["photo"].details["height"] == {"min": 5, "median": 7.0, "max": 9}
    assert m["photo"].details["decoded_shape"] == [3, 8, 8]
    assert m["caption"].details["tokens"] == {"min": 1, "median": 2.5, "max": 3}
    assert m["caption"].details["characters"]["max"] == len("a brown dog")
    assert m["sound"].details["seconds"] == pytest.approx(
        {"min": 0.05, "median": 0.075, "max": 0.1}
    )
    assert m["sound"].details["frames"]["max"] > m["sound"].details["frames"]["min"]
    assert m["track"].details["steps"] == {"min": 3, "median": 4.0, "max": 5}
    assert m["track"].details["dims"] == 2
    assert m["size"].columns == ["w", "h"] and m["size"].details["features"] == 2
    assert m["size"].missing_rate == 0.2


def test_format_and_to_dict(tmp_path: Path) -> None:
    report = inspect_dataset(make(tmp_path))
    text = format_inspection(report)
    assert "dataset zoo" in text and "samples 5, classes 3" in text and "groups 2" in text
    assert "photo" in text and "20.0%" in text and "columns w, h" in text
    assert "meta-train split has" in text and "not usable" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["modalities"]["track"]["dims"] == 2
    assert data["modalities"]["photo"]["missing_rate"] == 0.2


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    rows = GOOD_ROWS + (
        "1,cat,felid,,dup id,,,,\n"  # row 6: duplicate id
        "7,,felid,,no label,,,,\n"  # row 7: empty label
        "8,owl,strigid,missing.png,,,,,\n"  # row 8: missing image file
        "9,owl,strigid,broken.png,,,,,\n"  # row 9: corrupt image
        "10,owl,strigid,,,broken.wav,,,\n"  # row 10: corrupt audio
        "11,owl,strigid,,,,nan.npy,,\n"  # row 11: inf in a sequence
        "12,owl,strigid,,,,,nan,1\n"  # row 12: NaN in a tabular value
    )
    report = inspect_dataset(make(tmp_path, rows))
    assert not report.ok
    found = {(p.row, p.column) for p in problems(report)}
    assert found == {
        (6, "id"),
        (7, "label"),
        (8, "photo"),
        (9, "photo"),
        (10, "sound"),
        (11, "track"),
        (12, "w"),
    }
    text = format_inspection(report)
    assert f"{len(report.problems)} problem(s)" in text and "not usable" in text
    for name in ("missing.png", "broken.png", "broken.wav", "nan.npy", "duplicate id"):
        assert name in text
    assert report.samples == 12  # statistics are still computed
    assert report.modalities["photo"].details["unreadable"] == 2
    assert len(report.to_dict()["problems"]) == len(report.problems) == 9


def test_schema_problems_do_not_raise(tmp_path: Path) -> None:
    report = inspect_dataset(tmp_path)
    assert not report.ok and len(report.problems) == 1
    assert report.problems[0].file == str(tmp_path / "dataset.toml")
    (tmp_path / "dataset.toml").write_text('label = "y\n')
    report = inspect_dataset(tmp_path)
    assert not report.ok and "line 1" in str(report.problems[0])
    assert "not usable" in format_inspection(report)


def test_partly_valid_schema_is_still_inspected(tmp_path: Path) -> None:
    schema = SCHEMA + '\n[modalities.clip]\nkind = "hologram"\ncolumn = "clip"\n'
    schema = schema.replace("size = 8", "size = -3")
    report = inspect_dataset(make(tmp_path, schema=schema))
    found = problems(report)
    assert [p.column for p in found] == ["modalities.clip.kind", "modalities.photo"]
    assert "hologram" in found[0].message and "size" in found[1].message
    assert report.modalities["track"].details["dims"] == 2  # the rest was inspected


def test_missing_table_and_columns(tmp_path: Path) -> None:
    make(tmp_path)
    (tmp_path / "samples.csv").unlink()
    report = inspect_dataset(tmp_path)
    assert not report.ok and "no sample table" in report.problems[0].message
    (tmp_path / "samples.csv").write_text("id,label,family,photo\n1,cat,felid,a.png\n")
    report = inspect_dataset(tmp_path)
    missing = {p.column for p in problems(report)}
    assert missing == {"caption", "sound", "track", "w", "h"}
    assert list(report.modalities) == ["photo"]


def test_empty_report_formats() -> None:
    report = InspectionReport(path="somewhere")
    assert report.ok and report.to_dict()["modalities"] == {}
    assert "dataset ? (somewhere)" in format_inspection(report)


def test_splits_file_problems_are_listed(tmp_path: Path) -> None:
    make(tmp_path)
    (tmp_path / "splits.toml").write_text('train = ["felid"]\nval = []\ntest = ["canid"]\n')
    assert problems(inspect_dataset(tmp_path)) == []
    (tmp_path / "splits.toml").write_text('train = ["felid"]\n')
    report = inspect_dataset(tmp_path)
    assert problems(report) == [] and any("canid" in w for w in report.warnings)
    (tmp_path / "splits.toml").write_text('train = ["felid"]\ntest = ["bovid"]\n')
    report = inspect_dataset(tmp_path)
    assert not report.ok and report.modalities["photo"].present == 4  # still inspected
    (problem,) = problems(report)
    assert problem.file == str(tmp_path / "splits.toml") and problem.column == "test"
    assert "unknown group 'bovid'" in problem.message and problem.fix
    (tmp_path / "splits.toml").write_text("train = [\n")
    assert "not valid TOML" in inspect_dataset(tmp_path).problems[0].message


@pytest.mark.parametrize("name", ["dataset.toml", "splits.toml", "descriptions.toml"])
def test_a_dataset_s_own_file_linked_out_of_it_is_refused_unread(tmp_path: Path,
                                                                 name: str) -> None:
    """splits.toml, descriptions.toml (and dataset.toml) were followed out of the dataset
    directory and their values echoed in the errors; the sample table and media are not."""
    (tmp_path / "zoo").mkdir()
    root = make(tmp_path / "zoo")
    outside = tmp_path / "secret.toml"
    outside.write_text(SCHEMA if name == "dataset.toml" else 'train = ["API_KEY=sk-1"]\n'
                       if name == "splits.toml" else 'API_KEY = "sk-1 secret"\n')
    if name == "dataset.toml":
        (root / name).unlink()
    (root / name).symlink_to(outside)
    report = inspect_dataset(root)
    (problem,) = problems(report)
    assert problem.file == str(root / name) and "leads outside" in problem.message
    assert "API_KEY" not in str(problem) and "in place of the link" in problem.fix


def test_descriptions_that_zero_shot_would_refuse_are_listed(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "descriptions.toml").write_bytes(b"\xff\xfe not UTF-8")
    (problem,) = problems(inspect_dataset(root))  # it said: no problems found
    assert problem.file == str(root / "descriptions.toml")
    (root / "descriptions.toml").write_text('cat = "a small animal"\nemu = "a bird"\n')
    (problem,) = problems(inspect_dataset(root))
    assert problem.column == "emu"
    (root / "descriptions.toml").write_text('cat = "a small animal"\n')
    assert problems(inspect_dataset(root)) == []


def test_warnings_go_into_the_report(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    report = inspect_dataset(make(tmp_path, schema='lable = "typo"\n' + SCHEMA))
    assert problems(report) == [] and len(recwarn) == 0  # no Python warning escapes
    assert any("unknown keys ['lable']" in w for w in report.warnings)
    assert any("unknown keys" in w for w in report.to_dict()["warnings"])
    assert "warning: " in format_inspection(report)


def test_without_splits_file_every_seed_is_checked_and_the_shown_seed_named(
    tmp_path: Path,
) -> None:
    from collections import Counter

    from metamodal.data.splits import split_classes

    # ten classes of three samples, but c01 has one: seed 0's split can train (5-way) and
    # validate, while seed 1's split leaves too few classes with two samples
    labels = [f"c{i:02d}" for i in range(10) for _ in range(1 if i == 1 else 3)]
    rows = "".join(f"s{n},{label},{n}\n" for n, label in enumerate(labels))
    (tmp_path / "dataset.toml").write_text(
        'label = "y"\n[modalities.f]\nkind = "tabular"\ncolumns = ["x"]\n')
    (tmp_path / "samples.csv").write_text("id,y,x\n" + rows)
    sizes = Counter(labels)

    def trains(seed: int) -> bool:
        split = split_classes(labels, seed=seed)
        return (sum(sizes[c] >= 2 for c in split.train) >= 5
                and sum(sizes[c] >= 2 for c in split.val) >= 2)

    assert trains(0) and not trains(1)
    report = inspect_dataset(tmp_path)
    assert report.ok  # seed 0, the default, trains
    assert report.split == {"seed": 0, "train": 6, "val": 2, "test": 2}
    seeds = [w for w in report.warnings if "depends on the seed" in w]
    assert len(seeds) == 1 and "seed(s) 1, 8, 12" in seeds[0]
    assert "split (seeded, seed 0): meta-train 6 classes" in format_inspection(report)
    (tmp_path / "splits.toml").write_text(
        'train = ["c00", "c02", "c03", "c04", "c05"]\nval = ["c06", "c07"]\n'
        'test = ["c08", "c09", "c01"]\n')
    fixed = inspect_dataset(tmp_path)
    assert fixed.split["seed"] is None and not any("depends on the seed" in w
                                                   for w in fixed.warnings)


def test_too_few_groups_for_any_split_is_said(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text(
        'label = "y"\ngroup = "g"\n[modalities.f]\nkind = "tabular"\ncolumns = ["x"]\n')
    rows = "".join(f"s{c}{j},c{c},{'A' if c < 4 else 'B'},{j}\n"
                   for c in range(8) for j in range(3))
    (tmp_path / "samples.csv").write_text("id,y,g,x\n" + rows)
    report = inspect_dataset(tmp_path)
    assert not report.ok
    assert any("has 2 group(s)" in w and "needs at least 3" in w for w in report.warnings)
