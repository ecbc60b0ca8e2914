"""The speed suite for one device in one command: runs the benchmark scripts, prints every table
they print, and writes one JSON with all of them.

    python benchmarks/run.py --device cpu                       # the CPU suite
    python benchmarks/run.py --device cuda --omniglot DIR       # the GPU suite, with the recipe
    python benchmarks/run.py --device cpu --quick               # a smoke test (tiny sizes)

Entries (``--only`` picks some):

- ``meta_learners``: ``meta_learners.py`` (MAML and ProtoNet meta-updates against learn2learn,
  higher and plain PyTorch, every metamodal way: loop, vmap, compiled vmap), float64
  meta-gradients compared;
- ``episodes``: ``episodes.py`` (ProtoNet training and adaptation, every fusion, against plain
  PyTorch), logits and gradients compared;
- ``data``: ``data.py`` (decoding and episode sampling against learn2learn's data pipeline);
  host work, the same on either device;
- ``cpu_path`` (``--device cpu`` only): ``cpu_path.py`` (the demo's CPU-path changes, each
  against the computation it replaced), losses, gradients and logits compared;
- ``recipe``: ``configs/omniglot.toml`` trained by ``metamodal train`` on the device (given
  ``--omniglot``: an imported Omniglot dataset, or the folder of its archives, imported
  first): wall seconds of the command, training seconds, the steps trained (fewer than
  3,000 where the recipe's ``max_minutes`` ended it, ``time_limited``) and the best
  validation accuracy the run logged. ``--recipe-flags`` adds flags (e.g. ``"--precision
  bf16"``, or ``"--max-minutes 0"`` for all 3,000 steps on any machine).

Each entry runs in its own process, as its script runs alone; its output is passed through as
it comes. The JSON (``--json``, default ``benchmarks-DEVICE.json``) holds the device, torch,
the machine, and per entry: the command, its exit status, wall seconds, the tables parsed from
its output (title, header, rows of cells) and the lines outside tables (summaries, notes). The
suite exits 1 when an entry fails (a script's own check included). Nothing here asserts on
time; numbers vary from run to run on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENTRIES = ("meta_learners", "episodes", "data", "cpu_path", "recipe")
QUICK = {
    "meta_learners": ["--tiny", "--repeats", "1", "--warmup", "0", "--threads", "1",
                      "--compile-backend", "aot_eager"],
    "episodes": ["--steps", "1", "--repeats", "1", "--warmup", "1", "--fusions", "mean",
                 "--classes", "30", "--per-class", "20"],
    "data": ["--tasks", "10", "--repeats", "1", "--check", "5", "--classes", "15",
             "--per-class", "8"],
    "cpu_path": ["--steps", "1", "--warmup", "1", "--episodes", "10", "--repeats", "1",
                 "--classes", "15"],
}
"""Arguments of each script in ``--quick`` mode (those of ``tests/test_benchmarks.py``)."""
QUICK_RECIPE = ["--steps", "20", "--val-every", "10", "--val-episodes", "10"]
"""The recipe's flags in ``--quick`` mode."""
DASHES = re.compile(r"^-+(  -+)*$")


def parse_tables(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The tables `text_table.print_table` printed in ``text`` (title, header, rows, each a
    list of cells cut at the columns of its dash line), and the other non-empty lines.

    Example:
        >>> out = "note\\n\\nT\\n--  ---\\na   bb\\n--  ---\\nx    1\\ny z  2\\n--  ---\\nend"
        >>> tables, lines = parse_tables(out)
        >>> tables[0]["title"], tables[0]["header"], tables[0]["rows"], lines
        ('T', ['a', 'bb'], [['x', '1'], ['y z', '2']], ['note', 'end'])
    """
    lines = text.splitlines()
    tables: list[dict[str, Any]] = []
    used: set[int] = set()
    i = 0
    while i + 2 < len(lines):
        line = lines[i]
        if not (DASHES.match(line) and lines[i + 2] == line):
            i += 1
            continue
        spans = [m.span() for m in re.finditer(r"-+", line)]

        def cells(row: str, spans: list[tuple[int, int]] = spans) -> list[str]:
            return [row[start:spans[k + 1][0] if k + 1 < len(spans) else None].strip()
                    for k, (start, _) in enumerate(spans)]

        end = i + 3
        while end < len(lines) and lines[end] != line:
            end += 1
        first = i
        while first > 0 and lines[first - 1].strip() and first - 1 not in used:
            first -= 1
        tables.append({"title": "\n".join(lines[first:i]), "header": cells(lines[i + 1]),
                       "rows": [cells(row) for row in lines[i + 3:end]]})
        used.update(range(first, end + 1))
        i = end + 1
    other = [line for k, line in enumerate(lines) if k not in used and line.strip()]
    return tables, other


def run_entry(name: str, command: list[str], *, cwd: Path = ROOT) -> dict[str, Any]:
    """Run one entry, passing its output through; its record for the JSON."""
    print(f"\n=== {name}: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        print(line, end="", flush=True)
        output.append(line)
    status = process.wait()
    seconds = time.perf_counter() - started
    tables, lines = parse_tables("".join(output))
    print(f"=== {name}: exit {status}, {seconds:.0f} s", flush=True)
    return {"command": command, "returncode": status, "seconds": round(seconds, 3),
            "tables": tables, "lines": lines}


def recipe(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``configs/omniglot.toml`` trained on the device: the ``recipe`` entry."""
    if not args.omniglot:
        return {"skipped": "no --omniglot dataset given"}
    data = Path(args.omniglot)
    if not (data / "dataset.toml").exists():  # the archives: import them first
        imported = run_entry("recipe import", [
            sys.executable, "-m", "metamodal.cli", "import", "omniglot", str(data),
            str(work / "omniglot"), "--val-groups", "Tagalog", "--test-groups", "Sanskrit",
            "--no-progress"])
        if imported["returncode"] != 0:
            return imported
        data = work / "omniglot"
    out = work / "recipe-run"
    flags = shlex.split(args.recipe_flags) + (QUICK_RECIPE if args.quick else [])
    record = run_entry("recipe", [
        sys.executable, "-m", "metamodal.cli", "train", "--config",
        str(ROOT / "configs" / "omniglot.toml"), "--data", str(data), "--out", str(out),
        "--device", args.device, "--overwrite", "--no-progress", *flags])
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "end":
                record["train_seconds"] = entry.get("train_seconds")
                record["best_val_acc"] = entry.get("best_val_acc")
                record["best_step"] = entry.get("best_step")
                record["steps"] = entry.get("step")  # fewer than 3,000 where max_minutes cut
                record["time_limited"] = entry.get("time_limited")
    return record


def describe(device: str) -> dict[str, Any]:
    """The device, torch and the machine, for the JSON's head."""
    import torch

    name = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            and torch.cuda.is_available() else platform.processor() or platform.machine())
    return {"device": device, "device_name": name, "torch": torch.__version__,
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "platform": platform.platform()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke test of every entry (numbers mean nothing)")
    parser.add_argument("--only", default=",".join(ENTRIES),
                        help=f"comma-separated entries ({','.join(ENTRIES)})")
    parser.add_argument("--json", help="the JSON to write (default benchmarks-DEVICE.json)")
    parser.add_argument("--omniglot", help="an imported Omniglot dataset (or its archives) "
                        "for the recipe entry")
    parser.add_argument("--recipe-flags", default="",
                        help='more flags of the recipe\'s `metamodal train`, e.g. "--precision '
                        'bf16"')
    parser.add_argument("--threads", type=int,
                        help="--threads of meta_learners.py, episodes.py and cpu_path.py (their "
                        "defaults otherwise)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ENTRIES]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose from {', '.join(ENTRIES)}")
    report: dict[str, Any] = {**describe(args.device), "quick": args.quick, "entries": {}}
    with tempfile.TemporaryDirectory(prefix="metamodal-bench-") as tmp:
        for name in chosen:
            if name == "recipe":
                report["entries"][name] = recipe(args, Path(tmp))
                continue
            if name == "cpu_path" and args.device != "cpu":
                report["entries"][name] = {"skipped": "it measures the CPU path"}
                print(f"\n{name}: skipped (it measures the CPU path)")
                continue
            command = [sys.executable, str(HERE / f"{name}.py")]
            if name not in ("data", "cpu_path"):
                command += ["--device", args.device]
            if args.threads and name != "data":
                command += ["--threads", str(args.threads)]
            command += QUICK[name] if args.quick else []
            report["entries"][name] = run_entry(name, command)
    path = Path(args.json or f"benchmarks-{args.device.split(':')[0]}.json")
    path.write_text(json.dumps(report, indent=1) + "\n")
    failed = [name for name, entry in report["entries"].items()
              if entry.get("returncode", 0) != 0]
    print(f"\nwrote {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
