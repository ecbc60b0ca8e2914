"""``metamodal serve`` as a process: it answers on loopback and stops gracefully on SIGTERM,
keeping what it acknowledged (SIGKILL mid-write is `benchmarks/serve.py`'s part (b), run by
tests/test_benchmarks.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import serve as bench  # noqa: E402


def test_sigterm_stops_the_server_gracefully_and_keeps_its_tasks(tmp_path: Path) -> None:
    run, data = bench.make_run(tmp_path, steps=2, dim=8)
    by_class = bench.samples(data)
    classes = sorted(by_class)[:2]
    server = bench.Server(run, tmp_path / "state")
    try:
        task = bench.create_task(server.url, data, by_class, classes, 2)
    finally:
        server.stop(signal.SIGTERM)
    assert server.process.returncode == 0, server.process.stderr.read()[-2000:]
    again = bench.Server(run, tmp_path / "state")
    try:
        import httpx

        detail = httpx.get(f"{again.url}/api/tasks/{task}", timeout=30).json()
        assert [c["examples"] for c in detail["classes"]] == [2, 2]
    finally:
        again.stop(signal.SIGTERM)
