"""The top-level package: lazy exports and registries reachable by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

import metamodal


@pytest.mark.parametrize("name", metamodal.__all__)
def test_every_export_resolves(name: str) -> None:
    assert getattr(metamodal, name) is not None


def test_registries_create_by_name_and_list_names() -> None:
    from metamodal import encoders, fusions, learners

    assert "conv4" in encoders.names() and "gated" in fusions.names()
    assert {"protonet", "matchingnet", "relationnet", "siamese"} <= set(learners.names())
    head = learners.create("protonet", dim=8)
    assert type(head).__name__ == "ProtoNet"
    with pytest.raises(metamodal.ConfigError, match="protonet"):
        learners.create("protonett")


def test_import_is_light() -> None:
    code = ("import sys, metamodal; heavy = [m for m in ('matplotlib', 'tensorboard', 'PIL', "
            "'soundfile', 'torch') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_atomic_write_replaces_whole_files_with_usual_permissions(tmp_path) -> None:
    import os

    from metamodal.io import atomic_write, atomic_write_json

    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": 1})
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask

    def fail(tmp) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert '"a": 1' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_evaluate_is_callable_however_it_is_reached() -> None:
    import metamodal.evaluate.protocol  # noqa: F401 - binds the subpackage on metamodal
    from metamodal import evaluate
    from metamodal.evaluate.protocol import evaluate as function

    assert callable(evaluate) and callable(metamodal.evaluate)
    with pytest.raises(metamodal.ConfigError, match="episodes"):
        evaluate(None, None, [], episodes=0)
    with pytest.raises(metamodal.ConfigError, match="episodes"):
        function(None, None, [], episodes=0)
