"""Fixed episode files (``episodes.jsonl``): read them strictly against a store, write them,
and draw the runs of a published protocol (`protocol_episodes`), e.g. the 20-way one-shot runs
of Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through probabilistic
program induction"."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metamodal.config import MAX_EPISODES
from metamodal.data.batch import Episode, TensorStore
from metamodal.data.episodes import EpisodeSampler, check_counts, few
from metamodal.data.paths import PathRefused, check_regular_file
from metamodal.errors import ConfigError, DatasetError, InsufficientSamplesError
from metamodal.io import atomic_write


def _line_error(path: Path, line: int, column: str | None, message: str, fix: str) -> DatasetError:
    return DatasetError(f"line {line}: {message}", file=path, row=line, column=column, fix=fix)


def _parse_line(path: Path, line_no: int, text: str) -> tuple[str, list[str], list[str]]:
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        detail = (f"{err.msg} at character {err.pos + 1}" if isinstance(err, json.JSONDecodeError)
                  else "nested too deeply" if isinstance(err, RecursionError) else str(err))
        raise _line_error(
            path,
            line_no,
            None,
            f"not valid JSON ({detail})",
            'write one JSON object a line: {"episode": "e1", "support": [ids], "query": [ids]}',
        ) from None
    if not isinstance(record, dict):
        raise _line_error(
            path,
            line_no,
            None,
            f"expected a JSON object, got {type(record).__name__}",
            'write one JSON object a line: {"episode": "e1", "support": [ids], "query": [ids]}',
        )
    name = record.get("episode", str(line_no))
    if not isinstance(name, str | int) or isinstance(name, bool):
        raise _line_error(
            path,
            line_no,
            "episode",
            f"episode name {name!r} is not a string",
            'name the episode with a string, e.g. "episode": "run01"',
        )
    sets = []
    for column in ("support", "query"):
        ids = record.get(column)
        if not isinstance(ids, list) or not all(
            isinstance(x, str | int) and not isinstance(x, bool) for x in ids
        ):
            raise _line_error(
                path,
                line_no,
                column,
                f"{column} must be a list of sample ids, got {ids!r}",
                f'write "{column}": ["id1", "id2", ...] with ids of the dataset',
            )
        sets.append([str(x) for x in ids])
    return str(name), sets[0], sets[1]


def read_episode_file(
    path: str | Path, store: TensorStore, modalities: Sequence[str] | None = None
) -> list[Episode]:
    """Read a fixed evaluation protocol from an ``episodes.jsonl`` file.

    Each non-blank line is ``{"episode": name, "support": [ids], "query": [ids]}``; labels come
    from ``store``. An episode's classes are ordered by first appearance in its support set,
    its support set is grouped by class in that order (stable: file order within a class), its
    query set keeps file order.

    Args:
        path: the episode file.
        store: the samples the ids refer to.
        modalities: modalities to include in the batches (default: all).

    Returns:
        One `Episode` per line, ``name`` taken from ``"episode"`` (default: the line number).

    Raises:
        DatasetError: a line is not a JSON object of that shape, names an unknown id, repeats an
            id, has an empty support set, or has a query whose class is not in the support set,
            or the file holds more than `metamodal.config.MAX_EPISODES` episodes; the error
            names the file, the line and the id.

    Example:
        >>> import tempfile
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([f"s{i}" for i in range(8)], ["a", "b"] * 4,
        ...     {"x": ModalityBatch(torch.zeros(8, 3), torch.ones(8, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> path = Path(tempfile.mkdtemp()) / "episodes.jsonl"
        >>> _ = path.write_text('{"episode": "run01", "support": ["s1", "s0"], "query": ["s2"]}\\n')
        >>> (episode,) = read_episode_file(path, store)
        >>> episode.classes, episode.support_ids, episode.query_labels.tolist()
        (['b', 'a'], ['s1', 's0'], [1])
    """
    path = Path(path)
    try:
        check_regular_file(path, "episode")  # a FIFO would block the read below
    except PathRefused as refused:
        raise DatasetError(refused.message, file=path, fix=refused.fix) from None
    except FileNotFoundError:
        pass  # the read below says so
    try:
        # utf-8-sig: a byte-order mark (some Windows editors write one) is not part of line 1.
        # Split on "\n" only: str.splitlines would also split inside ids holding U+2028,
        # U+0085 and the like, which write_episode_file writes verbatim (ensure_ascii=False).
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(
            f"cannot read episode file: {err}", file=path, fix="give a readable UTF-8 .jsonl file"
        ) from None
    row_of = store.index_of()
    names = list(store.modalities) if modalities is None else list(modalities)
    episodes: list[Episode] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if len(episodes) == MAX_EPISODES:
            raise _line_error(path, line_no, "episode",
                              f"the file holds more than {MAX_EPISODES:,} episodes",
                              f"split it into files of at most {MAX_EPISODES:,} episodes")
        name, support_ids, query_ids = _parse_line(path, line_no, text)
        if not support_ids:
            raise _line_error(
                path,
                line_no,
                "support",
                f"episode {name!r} has an empty support set",
                "give at least one support sample per class",
            )
        seen: dict[str, str] = {}
        for column, ids in (("support", support_ids), ("query", query_ids)):
            for sid in ids:
                if sid not in row_of:
                    raise _line_error(
                        path,
                        line_no,
                        column,
                        f"unknown sample id {sid!r} in {column}",
                        "use ids from the dataset's id column",
                    )
                if sid in seen:
                    raise _line_error(
                        path,
                        line_no,
                        column,
                        f"sample id {sid!r} appears twice (in {seen[sid]} and {column})",
                        "list each sample once per episode",
                    )
                seen[sid] = column
        support_rows = np.array([row_of[s] for s in support_ids], dtype=np.int64)
        query_rows = np.array([row_of[s] for s in query_ids], dtype=np.int64)
        classes = list(dict.fromkeys(store.labels[r] for r in support_rows))
        label_of = {c: k for k, c in enumerate(classes)}
        for sid, r in zip(query_ids, query_rows, strict=True):
            if store.labels[r] not in label_of:
                raise _line_error(
                    path,
                    line_no,
                    "query",
                    f"query sample {sid!r} is of class {store.labels[r]!r}, which has no "
                    "support sample",
                    f"add a support sample of class {store.labels[r]!r} or drop {sid!r}",
                )
        support_labels = np.array([label_of[store.labels[r]] for r in support_rows])
        query_labels = np.array([label_of[store.labels[r]] for r in query_rows], dtype=np.int64)
        grouped = np.argsort(support_labels, kind="stable")
        support_rows = support_rows[grouped]
        episodes.append(
            Episode(
                support=store.batch(torch.from_numpy(support_rows), names),
                query=store.batch(torch.from_numpy(query_rows), names),
                support_labels=torch.from_numpy(support_labels[grouped].astype(np.int64)),
                query_labels=torch.from_numpy(query_labels),
                classes=classes,
                support_ids=[support_ids[k] for k in grouped],
                query_ids=list(query_ids),
                name=name,
                origin=(str(path), line_no),
            )
        )
    if not episodes:
        raise DatasetError(
            "the episode file has no episodes",
            file=path,
            fix='write one {"episode": ..., "support": [...], "query": [...]} object a line',
        )
    return episodes


def write_episode_file(path: str | Path, episodes: Iterable[Episode | EpisodeIds]) -> Path:
    """Write episodes as an ``episodes.jsonl`` protocol file, atomically (temp file, rename).

    Args:
        path: where to write; a missing directory is created.
        episodes: the episodes (`Episode` or `EpisodeIds`: only names and ids are written);
            an episode without a name is named by its position.

    Returns:
        ``path`` as a `Path`.

    Example:
        >>> import tempfile
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([f"s{i}" for i in range(8)], ["a", "b"] * 4,
        ...     {"x": ModalityBatch(torch.zeros(8, 3), torch.ones(8, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> from metamodal.data.episodes import episodes_from_sampler
        >>> sampler = EpisodeSampler(store, ["a", "b"], ways=2, shots=1, queries=1)
        >>> path = write_episode_file(Path(tempfile.mkdtemp()) / "episodes.jsonl",
        ...                           episodes_from_sampler(sampler, 600))
        >>> back = read_episode_file(path, store)
        >>> len(back), back[7].support_ids == sampler[7].support_ids
        (600, True)
    """
    path = Path(path)
    lines = [
        json.dumps(
            {
                "episode": episode.name or str(k),
                "support": list(episode.support_ids),
                "query": list(episode.query_ids),
            },
            ensure_ascii=False,
        )
        for k, episode in enumerate(episodes)
    ]

    def write(temp: Path) -> None:
        with temp.open("w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- protocols


@dataclass
class EpisodeIds:
    """An episode as sample ids only: what an episode file holds, before anything is decoded.

    Args:
        name: the episode's name (``run01``, ...).
        support_ids: ids of the support samples, grouped by class.
        query_ids: ids of the query samples.
        group: the group all its classes come from (within-group protocols), else ``None``;
            not written to the file.
        classes: the classes of the episode, in label order.

    Example:
        >>> EpisodeIds("run01", ["a1", "b1"], ["a2", "b2"]).query_ids
        ['a2', 'b2']
    """

    name: str
    support_ids: list[str]
    query_ids: list[str]
    group: str | None = None
    classes: list[str] = field(default_factory=list)


def _run_names(runs: int) -> list[str]:
    width = max(2, len(str(runs)))
    return [f"run{k + 1:0{width}d}" for k in range(runs)]


def _check_runs(runs: int) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int | np.integer) or runs < 1:
        raise ConfigError(f"invalid number of runs {runs!r}", column="runs",
                          fix="ask for at least one run (episode)")


def protocol_episodes(
    ids: Sequence[str],
    labels: Sequence[str],
    *,
    ways: int,
    shots: int,
    queries: int,
    runs: int,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    within: Sequence[str] | str | None = None,
) -> list[EpisodeIds]:
    """Episodes of a published protocol, as ids: N-way K-shot, optionally within one group.

    Without ``within``, these are the episodes ``0 .. runs - 1`` of an `EpisodeSampler` with
    this ``seed`` over ``classes`` (so, on a store whose samples come in the same order, the
    very episodes `metamodal.evaluate.evaluate` draws with that seed).

    With ``within``, every run draws all its classes from one group, as in the 20-way one-shot
    runs of Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through
    probabilistic program induction" (each run within one alphabet). ``within`` names the
    groups; run ``k`` uses the ``k % len(within)``-th, so 20 runs over 10 alphabets use each
    twice. ``"*"`` means every group that can supply a run (the others are skipped with a
    warning). Run ``k`` picks ``ways`` classes of its group and ``shots + queries`` distinct
    samples of each, uniformly, from NumPy's PCG64 seeded with ``(seed, k)``; support and query
    never share a sample.

    Args:
        ids: sample ids, ``N``.
        labels: class label of each sample, ``N``.
        ways: classes per run.
        shots: support samples per class.
        queries: query samples per class.
        runs: the number of runs (episodes).
        seed: the seed.
        classes: the classes runs may use (e.g. a split's); default: all.
        groups: group of each sample, ``N`` (needed by ``within``).
        within: group names, or ``"*"`` for all groups; ``None`` for episodes across groups.

    Returns:
        ``runs`` `EpisodeIds` named ``run01``, ``run02``, ... (wider numbers past 99).

    Raises:
        InsufficientSamplesError: a named group has fewer than ``ways`` classes of at least
            ``shots + queries`` samples (no group can, with ``"*"``), or the classes cannot
            supply the episodes; the message says what can.
        ConfigError: invalid counts, ``within`` without ``groups``, or an unknown group.

    Example:
        >>> ids = [f"{c}{i}" for c in "abcd" for i in range(3)]
        >>> labels = [i[0] for i in ids]
        >>> groups = ["G" if l in "ab" else "H" for l in labels]
        >>> runs = protocol_episodes(ids, labels, ways=2, shots=1, queries=1, runs=2,
        ...                          groups=groups, within=["G", "H"])
        >>> [(r.name, r.group, sorted(r.classes)) for r in runs]
        [('run01', 'G', ['a', 'b']), ('run02', 'H', ['c', 'd'])]
    """
    check_counts(ways, shots, queries)
    if queries < 1:
        raise ConfigError("a run with no queries measures nothing", column="queries",
                          fix="set queries to an integer >= 1")
    _check_runs(runs)
    if len(ids) != len(labels):
        raise ConfigError(f"{len(ids)} ids but {len(labels)} labels",
                          fix="give one label per sample")
    if groups is not None and len(groups) != len(ids):
        raise ConfigError(f"{len(ids)} ids but {len(groups)} groups",
                          fix="give one group per sample")
    allowed = list(dict.fromkeys(classes)) if classes is not None else sorted(set(labels))
    if within is None:
        store = TensorStore(list(ids), list(labels), {}, {})
        sampler = EpisodeSampler(store, allowed, ways, shots, queries, seed=seed)
        out = []
        for k, name in enumerate(_run_names(runs)):
            support, query, chosen = sampler.indices(k)
            out.append(EpisodeIds(name, [ids[i] for i in support.tolist()],
                                  [ids[i] for i in query.tolist()], classes=chosen))
        return out
    if groups is None:
        raise ConfigError("within-group runs need a group column", column="within",
                          fix="set `group` in dataset.toml, or drop --within")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"invalid seed {seed!r}", column="seed", fix="use an integer >= 0")
    need = shots + queries
    allowed_set = set(allowed)
    rows: dict[str, list[int]] = {}
    group_of: dict[str, str] = {}
    for i, (label, group) in enumerate(zip(labels, groups, strict=True)):
        if label in allowed_set:
            rows.setdefault(label, []).append(i)
            group_of.setdefault(label, label if group is None else group)
    members: dict[str, list[str]] = {}
    for label in sorted(rows):
        members.setdefault(group_of[label], []).append(label)
    usable = {g: [c for c in cs if len(rows[c]) >= need] for g, cs in members.items()}
    able = sorted(g for g, cs in usable.items() if len(cs) >= ways)

    def able_text() -> str:
        if not able:
            most = max((len(cs) for cs in usable.values()), default=0)
            return f"no group can; the largest has {most} usable classes"
        return "groups that can: " + few([f"{g} ({len(usable[g])})" for g in able], 8)

    if isinstance(within, str) and within in ("*", "all"):
        chosen_groups = able
        skipped = sorted(set(members) - set(able))
        if not chosen_groups:
            raise InsufficientSamplesError(
                f"no group has {ways} classes of at least {need} samples (shots {shots} + "
                f"queries {queries}); {able_text()}",
                fix="use fewer ways, shots or queries",
            )
        if skipped:
            warnings.warn(f"skipping {len(skipped)} group(s) with fewer than {ways} usable "
                          f"classes: {few([f'{g} ({len(usable[g])})' for g in skipped])}",
                          stacklevel=2)
    else:
        chosen_groups = [within] if isinstance(within, str) else list(within)
        if not chosen_groups:
            raise ConfigError("no group named", column="within",
                              fix="name groups, or pass '*' for every group")
        for g in chosen_groups:
            if g not in members:
                raise ConfigError(f"unknown group {g!r} (or none of its classes is allowed)",
                                  column="within",
                                  fix="choose among: " + few(sorted(members), 12))
            if len(usable[g]) < ways:
                small = len(members[g]) - len(usable[g])
                detail = f" ({small} more with fewer than {need} samples)" if small else ""
                raise InsufficientSamplesError(
                    f"group {g!r} has {len(usable[g])} classes{detail}, but a {ways}-way run "
                    f"needs {ways}",
                    fix=f"use --ways {len(usable[g])} or fewer for {g!r}, or choose another "
                    f"group; {able_text()}",
                )
    out = []
    for k, name in enumerate(_run_names(runs)):
        group = chosen_groups[k % len(chosen_groups)]
        rng = np.random.default_rng([int(seed), k])
        candidates = usable[group]
        picked = [candidates[j] for j in rng.choice(len(candidates), ways, replace=False)]
        support, query = [], []
        for label in picked:
            members_rows = rows[label]
            chosen = rng.choice(len(members_rows), need, replace=False)
            support += [ids[members_rows[j]] for j in chosen[:shots]]
            query += [ids[members_rows[j]] for j in chosen[shots:]]
        out.append(EpisodeIds(name, support, query, group=group, classes=picked))
    return out
