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


def test_slow_and_surplus_connections_are_answered_and_closed_and_an_abort_is_no_traceback(
        tmp_path: Path) -> None:
    """A client that never finished its headers or body held its connection for ever (a
    thousand such made the server unreachable and flooded its log at the open-file limit);
    an upload the client abandoned left a ClientDisconnect traceback in the log. Headers not
    sent in time, or a body silent for --request-timeout, are answered 408; a connection
    beyond --max-connections is answered 503 (and logged); an upload that keeps sending,
    however slowly, goes on; and the server still answers."""
    import socket
    import time

    import httpx

    run, data = bench.make_run(tmp_path, steps=2, dim=8)
    server = bench.Server(run, tmp_path / "state", "--request-timeout", "2",
                          "--max-connections", "4")
    try:
        def opened(first: bytes) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(first)
            return sock

        def answer(sock: socket.socket) -> bytes:
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            sock.close()
            return received

        body = b"--zz\r\n" + b"x" * 8000
        head = (b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
                b"form-data; boundary=zz\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100))
        slow = [opened(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
                opened(head + body[:10])]
        time.sleep(0.5)
        surplus = [opened(b"") for _ in range(3)]  # beyond the 4 open at once
        assert any(answer(sock).startswith(b"HTTP/1.1 503") for sock in surplus)
        for sock in slow:  # the headers, and then the body, not sent in time
            assert answer(sock).startswith(b"HTTP/1.1 408"), "a slow request was not answered"
        steady = opened(head)
        for start in range(0, len(body), 800):  # 3 s in all at 2.7 kB/s, never silent for 2
            steady.sendall(body[start:start + 800])
            time.sleep(0.3)
        steady.sendall((b"\r\n--zz--" + b" " * 100)[:100])  # the 100 bytes declared past it
        assert not answer(steady).startswith(b"HTTP/1.1 408")  # answered, not timed out
        trickle = opened(head)
        try:
            for _ in range(8):  # bytes now and then: never silent for 2 s, but a trickle
                trickle.sendall(b"x")
                time.sleep(0.6)
        except OSError:  # answered and closed meanwhile
            pass
        assert b"slower than" in answer(trickle)
        idle = opened(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(2.5)  # idle after its answer: closed without a second, unasked answer
        assert answer(idle).count(b"HTTP/1.1") == 1
        abandoned = opened(head)
        abandoned.close()  # mid-upload
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/api/health", timeout=10).status_code == 200
    finally:
        server.stop(signal.SIGTERM)
    log = server.process.stderr.read()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-2000:]
    assert log.count("--max-connections") == 1  # said once
