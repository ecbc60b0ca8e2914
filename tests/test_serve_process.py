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


def test_slow_and_surplus_connections_are_closed_and_an_abort_is_no_traceback(
        tmp_path: Path) -> None:
    """A client that never finished its headers or body held its connection for ever (a
    thousand such made the server unreachable and flooded its log at the open-file limit);
    an upload the client abandoned left a ClientDisconnect traceback in the log. Slow
    connections are closed after --request-timeout, connections beyond --max-connections
    as they open, and the server still answers."""
    import socket
    import time

    import httpx

    run, _ = bench.make_run(tmp_path, steps=2, dim=8)
    server = bench.Server(run, tmp_path / "state", "--request-timeout", "2",
                          "--max-connections", "4")
    try:
        def opened(first: bytes) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(first)
            return sock

        head = (b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
                b"form-data; boundary=zz\r\nContent-Length: 1000\r\n\r\n--zz\r\n")
        slow = [opened(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"), opened(head)]
        time.sleep(0.5)
        surplus = [opened(b"") for _ in range(4)]  # beyond the 4 open at once
        time.sleep(0.5)
        assert any(sock.recv(1) == b"" for sock in surplus)  # closed as they opened
        for sock in surplus:
            sock.close()
        time.sleep(2.5)
        for sock in slow:  # closed by the server after the 2 s
            assert sock.recv(1) == b""
            sock.close()
        abandoned = opened(head)
        abandoned.close()  # mid-upload
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/api/health", timeout=10).status_code == 200
    finally:
        server.stop(signal.SIGTERM)
    log = server.process.stderr.read()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-2000:]
