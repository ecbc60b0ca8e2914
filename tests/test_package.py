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
