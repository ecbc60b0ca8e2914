"""Data-parallel meta-training: steps per second with 1 and 2 processes, and a scaling model
of when more machines pay.

Part (a) trains the same run (synthetic images, ``--meta-batch`` tasks a step) on this
machine and prints steps per second:

- one process, one thread;
- two processes of one thread each, started by ``torchrun`` (gloo over loopback), each
  training half of every meta-batch (`metamodal.train.distributed`);
- with ``--threads``, also one process of two threads (one process's usual way to use two
  cores; on a 2-core machine shared with other work it was many times slower than one
  thread, as threads wait for each other).

Each row also gives the time per step spent in the exchange (the all-reduce of the gradients
and of the BatchNorm statistics, rank 0's reading), and the check that both runs compute the
same thing: the largest difference between the final weights of one and two processes
(float32; the gradient sums are taken in another order, so the runs drift apart by rounding).
Convolution biases that a BatchNorm follows are shown apart: BatchNorm cancels them, so their
gradient is zero up to rounding, which Adam turns into steps of up to ``lr``, differently in
each run (they change no output); other weights with a gradient that is zero in exact
arithmetic (ProtoNet's last bias: its distances do not move when every embedding does) drift
the same way.

Part (b) is the scaling model on paper. A step of ``W`` machines costs about ``t1 / W``
(the tasks shared out) plus the exchange: a ring all-reduce sends and receives
``2 (W - 1) / W * P * 4`` bytes per machine (``P`` float32 parameters), at bandwidth ``B``,
plus ``2 (W - 1)`` hops of latency ``a`` for each of the 4 exchanges of a step. The
speed-up is ``t1 / (t1 / W + exchange)``; more machines pay while the exchange stays well
below the compute they save, ``t1 (1 - 1 / W)``. It is printed for conv4 and resnet12 (the
default widths and the literature's 64-160-320-640), for step times of 10 ms to 1 s and
1, 10 and 100 Gbit/s.

Part (c) applies the model to the step time measured here (one process, one thread).

What part (a) does not predict: on this 2-core machine the processes share one memory bus
and the exchange goes over loopback (no network), and the two cores are shared with other
work, so the timings are taken on a shared machine and noisy. It shows that the sharding
and the exchange work and what they cost here; the speed-up on several machines follows
part (b), with the measured compute time of a step on the machine used.

    python benchmarks/distributed.py [--steps 20] [--meta-batch 4] [--image-size 28]
        [--workloads protonet-conv4,maml-conv4,protonet-resnet12] [--threads]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from text_table import print_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _worker(spec_path: str) -> None:
    """One training process (started alone or by torchrun): trains, writes its timings."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from metamodal.config import TrainConfig
    from metamodal.train import distributed
    from metamodal.train.trainer import Trainer

    spent = {"exchange": 0.0}

    def timed(function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent["exchange"] += time.perf_counter() - started
        return wrapper

    distributed.Job._reduce_gradients = timed(distributed.Job._reduce_gradients)
    distributed.RunningStats.compose = timed(distributed.RunningStats.compose)
    marks: dict[int, tuple[float, float]] = {}

    def mark(step: int, values: dict) -> None:
        marks[step] = (time.perf_counter(), spent["exchange"])

    Trainer(TrainConfig(**spec["config"]), spec["out"], progress=False,
            callbacks=[mark]).fit()
    if os.environ.get("RANK", "0") == "0":
        first, last = spec["warmup"], spec["config"]["steps"] - 1  # the last step validates
        (t0, e0), (t1, e1) = marks[first], marks[last]
        Path(spec["result"]).write_text(json.dumps({
            "steps_per_s": (last - first) / (t1 - t0),
            "exchange_ms": 1000 * (e1 - e0) / (last - first)}))


def _run(spec: dict[str, Any], processes: int, folder: Path) -> dict[str, Any]:
    path = folder / f"{Path(spec['out']).name}.json"
    path.write_text(json.dumps(spec))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                 "--nproc-per-node", str(processes), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", "127.0.0.1:0"] if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE)]),
           "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run([*launcher, str(HERE / "distributed.py"), "--worker", str(path)],
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        sys.exit(f"training failed ({processes} process(es)):\n{done.stderr[-3000:]}")
    return json.loads(Path(spec["result"]).read_text())


def _cancelled_biases(model: torch.nn.Module) -> set[str]:
    """Names of the biases of layers that a BatchNorm directly follows (in a Sequential)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential):
            children = list(module.named_children())
            for (name, layer), (_, after) in zip(children, children[1:], strict=False):
                if isinstance(after, torch.nn.modules.batchnorm._BatchNorm) and getattr(
                        layer, "bias", None) is not None:
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def _differences(one: Path, two: Path) -> tuple[float, float]:
    """Largest |difference| of the final weights: all but the cancelled biases, and those."""
    from metamodal.runs.directory import load_run

    cancelled = _cancelled_biases(load_run(one).model)
    a = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
    rest = biases = 0.0
    for key, x in a.items():
        if not x.is_floating_point() or "running_" in key or not x.numel():
            continue
        gap = (x.double() - b[key].double()).abs().max().item()
        if key in cancelled:
            biases = max(biases, gap)
        else:
            rest = max(rest, gap)
    return rest, biases


def _parameters(encoder: str, size: int, dim: int, **options: Any) -> int:
    from metamodal.encoders import encoders

    model = encoders.create(encoder, dim=dim, **options,
                            input_info={"channels": 3, "height": size, "width": size})
    return sum(p.numel() for p in model.parameters())


def _speedup(t1: float, machines: int, params: int, bandwidth: float,
             latency: float = 50e-6, exchanges: int = 4) -> float:
    """Predicted speed-up of ``machines`` over one: ``t1`` seconds of compute a step,
    ``params`` float32 parameters, ``bandwidth`` bytes/s, ``latency`` s a hop."""
    hops = 2 * (machines - 1)
    exchange = hops / machines * params * 4 / bandwidth + exchanges * hops * latency
    return t1 / (t1 / machines + exchange)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--workloads", default="protonet-conv4,maml-conv4,protonet-resnet12")
    parser.add_argument("--threads", action="store_true",
                        help="also one process of two threads")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    from metamodal.datasets.synthetic import make_synthetic

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; timings taken on a shared machine (other jobs were "
          "running): indicative only")
    folder = Path(tempfile.mkdtemp(prefix="metamodal-distributed-"))
    data = make_synthetic(folder / "data", classes=40, per_class=8,
                          image_size=args.image_size)
    rows, measured = [], {}
    for workload in args.workloads.split(","):
        learner, encoder = workload.split("-")
        config = dict(data=str(data), modalities=["image"], encoders={"image": encoder},
                      learner=learner, fusion="mean", steps=args.steps,
                      meta_batch=args.meta_batch, ways=5, shots=1, queries=5, dim=64,
                      val_every=0, val_episodes=8, checkpoint_every=10**6, seed=0,
                      device="cpu", cache=False, lr=1e-3)
        results = {}
        ways = [("1 process, 1 thread", 1, 1), ("2 processes, 1 thread each", 2, 1)]
        if args.threads:
            ways.insert(1, ("1 process, 2 threads", 1, 2))
        for label, processes, threads in ways:
            out = folder / f"{workload}-{processes}-{threads}"
            spec = {"config": config, "out": str(out), "threads": threads,
                    "warmup": args.warmup, "result": str(out) + ".result.json"}
            results[label] = (out, _run(spec, processes, folder))
            print(f"  {workload}: {label}: {results[label][1]['steps_per_s']:.2f} steps/s",
                  flush=True)
        base = results["1 process, 1 thread"][1]["steps_per_s"]
        rest, biases = _differences(results["1 process, 1 thread"][0],
                                    results["2 processes, 1 thread each"][0])
        measured[workload] = (1 / base, encoder)
        for label, (_, result) in results.items():
            rows.append([workload, label, f"{result['steps_per_s']:.2f}",
                         f"{result['steps_per_s'] / base:.2f}x",
                         f"{result['exchange_ms']:.1f}" if "2 proc" in label else "",
                         f"{rest:.1e} / {biases:.1e}" if "2 proc" in label else ""])
    print_table(
        f"(a) meta-training steps per second, {args.meta_batch} tasks a step (5-way 1-shot "
        f"5-query, {args.image_size}x{args.image_size} images, dim 64), taken on a shared "
        "machine",
        ["workload", "processes", "steps/s", "vs 1 process", "exchange ms/step",
         "max |weight diff| 1 vs 2 proc (rest / BN-cancelled biases)"],
        rows, text_columns=2)

    sizes = {"conv4": _parameters("conv4", args.image_size, 64),
             "resnet12": _parameters("resnet12", args.image_size, 64),
             "resnet12 64-160-320-640": _parameters("resnet12", 84, 640,
                                                    widths=[64, 160, 320, 640])}
    rows = []
    for name, params in sizes.items():
        for step_ms in (10, 100, 1000):
            for gbits in (1, 10, 100):
                cells = [f"{_speedup(step_ms / 1000, w, params, gbits * 1e9 / 8):.2f}"
                         for w in (2, 4, 8, 16)]
                rows.append([name, f"{params / 1e6:.2f}M ({params * 4 / 2**20:.1f} MiB)",
                             f"{step_ms}", f"{gbits}", *cells])
    print_table(
        "(b) scaling model: predicted speed-up over one machine (ring all-reduce, 50 us a hop,"
        " 4 exchanges a step; the meta-batch must hold at least one task per machine)",
        ["encoder", "parameters", "step ms on 1 machine", "Gbit/s", "2", "4", "8", "16"],
        rows, text_columns=2)
    rows = []
    for workload, (seconds, encoder) in measured.items():
        rows.append([workload, f"{1000 * seconds:.0f}",
                     *[f"{_speedup(seconds, w, sizes[encoder], g * 1e9 / 8):.2f}"
                       for g in (1, 10) for w in (2, 8)]])
    print_table("(c) the model at this machine's measured step time (1 process, 1 thread)",
                ["workload", "step ms", "2 at 1 Gbit/s", "8 at 1 Gbit/s", "2 at 10 Gbit/s",
                 "8 at 10 Gbit/s"], rows)


if __name__ == "__main__":
    main()
