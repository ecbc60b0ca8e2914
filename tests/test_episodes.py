"""Episode sampler (property-based), class-size checks and episode files."""

from __future__ import annotations

import json
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import metamodal.data.episode_files as episode_files_module
import metamodal.data.episodes as episodes_module
from metamodal.data.batch import Episode, ModalityBatch, TensorStore
from metamodal.data.episode_files import read_episode_file, write_episode_file
from metamodal.data.episodes import (
    UNBOUNDED_EPISODES,
    EpisodeSampler,
    check_class_sizes,
    episodes_from_sampler,
)
from metamodal.errors import ConfigError, DatasetError, InsufficientSamplesError, OutputError


def make_store(sizes: list[int], shuffle_seed: int = 0) -> TensorStore:
    """Classes ``c0, c1, ...`` with ``sizes[k]`` samples each, rows interleaved.

    Modality ``row`` holds each sample's row number, so values can be traced back; ``img`` is a
    tiny image and ``txt`` a padded token sequence with lengths; every third sample lacks it.
    """
    labels = [f"c{k}" for k, n in enumerate(sizes) for _ in range(n)]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(shuffle_seed))
    labels = [labels[i] for i in order.tolist()]
    n = len(labels)
    rows = torch.arange(n, dtype=torch.float32)
    present = torch.arange(n) % 3 != 0
    txt_len = (torch.arange(n) % 4 + 1) * present
    tokens = torch.arange(1, 5).repeat(n, 1) * (torch.arange(4) < txt_len[:, None])
    return TensorStore(
        ids=[f"s{i:03d}" for i in range(n)],
        labels=labels,
        modalities={
            "row": ModalityBatch(rows[:, None], torch.ones(n, dtype=torch.bool)),
            "img": ModalityBatch(rows.view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), present),
            "txt": ModalityBatch(tokens, present, txt_len),
        },
        kinds={"row": "tabular", "img": "image", "txt": "text"},
    )


def rows_of(batch_values: torch.Tensor) -> list[int]:
    return batch_values[:, 0].long().tolist()


def check_episode(ep: Episode, store: TensorStore, ways: int, shots: int, queries: int) -> None:
    """Every structural property an episode must have."""
    assert ep.ways == ways and len(set(ep.classes)) == ways
    assert ep.support_labels.dtype == torch.long and ep.query_labels.dtype == torch.long
    assert ep.support_labels.tolist() == [k for k in range(ways) for _ in range(shots)]
    assert ep.query_labels.tolist() == [k for k in range(ways) for _ in range(queries)]
    support_rows = rows_of(ep.support["row"].values)
    query_rows = rows_of(ep.query["row"].values)
    assert len(support_rows) == ways * shots and len(query_rows) == ways * queries
    assert len(set(support_rows) | set(query_rows)) == ways * (shots + queries)
    assert ep.support_ids == [store.ids[r] for r in support_rows]
    assert ep.query_ids == [store.ids[r] for r in query_rows]
    for rows, labels in ((support_rows, ep.support_labels), (query_rows, ep.query_labels)):
        assert [store.labels[r] for r in rows] == [ep.classes[k] for k in labels.tolist()]
    index = torch.tensor(support_rows)
    for name, mb in ep.support.items():
        expected = store.modalities[name].index(index)
        assert torch.equal(mb.values, expected.values) and torch.equal(mb.present, expected.present)
        if expected.lengths is not None:
            assert torch.equal(mb.lengths, expected.lengths)


episode_config = st.integers(2, 6).flatmap(
    lambda n_classes: st.tuples(
        st.lists(st.integers(1, 12), min_size=n_classes, max_size=n_classes),
        st.integers(1, n_classes),
        st.integers(1, 3),
        st.integers(0, 4),
        st.integers(0, 2**40),
    )
)


@settings(max_examples=80, deadline=None)
@given(config=episode_config, i=st.integers(0, 10**6))
def test_sampled_episodes_have_the_asked_structure(
    config: tuple[list[int], int, int, int, int], i: int
) -> None:
    sizes, ways, shots, queries, seed = config
    sizes = [max(s, shots + queries) for s in sizes]
    store = make_store(sizes)
    classes = sorted(set(store.labels))
    sampler = EpisodeSampler(store, classes, ways, shots, queries, seed=seed)
    ep = sampler[i]
    check_episode(ep, store, ways, shots, queries)
    assert set(ep.classes) <= set(classes) and ep.name == str(i)
    support, query, episode_classes = sampler.indices(i)
    assert support.tolist() == rows_of(ep.support["row"].values)
    assert query.tolist() == rows_of(ep.query["row"].values)
    assert episode_classes == ep.classes


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**40), i=st.integers(0, 500), earlier=st.lists(st.integers(0, 500)))
def test_episode_is_a_pure_function_of_seed_and_index(
    seed: int, i: int, earlier: list[int]
) -> None:
    store = make_store([6, 7, 8, 9, 10])
    fresh = EpisodeSampler(store, ["c0", "c1", "c2", "c3", "c4"], 3, 2, 3, seed=seed)[i]
    used = EpisodeSampler(store, ["c0", "c1", "c2", "c3", "c4"], 3, 2, 3, seed=seed)
    for j in earlier:
        used[j]
    again = used[i]
    assert again.support_ids == fresh.support_ids and again.query_ids == fresh.query_ids
    assert again.classes == fresh.classes


def test_different_seeds_and_indices_give_different_episodes() -> None:
    store = make_store([10] * 8)
    classes = sorted(set(store.labels))
    a = EpisodeSampler(store, classes, 5, 1, 3, seed=0)
    b = EpisodeSampler(store, classes, 5, 1, 3, seed=1)
    same_seed = sum(a[i].support_ids == a[i + 1].support_ids for i in range(50))
    cross_seed = sum(a[i].support_ids == b[i].support_ids for i in range(50))
    assert same_seed <= 1 and cross_seed <= 1


def test_every_sample_and_class_gets_drawn() -> None:
    store = make_store([4, 5, 6, 7])
    sampler = EpisodeSampler(store, ["c0", "c1", "c2", "c3"], 2, 1, 1, seed=3)
    support_seen: set[str] = set()
    query_seen: set[str] = set()
    first_class: set[str] = set()
    for i in range(400):
        ep = sampler[i]
        support_seen.update(ep.support_ids)
        query_seen.update(ep.query_ids)
        first_class.add(ep.classes[0])
    assert support_seen == set(store.ids) and query_seen == set(store.ids)
    assert first_class == {"c0", "c1", "c2", "c3"}


def test_classes_and_samples_are_drawn_uniformly() -> None:
    store = make_store([6, 6, 6, 6, 6])
    sampler = EpisodeSampler(store, sorted(set(store.labels)), 2, 1, 2, seed=21)
    class_counts = Counter()
    first_label_counts = Counter()
    support_counts = Counter()
    n = 2000
    for i in range(n):
        support, _, classes = sampler.indices(i)
        class_counts.update(classes)
        first_label_counts[classes[0]] += 1
        support_counts.update(support.tolist())
    # Expected 800 episodes per class (sd ~22), 400 as label 0 (sd ~18), 133 supports per
    # sample (sd ~11); the bounds are five or more standard deviations wide.
    assert all(abs(c - 800) < 120 for c in class_counts.values()), class_counts
    assert all(abs(c - 400) < 100 for c in first_label_counts.values()), first_label_counts
    assert len(support_counts) == 30
    assert all(abs(c - 2000 * 2 / 30) < 60 for c in support_counts.values()), support_counts


def test_sampler_pickles_and_is_thread_safe() -> None:
    store = make_store([8, 8, 8, 8])
    sampler = EpisodeSampler(store, sorted(set(store.labels)), 3, 2, 2, seed=9)
    expected = [sampler.indices(i)[0].tolist() for i in range(200)]
    copy = pickle.loads(pickle.dumps(sampler))
    assert [copy.indices(i)[0].tolist() for i in range(200)] == expected
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: sampler.indices(i)[0].tolist(), range(200)))
    assert got == expected


@pytest.mark.parametrize("sizes", [[150, 90, 120], [70] * 3, [3] * 80 + [5] * 10])
def test_partial_sort_gives_the_same_draw_as_a_full_sort(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> None:
    store = make_store(sizes)
    classes = sorted(set(store.labels))
    sampler = EpisodeSampler(store, classes, 3, 1, 2, seed=7)
    monkeypatch.setattr(episodes_module, "_ARGSORT_LIMIT", 8)
    partial = [sampler.indices(i) for i in range(20)]
    monkeypatch.setattr(episodes_module, "_ARGSORT_LIMIT", 10**9)
    full = [sampler.indices(i) for i in range(20)]
    for (s1, q1, c1), (s2, q2, c2) in zip(partial, full, strict=True):
        assert torch.equal(s1, s2) and torch.equal(q1, q2) and c1 == c2
    check_episode(sampler[0], store, 3, 1, 2)


def test_classes_restrict_the_draw_and_modalities_the_batches() -> None:
    store = make_store([5, 5, 5, 5])
    sampler = EpisodeSampler(store, ["c1", "c3"], 2, 2, 1, modalities=["img"], episodes=20)
    for ep in sampler:
        assert set(ep.classes) == {"c1", "c3"} and set(ep.support) == {"img"}
    assert len(list(sampler)) == 20


def test_length_and_index_range() -> None:
    store = make_store([3, 3])
    sampler = EpisodeSampler(store, ["c0", "c1"], 2, 1, 1, episodes=4)
    assert len(sampler) == 4
    assert sampler[-1].support_ids == sampler[3].support_ids
    with pytest.raises(IndexError):
        sampler[4]
    endless = EpisodeSampler(store, ["c0", "c1"], 2, 1, 1)
    assert len(endless) == UNBOUNDED_EPISODES
    assert endless[10**12].ways == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_works_with_a_data_loader(workers: int) -> None:
    store = make_store([5, 6, 7])
    sampler = EpisodeSampler(store, ["c0", "c1", "c2"], 2, 1, 2, seed=11, episodes=6)
    loader = DataLoader(sampler, batch_size=None, num_workers=workers)
    got = list(loader)
    assert [ep.support_ids for ep in got] == [sampler[i].support_ids for i in range(6)]
    assert all(isinstance(ep, Episode) for ep in got)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ways": 0}, "ways"),
        ({"shots": 0}, "shots"),
        ({"queries": -1}, "queries"),
        ({"seed": -2}, "seed"),
        ({"episodes": -1}, "episodes"),
        ({"modalities": ["audio"]}, "modalities"),
    ],
)
def test_invalid_sampler_arguments(kwargs: dict[str, object], match: str) -> None:
    store = make_store([4, 4])
    args: dict[str, object] = {"ways": 2, "shots": 1, "queries": 1}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        EpisodeSampler(store, ["c0", "c1"], **args)  # type: ignore[arg-type]


# --- class sizes ----------------------------------------------------------------------------


def test_check_class_sizes_skips_small_classes_with_a_warning() -> None:
    store = make_store([6, 2, 6, 1])
    with pytest.warns(UserWarning, match=r"c3 \(1\).*c1 \(2\)"):
        usable = check_class_sizes(store, ["c0", "c1", "c2", "c3"], 2, 1, 4)
    assert usable == ["c0", "c2"]
    with pytest.warns(UserWarning):
        sampler = EpisodeSampler(store, ["c0", "c1", "c2", "c3"], 2, 1, 4)
    assert sampler.classes == ["c0", "c2"]
    assert check_class_sizes(store.class_indices(), ["c0", "c2"], 2, 1, 4) == ["c0", "c2"]


def test_check_class_sizes_error_names_classes_sizes_and_need() -> None:
    sizes = {f"k{i}": 3 for i in range(8)} | {"big": 20}
    with pytest.raises(InsufficientSamplesError) as info:
        check_class_sizes(sizes, sorted(sizes) + ["absent"], 5, 1, 15)
    text = str(info.value)
    assert "16 samples" in text and "5-way" in text and "only 1 of 10" in text
    assert "'absent' has 0" in text and "'k0' has 3" in text and "and 4 more" in text
    assert text.index("absent") < text.index("k0")
    assert "fewer shots" in (info.value.fix or "")


def test_check_class_sizes_strict_rejects_any_small_class() -> None:
    with pytest.raises(InsufficientSamplesError, match="'b' has 1"):
        check_class_sizes({"a": 5, "b": 1, "c": 5}, ["a", "b", "c"], 2, 1, 1, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_class_sizes({"a": 2, "b": 2}, ["a", "b"], 2, 1, 1, strict=True) == ["a", "b"]


def test_sampler_raises_when_too_few_classes_are_big_enough() -> None:
    store = make_store([10, 3, 3])
    with pytest.raises(InsufficientSamplesError, match="'c1' has 3"):
        EpisodeSampler(store, ["c0", "c1", "c2"], 2, 2, 2)


# --- episode files --------------------------------------------------------------------------


def test_episode_file_round_trip(tmp_path: Path) -> None:
    store = make_store([5, 6, 7, 8])
    sampler = EpisodeSampler(store, sorted(set(store.labels)), 3, 2, 2, seed=5)
    original = episodes_from_sampler(sampler, 7, start=3)
    assert [ep.name for ep in original] == [str(i) for i in range(3, 10)]
    path = write_episode_file(tmp_path / "episodes.jsonl", original)
    back = read_episode_file(path, store)
    assert len(back) == 7
    for a, b in zip(original, back, strict=True):
        assert (a.name, a.classes, a.support_ids, a.query_ids) == (
            b.name,
            b.classes,
            b.support_ids,
            b.query_ids,
        )
        assert torch.equal(a.support_labels, b.support_labels)
        assert torch.equal(a.query_labels, b.query_labels)
        for name in a.support:
            assert torch.equal(a.support[name].values, b.support[name].values)
            assert torch.equal(a.query[name].values, b.query[name].values)
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.jsonl"]


def test_episode_file_round_trips_unicode_ids_and_reads_windows_files(tmp_path: Path) -> None:
    store = make_store([2, 2])
    # U+2028 and U+0085 are line breaks to str.splitlines but plain characters in JSON
    store.ids = [f"é\u2028{k}" if k % 2 else f"ü\x85{k}" for k in range(len(store.ids))]
    sampler = EpisodeSampler(store, ["c0", "c1"], 2, 1, 1, seed=3)
    original = episodes_from_sampler(sampler, 2)
    back = read_episode_file(write_episode_file(tmp_path / "episodes.jsonl", original), store)
    assert [ep.support_ids for ep in back] == [ep.support_ids for ep in original]
    assert [ep.query_ids for ep in back] == [ep.query_ids for ep in original]
    # a byte-order mark and CRLF line ends, as some Windows editors save files
    line = json.dumps({"episode": "w", "support": original[0].support_ids, "query": []})
    windows = tmp_path / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + (line + "\r\n\r\n").encode("utf-8"))
    (episode,) = read_episode_file(windows, store)
    assert episode.name == "w" and episode.support_ids == original[0].support_ids


def test_episode_file_orders_classes_by_first_support_appearance(tmp_path: Path) -> None:
    store = make_store([3, 3, 3])
    by_class: dict[str, list[str]] = {}
    for sid, label in zip(store.ids, store.labels, strict=True):
        by_class.setdefault(label, []).append(sid)
    c0, c1, c2 = by_class["c0"], by_class["c1"], by_class["c2"]
    line = {"episode": "run01", "support": [c2[0], c0[0], c2[1]], "query": [c0[1], c2[2]]}
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(line) + "\n\n" + json.dumps({"support": [c1[0]], "query": []}))
    first, second = read_episode_file(path, store, modalities=["row"])
    assert first.name == "run01" and first.classes == ["c2", "c0"]
    assert first.support_ids == [c2[0], c2[1], c0[0]]
    assert first.support_labels.tolist() == [0, 0, 1]
    assert first.query_ids == [c0[1], c2[2]] and first.query_labels.tolist() == [1, 0]
    assert set(first.support) == {"row"}
    assert rows_of(first.support["row"].values) == [store.ids.index(s) for s in first.support_ids]
    assert second.name == "3" and second.classes == ["c1"] and second.query_ids == []


def test_an_episode_file_holds_a_bounded_number_of_episodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metamodal.data import episode_files

    store = make_store([3, 3])
    c0 = [i for i, label in zip(store.ids, store.labels, strict=True) if label == "c0"]
    c1 = [i for i, label in zip(store.ids, store.labels, strict=True) if label == "c1"]
    line = json.dumps({"support": [c0[0], c1[0]], "query": [c0[1]]})
    path = tmp_path / "episodes.jsonl"
    path.write_text(f"{line}\n\n{line}\n{line}\n")
    monkeypatch.setattr(episode_files, "MAX_EPISODES", 2)
    with pytest.raises(DatasetError, match="more than 2 episodes") as error:
        read_episode_file(path, store)
    assert error.value.row == 4  # the line of the third episode
    path.write_text(f"{line}\n{line}\n")
    assert len(read_episode_file(path, store)) == 2


def _bad_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def small_store() -> TensorStore:
    store = make_store([3, 3])
    store.ids = [f"{label}-{k}" for k, label in enumerate(store.labels)]
    return store


def _ids(store: TensorStore, label: str) -> list[str]:
    return [s for s, lab in zip(store.ids, store.labels, strict=True) if lab == label]


def test_episode_file_bad_json_names_the_line(tmp_path: Path, small_store: TensorStore) -> None:
    a = _ids(small_store, "c0")
    good = json.dumps({"episode": "e1", "support": a[:1], "query": a[1:2]})
    path = _bad_file(tmp_path, [good, '{"episode": "e2", "support": [}'])
    with pytest.raises(DatasetError, match="line 2: not valid JSON") as info:
        read_episode_file(path, small_store)
    assert info.value.file == str(path) and info.value.row == 2


def test_episode_file_unknown_id_names_line_and_id(
    tmp_path: Path, small_store: TensorStore
) -> None:
    a = _ids(small_store, "c0")
    path = _bad_file(
        tmp_path,
        [
            json.dumps({"episode": "e1", "support": a[:1], "query": a[1:2]}),
            json.dumps({"episode": "e2", "support": a[:1], "query": ["nope"]}),
        ],
    )
    with pytest.raises(DatasetError, match="line 2: unknown sample id 'nope'") as info:
        read_episode_file(path, small_store)
    assert info.value.column == "query" and info.value.row == 2


def test_episode_file_query_class_absent_from_support(
    tmp_path: Path, small_store: TensorStore
) -> None:
    a, b = _ids(small_store, "c0"), _ids(small_store, "c1")
    path = _bad_file(tmp_path, [json.dumps({"episode": "e", "support": a[:1], "query": b[:1]})])
    with pytest.raises(DatasetError, match=f"{b[0]!r} is of class 'c1'") as info:
        read_episode_file(path, small_store)
    assert info.value.column == "query" and info.value.row == 1


def test_episode_file_empty_support(tmp_path: Path, small_store: TensorStore) -> None:
    a = _ids(small_store, "c0")
    path = _bad_file(tmp_path, [json.dumps({"episode": "e", "support": [], "query": a[:1]})])
    with pytest.raises(DatasetError, match="empty support") as info:
        read_episode_file(path, small_store)
    assert info.value.column == "support"


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"episode": "e", "support": ["X"], "query": ["X"]}, "appears twice"),
        ({"episode": "e", "support": "X"}, "support must be a list"),
        ({"episode": "e", "support": ["X"]}, "query must be a list"),
        ({"episode": ["e"], "support": ["X"], "query": []}, "not a string"),
        (["X"], "expected a JSON object"),
    ],
)
def test_episode_file_malformed_lines(
    tmp_path: Path, small_store: TensorStore, record: object, match: str
) -> None:
    sid = _ids(small_store, "c0")[0]
    text = json.dumps(record).replace('"X"', json.dumps(sid))
    path = _bad_file(tmp_path, [text])
    with pytest.raises(DatasetError, match=match) as info:
        read_episode_file(path, small_store)
    assert info.value.row == 1


def test_episode_file_without_episodes(tmp_path: Path, small_store: TensorStore) -> None:
    path = _bad_file(tmp_path, ["", "   "])
    with pytest.raises(DatasetError, match="no episodes"):
        read_episode_file(path, small_store)
    with pytest.raises(DatasetError, match="cannot read"):
        read_episode_file(tmp_path / "missing.jsonl", small_store)


def test_write_episode_file_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store([3, 3])
    sampler = EpisodeSampler(store, ["c0", "c1"], 2, 1, 1)
    path = tmp_path / "episodes.jsonl"
    write_episode_file(path, episodes_from_sampler(sampler, 2))
    before = path.read_text()
    assert [json.loads(line)["episode"] for line in before.splitlines()] == ["0", "1"]

    def failing() -> Iterator[Episode]:
        yield sampler[5]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_episode_file(path, failing())
    assert path.read_text() == before

    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(episode_files_module.os, "replace", no_rename)
        with pytest.raises(OutputError, match="disk full"):  # typed, naming the file
            write_episode_file(path, [sampler[7]])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.jsonl"]
    unnamed = sampler[0]
    unnamed.name = ""
    write_episode_file(path, [sampler[1], unnamed])
    assert [json.loads(line)["episode"] for line in path.read_text().splitlines()] == ["1", "1"]


def test_too_few_classes_for_the_ways_says_so() -> None:
    from metamodal.data.episodes import check_class_sizes

    with pytest.raises(InsufficientSamplesError, match="needs 5 classes, but .* only 4"):
        check_class_sizes({c: 20 for c in "abcd"}, list("abcd"), 5, 1, 15)


def test_no_class_large_enough_suggests_fewer_shots_or_queries_not_zero_ways() -> None:
    """With every class too small the fix said "at most 0 ways at this size", and
    --within's default 15 queries led users to try --ways 0."""
    from metamodal.data.episodes import check_class_sizes
    from metamodal.errors import InsufficientSamplesError

    with pytest.raises(InsufficientSamplesError) as caught:
        check_class_sizes({"a": 5, "b": 6}, ["a", "b"], 2, 1, 15)
    assert "0 ways" not in caught.value.fix and "shots + queries <= 6" in caught.value.fix
