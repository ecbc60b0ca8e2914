"""Data-layer benchmark: decode throughput per modality, and episode sampling vs learn2learn.

Prints two tables:

(a) decode throughput of each modality loader (samples per second, one process) on the
    embedded synthetic dataset (`metamodal.datasets.synthetic.make_synthetic`);
(b) milliseconds to sample one few-shot task from the same in-memory tensors with
    `metamodal.data.episodes.EpisodeSampler` and with learn2learn's ``TaskDataset`` (transforms
    ``NWays``, ``KShots``, ``LoadData``, ``RemapLabels`` over a ``MetaDataset``), and the
    speed-up. The data is Omniglot-like (images ``[1, 28, 28]``, 20 per class): 4,840 tensors
    of 242 classes; tasks are 5-way with 16 samples per class (1 shot + 15 queries) and 20-way
    with 20 per class (5 shots + 15 queries). Before
    timing, both sides' tasks are checked to be the same kind of thing: the same task shape,
    ``ways`` distinct classes with the right count each, labels remapped to ``0..ways-1`` and
    each label standing for one original class.

learn2learn needs its own environment (it depends on torchvision and gym, which the project
does without)::

    bash benchmarks/setup_learn2learn.sh .l2l-env
    .l2l-env/bin/python benchmarks/data.py

Without learn2learn the script prints metamodal's side only and says how to set it up. Its
import pulls in gym, torchvision and scipy, which the sampling code never uses; when they are
not installed they are replaced by inert stand-in modules before learn2learn is imported.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import random
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from text_table import print_table
from torch.utils.data import Dataset, TensorDataset

from metamodal.data.batch import ModalityBatch, TensorStore
from metamodal.data.episodes import EpisodeSampler

SETUP_HINT = (
    "learn2learn is not importable here; to compare against it run\n"
    "  bash benchmarks/setup_learn2learn.sh .l2l-env\n"
    "  .l2l-env/bin/python benchmarks/data.py"
)
STUBBED_ROOTS = ("gym", "torchvision", "scipy")


# --- table printing -------------------------------------------------------------------------


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls (after one warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def drain(make_task: Callable[[int], Any], n: int) -> None:
    """Make tasks ``0..n-1`` one after the other, each dropped before the next (as in training)."""
    for i in range(n):
        make_task(i)


# --- (a) decode throughput ------------------------------------------------------------------


def decode_throughput(classes: int, per_class: int, repeats: int) -> list[list[str]]:
    """Rows ``[modality, kind, samples, present, samples/s]`` for every loader."""
    from metamodal.data.dataset import load_dataset
    from metamodal.data.loading import create_loader
    from metamodal.datasets.synthetic import make_synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "synthetic", classes=classes, per_class=per_class, seed=0)
        dataset = load_dataset(root)
        for name, spec in dataset.schema.modalities.items():
            cells = dataset.cells(name)
            context = dataset.context(name)
            loader = create_loader(spec)
            loader.fit(cells, context)
            seconds = best_seconds(lambda c=cells, x=context, ld=loader: ld.decode(c, x), repeats)
            present = sum(cell is not None for cell in cells)
            rows.append(
                [name, spec.kind, str(len(cells)), str(present), f"{len(cells) / seconds:,.0f}"]
            )
    return rows


# --- (b) episode sampling -------------------------------------------------------------------


class InMemory(Dataset):
    """``(tensor [1, 28, 28], int label)`` pairs over one shared tensor, for learn2learn."""

    def __init__(self, data: torch.Tensor, labels: list[int]) -> None:
        self.data = data
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i], self.labels[i]


def make_data(classes: int, per_class: int) -> tuple[torch.Tensor, list[int]]:
    """Tensors ``[classes * per_class, 1, 28, 28]``; pixel (0, 0) holds the sample's index so
    that a task's rows can be traced back to samples and classes."""
    generator = torch.Generator().manual_seed(0)
    n = classes * per_class
    data = torch.rand(n, 1, 28, 28, generator=generator)
    data[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    labels = [i // per_class for i in range(n)]
    return data, labels


def check_task(x: torch.Tensor, y: torch.Tensor, labels: list[int], ways: int, k: int) -> None:
    """Assert that ``(x, y)`` is a ``ways``-way task of ``k`` samples per class."""
    assert x.shape == (ways * k, 1, 28, 28), x.shape
    rows = x[:, 0, 0, 0].long().tolist()
    assert len(set(rows)) == ways * k, "samples repeat within a task"
    y_list = y.tolist()
    assert sorted(set(y_list)) == list(range(ways)), "labels are not 0..ways-1"
    assert all(y_list.count(c) == k for c in range(ways)), "wrong count per class"
    original = {}
    for row, label in zip(rows, y_list, strict=True):
        assert original.setdefault(label, labels[row]) == labels[row], "label mixes classes"
    assert len(set(original.values())) == ways, "two labels stand for one class"


def metamodal_task(sampler: EpisodeSampler, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode ``i`` as one ``(x, y)`` pair, support then query, for checking."""
    episode = sampler[i]
    x = torch.cat([episode.support["image"].values, episode.query["image"].values])
    y = torch.cat([episode.support_labels, episode.query_labels])
    return x, y


def install_stubs() -> list[str]:
    """Replace missing gym / torchvision / scipy by inert stand-ins; returns the stubbed."""

    class AnyMeta(type):
        def __getattr__(cls, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return AnyMeta(name, (AnyThing,), {})

    class AnyThing(metaclass=AnyMeta):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return AnyThing()

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return AnyThing()

    class StubModule(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return AnyMeta(name, (AnyThing,), {})

    missing = [root for root in STUBBED_ROOTS if importlib.util.find_spec(root) is None]

    class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname.split(".")[0] in missing:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
            module = StubModule(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module: types.ModuleType) -> None:
            pass

    if missing:
        sys.meta_path.insert(0, StubFinder())
    return missing


def import_learn2learn() -> Any | None:
    """learn2learn, or None when it is not installed or fails to import."""
    if importlib.util.find_spec("learn2learn") is None:
        return None
    stubbed = install_stubs()
    try:
        import learn2learn
    except Exception as err:  # any import failure: report and go on with one side
        print(f"learn2learn failed to import ({type(err).__name__}: {err})")
        return None
    print(
        f"learn2learn {learn2learn.__version__}"
        + (f", imported with stand-ins for {', '.join(stubbed)}" if stubbed else "")
    )
    return learn2learn


def learn2learn_taskset(l2l: Any, dataset: Any, ways: int, k: int) -> Any:
    """learn2learn's ``TaskDataset`` of fresh ``ways``-way ``k``-shot tasks."""
    transforms = [
        l2l.data.transforms.NWays(dataset, n=ways),
        l2l.data.transforms.KShots(dataset, k=k),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
    ]
    return l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)


def sampling_benchmark(tasks: int, repeats: int, check: int) -> tuple[list[list[str]], bool]:
    """Rows of table (b) and whether learn2learn took part."""
    data, labels = make_data(242, 20)
    store = TensorStore(
        ids=[f"s{i}" for i in range(len(labels))],
        labels=[f"class{c:03d}" for c in labels],
        modalities={"image": ModalityBatch(data, torch.ones(len(labels), dtype=torch.bool))},
        kinds={"image": "image"},
    )
    classes = sorted(set(store.labels))
    l2l = import_learn2learn()
    peers: dict[str, Any] = {}
    if l2l is not None:
        # The usual way (TensorDataset: tensor labels), and learn2learn's fastest input
        # (int labels, which its RemapLabels looks up in a list much faster).
        peers["learn2learn TaskDataset, TensorDataset"] = l2l.data.MetaDataset(
            TensorDataset(data, torch.tensor(labels))
        )
        peers["learn2learn TaskDataset, (tensor, int) items"] = l2l.data.MetaDataset(
            InMemory(data, labels)
        )

    rows = []
    for ways, shots, queries in ((5, 1, 15), (20, 5, 15)):
        k = shots + queries
        task = f"{ways}-way, {k}/class ({shots}+{queries})"
        sampler = EpisodeSampler(store, classes, ways, shots, queries, seed=0)
        for i in range(check):
            check_task(*metamodal_task(sampler, i), labels, ways, k)
        ours = best_seconds(lambda s=sampler: drain(s.__getitem__, tasks), repeats) / tasks
        only_indices = best_seconds(lambda s=sampler: drain(s.indices, tasks), repeats) / tasks
        for name, meta in peers.items():
            random.seed(0)
            taskset = learn2learn_taskset(l2l, meta, ways, k)
            for _ in range(check):
                check_task(*taskset.sample(), labels, ways, k)
            n = max(10, tasks // 10)
            theirs = best_seconds(lambda t=taskset, n=n: drain(lambda _: t.sample(), n), repeats)
            theirs /= n
            rows.append([task, name, f"{theirs * 1e3:.3f}", f"{theirs / ours:.1f}x"])
        rows.append([task, "metamodal EpisodeSampler -> Episode", f"{ours * 1e3:.3f}", "1.0x"])
        rows.append(
            [task, "metamodal EpisodeSampler.indices only", f"{only_indices * 1e3:.3f}", ""]
        )
    return rows, bool(peers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="metamodal tasks per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measure (median)")
    parser.add_argument("--check", type=int, default=50, help="tasks checked on each side")
    parser.add_argument("--classes", type=int, default=30, help="synthetic classes to decode")
    parser.add_argument("--per-class", type=int, default=10, help="synthetic samples per class")
    parser.add_argument("--skip-decode", action="store_true", help="only table (b)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, Python {sys.version.split()[0]}")

    if not args.skip_decode:
        rows = decode_throughput(args.classes, args.per_class, args.repeats)
        print_table(
            f"(a) decode throughput, synthetic dataset of {args.classes} x {args.per_class}",
            ["modality", "kind", "samples", "present", "samples/s"],
            rows,
            text_columns=2,
        )

    rows, compared = sampling_benchmark(args.tasks, args.repeats, args.check)
    print_table(
        "(b) one task from 4,840 in-memory tensors [1, 28, 28] of 242 classes",
        ["task", "implementation", "ms per task", "metamodal is faster by"],
        rows,
        text_columns=2,
    )
    sides = "each implementation" if compared else "metamodal"
    print(
        f"checked: {args.check} tasks of {sides} have the task shape [ways * k, 1, 28, 28], "
        "`ways` distinct classes with k samples each, no sample twice, and labels 0..ways-1 "
        "each standing for one class"
    )
    if not compared:
        print(SETUP_HINT)


if __name__ == "__main__":
    main()
