"""Fixtures shared by several test modules, and the environment every test runs in.

Nothing is downloaded: the Hugging Face libraries are switched offline, and the feature cache
of pretrained encoders lives in a temporary directory, never in the user's cache.

``METAMODAL_TEST_WITHOUT_EXTRAS=1`` runs the suite as if the ``pretrained`` extra were not
installed (its packages cannot be imported): ``METAMODAL_TEST_WITHOUT_EXTRAS=1 pytest -q``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest
import torch

from metamodal.encoders.pretrained import EXTRA_MODULES

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["METAMODAL_CACHE"] = tempfile.mkdtemp(prefix="metamodal-test-features-")
if os.environ.get("METAMODAL_TEST_WITHOUT_EXTRAS") == "1":
    for _name in EXTRA_MODULES:
        sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids contention on a shared machine.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
