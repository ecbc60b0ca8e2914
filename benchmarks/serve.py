"""Load test of ``metamodal serve`` on loopback, and a crash test of its state.

(a) Throughput and latency: a server process (``metamodal serve``) on 127.0.0.1 answers
    predict requests (one query, image + caption, against one task) from N concurrent clients
    (1, 8 and 64 by default), a fixed number of requests per level and a time limit each, with
    the batching of concurrent queries on and off. The table gives requests per second, p50 and
    p99 latency and the error count (a non-200 answer or a failed connection), which must be 0.
    Before timing, the two servers' answers to the same queries are compared: the same labels
    and probabilities to 1e-5.
(b) Durability: clients create tasks and add examples while the server is killed with
    SIGKILL; a new server on the same state must hold every task and example whose write was
    acknowledged (201), and may hold none that was not begun.

Every request goes to 127.0.0.1; every loop is bounded in count and time.

    python benchmarks/serve.py                    # the README's table
    python benchmarks/serve.py --tiny             # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(root: Path, *, steps: int, dim: int) -> tuple[Path, Path]:
    """A ProtoNet run on image + caption of the synthetic dataset: (run, data)."""
    from metamodal.config import TrainConfig
    from metamodal.datasets.synthetic import make_synthetic
    from metamodal.train.trainer import Trainer

    data = make_synthetic(root / "data", classes=24, per_class=6, image_size=16, seed=0,
                          missing_rate=0.0)
    config = TrainConfig(data=str(data), modalities=["image", "caption"], steps=steps, ways=5,
                         shots=1, queries=2, dim=dim, val_every=0, device="cpu", cache=False)
    Trainer(config, root / "run", progress=False).fit()
    return root / "run", data


class Server:
    """``metamodal serve`` as a child process on a free loopback port."""

    def __init__(self, run: Path, state: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metamodal.cli", "serve", str(run), "--port", str(self.port),
             "--state", str(state), "--eval-episodes", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not answer within 120 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=60)


def samples(data: Path) -> dict[str, list[dict[str, str]]]:
    """The dataset's rows by class."""
    by_class: dict[str, list[dict[str, str]]] = {}
    with open(data / "samples.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_class.setdefault(row["species"], []).append(row)
    return by_class


def form(data: Path, rows: list[dict[str, str]], letter: str, *, labelled: bool):
    """(fields, files) of a multipart form of ``rows``."""
    fields, files = {}, []
    for n, row in enumerate(rows):
        fields[f"{letter}{n}.caption"] = row["caption"]
        if labelled:
            fields[f"{letter}{n}.label"] = row["species"]
        files.append((f"{letter}{n}.image", ("x.png", (data / row["image"]).read_bytes(),
                                              "image/png")))
    return fields, files


def create_task(url: str, data: Path, by_class: dict, classes: list[str], shots: int) -> str:
    rows = [r for c in classes for r in by_class[c][:shots]]
    fields, files = form(data, rows, "e", labelled=True)
    answer = httpx.post(url + "/api/tasks", data=fields, files=files, timeout=60)
    answer.raise_for_status()
    return answer.json()["id"]


def predict(client: httpx.Client, url: str, task: str, data: Path, row: dict) -> dict:
    fields, files = form(data, [row], "q", labelled=False)
    answer = client.post(f"{url}/api/tasks/{task}/predict", data=fields, files=files,
                         timeout=60)
    answer.raise_for_status()
    return answer.json()


def load(url: str, task: str, data: Path, queries: list[dict], clients: int, requests: int,
         limit: float) -> dict:
    """``requests`` predict requests from ``clients`` threads (stopping after ``limit``
    seconds): throughput, p50 / p99 latency in ms, errors, requests done."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    guard = threading.Lock()
    deadline = time.monotonic() + limit

    def client_loop() -> None:
        nonlocal errors, issued
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                with guard:
                    if issued >= requests:
                        return
                    n = issued
                    issued += 1
                start = time.perf_counter()
                try:
                    predict(client, url, task, data, queries[n % len(queries)])
                    ok = True
                except (httpx.HTTPError, KeyError):
                    ok = False
                with guard:
                    latencies.append(time.perf_counter() - start)
                    errors += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    pick = (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
            ) if ordered else (lambda q: float("nan"))
    return {"done": len(latencies), "rps": len(latencies) / elapsed, "p50": pick(0.50),
            "p99": pick(0.99), "errors": errors}


def check_same(urls: list[str], tasks: list[str], data: Path, queries: list[dict]) -> float:
    """The largest difference between the servers' probabilities on the same queries (the
    labels must agree too)."""
    worst = 0.0
    with httpx.Client() as client:
        for row in queries:
            answers = [predict(client, u, t, data, row)["predictions"][0]
                       for u, t in zip(urls, tasks, strict=True)]
            if len({a["label"] for a in answers}) != 1:
                raise SystemExit(f"the servers disagree on {row['id']}: {answers}")
            for label, p in answers[0]["probabilities"].items():
                worst = max(worst, max(abs(p - a["probabilities"][label]) for a in answers))
    return worst


def durability(run: Path, data: Path, by_class: dict, *, writers: int, seconds: float) -> dict:
    """Writers create tasks and add examples; the server is killed mid-load (SIGKILL) and
    restarted on the same state: acknowledged tasks / examples and how many are missing."""
    state = Path(tempfile.mkdtemp(prefix="serve-state-"))
    server = Server(run, state)
    classes = list(by_class)
    acked_tasks: set[str] = set()
    acked_examples: set[str] = set()
    guard = threading.Lock()
    stop = threading.Event()

    def writer(k: int) -> None:
        with httpx.Client() as client:
            for n in range(10_000):
                if stop.is_set():
                    return
                try:
                    pair = [classes[(k + n) % len(classes)], classes[(k + n + 1) % len(classes)]]
                    fields, files = form(data, [by_class[c][0] for c in pair], "e",
                                         labelled=True)
                    answer = client.post(server.url + "/api/tasks", data=fields, files=files,
                                         timeout=30)
                    if answer.status_code != 201:
                        continue
                    task = answer.json()["id"]
                    with guard:
                        acked_tasks.add(task)
                    fields, files = form(data, [by_class[pair[0]][1]], "e", labelled=True)
                    answer = client.post(f"{server.url}/api/tasks/{task}/examples",
                                         data=fields, files=files, timeout=30)
                    if answer.status_code == 201:
                        with guard:
                            acked_examples.update(answer.json()["added"])
                except httpx.HTTPError:
                    return  # the server is gone

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    server.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    with guard:
        tasks_acked, examples_acked = set(acked_tasks), set(acked_examples)
    restarted = Server(run, state)
    try:
        listed = httpx.get(restarted.url + "/api/tasks", timeout=60).json()["tasks"]
        found_tasks = {t["id"] for t in listed}
        found_examples = set()
        for task in tasks_acked & found_tasks:
            detail = httpx.get(f"{restarted.url}/api/tasks/{task}", timeout=60).json()
            found_examples.update(e["id"] for e in detail["examples"])
    finally:
        restarted.stop()
    return {"tasks": len(tasks_acked), "examples": len(examples_acked),
            "lost_tasks": len(tasks_acked - found_tasks),
            "lost_examples": len(examples_acked - found_examples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--requests", type=int, default=400, help="requests per level")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per level, at most")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the run")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--kill-after", type=float, default=5.0,
                        help="seconds of writes before SIGKILL")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="a few seconds: 1 and 4 clients")
    args = parser.parse_args()
    if args.tiny:
        args.clients, args.requests, args.limit, args.steps = "1,4", 12, 20.0, 5
        args.kill_after, args.writers = 1.5, 3
    levels = [int(c) for c in args.clients.split(",")]
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    run, data = make_run(root, steps=args.steps, dim=args.dim)
    by_class = samples(data)
    classes = sorted(by_class)[:5]
    queries = [row for c in classes for row in by_class[c][1:]]
    servers = {"on": Server(run, root / "state-on"),
               "off": Server(run, root / "state-off", "--no-batching")}
    failed = False
    print("metamodal serve on 127.0.0.1, a ProtoNet run on image + caption "
          f"(dim {args.dim}, {args.steps} training steps)")
    try:
        tasks = {k: create_task(s.url, data, by_class, classes, 1) for k, s in servers.items()}
        worst = check_same([s.url for s in servers.values()], list(tasks.values()), data,
                           queries[:10])
        print(f"check: batching on and off give the same labels; probabilities differ by at "
              f"most {worst:.1e}")
        if worst > 1e-5:
            print("FAILED: the probabilities differ")
            failed = True
        print(f"\n(a) predict, one query (image + caption), 5-way 1-shot task; "
              f"{args.requests} requests a level, {args.limit:.0f} s at most; "
              f"{os.cpu_count()} CPUs")
        print(f"{'clients':>7}  {'batching':<8}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  "
              f"{'errors':>6}  {'done':>5}")
        for clients in levels:
            for key, server in servers.items():
                r = load(server.url, tasks[key], data, queries, clients, args.requests,
                         args.limit)
                failed |= r["errors"] > 0
                print(f"{clients:>7}  {key:<8}  {r['rps']:>7.1f}  {r['p50']:>7.1f}  "
                      f"{r['p99']:>7.1f}  {r['errors']:>6}  {r['done']:>5}")
    finally:
        for server in servers.values():
            server.stop()
    d = durability(run, data, by_class, writers=args.writers, seconds=args.kill_after)
    print(f"\n(b) SIGKILL after {args.kill_after:.1f} s of writes by {args.writers} clients, "
          f"then restart: {d['tasks']} tasks and {d['examples']} added examples acknowledged; "
          f"lost: {d['lost_tasks']} tasks, {d['lost_examples']} examples")
    failed |= d["lost_tasks"] > 0 or d["lost_examples"] > 0 or d["tasks"] == 0
    if failed:
        print("FAILED: errors under load, lost writes, or no write acknowledged")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
