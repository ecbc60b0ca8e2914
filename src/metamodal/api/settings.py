"""The settings of each verb: one dataclass per verb, one field per setting.

A field's docstring entry (the class's ``Args:``) is its documentation and the help of its
command-line flag: the ``metamodal`` command builds every flag from these fields (and from
`metamodal.config.TrainConfig`'s), so that a setting is declared once (see
`metamodal.api.fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from metamodal.api.fields import flag
from metamodal.config import LIMITS, MAX_EPISODES, MAX_LR, MAX_SEED, MAX_TIMEOUT
from metamodal.data.loaders.sequence import MAX_LENGTH as SEQUENCE_MAX_LENGTH

MAX_COUNT = 1_000_000
"""The most samples, examples, classes or tasks a server's limits allow."""
MAX_TRIALS = 100_000
"""The largest search (``trials``): each trial is a training run."""
MAX_OBJECTIVE_EPISODES = 100_000
"""The most fixed validation episodes of a search: every trial is scored on all of them, so
the bound is a tenth of `metamodal.config.MAX_EPISODES`."""

# ----------------------------------------------------------------------------- settings


@dataclass
class EpisodeShape:
    """The test episodes of an evaluation.

    Args:
        ways: classes per episode; when not given 5, lowered (with a warning) to what the
            split has.
        shots: support samples per class.
        queries: query samples per class; when not given 15, lowered (with a warning) to what
            the classes hold.
        episodes_count: test episodes (600 or more for published numbers).
        seed: seed of the episodes (the same seed gives every model the same episodes).
    """

    ways: int | None = None
    shots: int = 1
    queries: int | None = None
    episodes_count: int = flag(600, least=1, most=MAX_EPISODES)
    seed: int = flag(0, least=0, most=MAX_SEED)


@dataclass
class TestTimeOptions:
    """Test-time settings that replace a run's own for one command (None keeps the run's;
    `metamodal.model.test_time`, `metamodal.config.test_time_overrides`).

    Args:
        tta: test-time augmentation: copies of each sample averaged into its embedding
            (default: the run's ``tta``; 0 = off).
        transduction: soft k-means steps refining the prototypes with each episode's queries
            (default: the run's ``transduction``; 0 = off).
        transduction_balance: those steps assign the queries evenly over the classes, for
            episodes whose queries are spread evenly over them (default: the run's
            ``transduction_balance``).
        fusion_confidence: late fusion lowers the weight of a modality whose posterior is
            uncertain, query by query (default: the run's ``fusion_confidence``; 0 = off).
        fusion_reliability: late fusion weighs each modality per class by its agreement with
            the fused model on the episode's queries (default: the run's
            ``fusion_reliability``; 0 = off).
        joint_transduction: for an ensemble, take its members' transduction steps jointly or
            each on its own (default: as the ensemble was made; its temperatures and weights
            stay as fitted); on a run that is not an ensemble, either value is an error.
    """

    tta: int | None = flag(None, metavar="N")
    transduction: int | None = flag(None, metavar="STEPS")
    transduction_balance: bool | None = flag(None)
    fusion_confidence: float | None = flag(None, metavar="WEIGHT")
    fusion_reliability: float | None = flag(None, metavar="WEIGHT")
    joint_transduction: bool | None = flag(None)


@dataclass
class EvalSettings(EpisodeShape, TestTimeOptions):
    """What `metamodal.api.evaluate` measures.

    Args:
        run: the run directory.
        data: another dataset directory (default: the run's own, with its split).
        split: the classes evaluated on: test, val, train or all.
        episodes: a fixed episode file (episodes.jsonl): exactly these episodes.
        modalities: evaluate with only these modalities (the others count as absent).
        learner: evaluate the run's backbone under another learner (e.g. finetune on a
            supervised-pretrained run).
        ablation: also each modality alone and each one left out.
        robustness: also the missing-modality curves (and, for a run that trained an
            alignment, imputing the modality against masking it).
        imputation: also, for a run that trained an alignment, imputing each modality
            through the learned maps against masking it.
        baseline: also the untrained-encoders baseline on the same episodes.
        progress: show a progress bar.
        json: also write the results as JSON to this file.
        task: for a multi-task run, evaluate only this label column's task (default: every
            task, the main label's at the top of the results).
    """

    run: str = flag("", name="")
    data: str | None = None
    split: Literal["test", "val", "train", "all"] = "test"
    episodes: str | None = flag(None, metavar="FILE")
    modalities: list[str] | None = None
    learner: str | None = None
    ablation: bool = False
    robustness: bool = False
    imputation: bool = False
    baseline: bool = flag(True, name="--no-baseline")
    progress: bool = flag(True, name="--no-progress")
    json: str | None = flag(None, metavar="FILE")
    task: str | None = flag(None, metavar="NAME")


@dataclass
class ReportSettings(EpisodeShape):
    """What `metamodal.api.report` writes into ``RUN/report``.

    Args:
        run: the run directory.
        modalities: report on only these modalities (the others count as absent).
        descriptions_from: for a run with an alignment, zero-shot with classes described by
            this modality of their samples (default: the dataset's descriptions.toml).
        progress: show a progress bar.
    """

    run: str = flag("", name="")
    modalities: list[str] | None = None
    descriptions_from: str | None = flag(None, metavar="MODALITY")
    progress: bool = flag(True, name="--no-progress")


@dataclass
class PredictSettings(TestTimeOptions):
    """What `metamodal.api.predict` classifies.

    Args:
        run: the run directory.
        support: the labelled support samples (a csv / jsonl / parquet table).
        query: the query samples (a table of the same columns, labels not needed).
        modalities: predict with only these modalities (the others count as absent).
        json: also write the predictions as JSON to this file.
        progress: show a progress bar while pretrained encoders compute features.
    """

    run: str = flag("", name="")
    support: str = flag("", metavar="TABLE")
    query: str = flag("", metavar="TABLE")
    modalities: list[str] | None = None
    json: str | None = flag(None, metavar="FILE")
    progress: bool = flag(True, name="--no-progress")


@dataclass
class ServeSettings(TestTimeOptions):
    """What `metamodal.api.serve` serves, where, and within which limits.

    The test-time settings (`TestTimeOptions`) replace the run's, as in ``metamodal predict``,
    but for ``transduction_balance``, which is off unless given.

    Args:
        run: the run directory whose model classifies.
        transduction_balance: the soft k-means steps assign each request's queries evenly over
            the task's classes; off unless given, whatever the run's setting, since a
            request's queries are not known to be spread evenly over them (a request of one
            class's samples would be pushed onto the others).
        host: the address to listen on; any address other than loopback needs ``token``.
        port: the TCP port.
        token: the bearer token that write requests need (and every request, on an address
            other than loopback); default: the environment variable
            ``METAMODAL_SERVE_TOKEN``, which other users cannot see in the process list.
        state: the directory of the task database (tasks and their encoded examples survive
            a restart there).
        device: where the model runs (``cpu``, ``cuda``).
        batching: embed the queries of requests waiting at the same time as one batch.
        cors: a web origin allowed to call the API from a page of its own (default: none).
        allow_hosts: dotted host names (comma-separated) a server on loopback answers to,
            besides ``localhost`` and IP addresses: the names a proxy of yours sends. Any
            other is refused (a page of another site that points its own name at this
            machine, DNS rebinding).
        max_request_mb: the largest request body, in MiB.
        request_timeout: the longest a request's body may fall silent, in seconds (its
            headers are due within 10 s, or this if shorter); then it is answered 408.
        max_connections: the most connections open at once; one more is answered 503.
        max_request_mpx: the most pixels the images of one request may decode to, in
            mebipixels (2**20 pixels), read from their headers before any is decoded.
        max_samples: the most examples or queries in one request.
        max_examples: the most examples a task holds.
        max_classes: the most classes a task holds.
        max_tasks: the most tasks the state holds.
        eval_episodes: test episodes to measure the run's accuracy on, once, in the
            background (kept in the state; 0: don't).
    """

    run: str = flag("", name="")
    transduction_balance: bool = False  # unlike the other test-time settings: not the run's
    host: str = "127.0.0.1"
    port: int = flag(8000, least=0, most=65535)
    token: str | None = None
    state: str = flag("metamodal-state", metavar="DIR")
    device: str = "cpu"
    batching: bool = flag(True, name="--no-batching")
    cors: str | None = flag(None, metavar="ORIGIN")
    allow_hosts: str | None = flag(None, metavar="NAMES")
    max_request_mb: float = flag(32.0, least=1 / 1024, most=4096.0)
    request_timeout: float = flag(60.0, least=1.0, most=86400.0)
    max_connections: int = flag(256, least=1, most=65536)
    max_request_mpx: float = flag(64.0, least=1 / 1024, most=65536.0)
    max_samples: int = flag(64, least=1, most=MAX_COUNT)
    max_examples: int = flag(2000, least=1, most=MAX_COUNT)
    max_classes: int = flag(200, least=1, most=MAX_COUNT)
    max_tasks: int = flag(1000, least=1, most=MAX_COUNT)
    eval_episodes: int = flag(600, least=0, most=MAX_EPISODES)


@dataclass
class SearchSettings:
    """What `metamodal.api.search` searches, how, and where it keeps the study.

    Args:
        space: the search space (TOML: one key per training setting, see
            `metamodal.search.space`).
        out: the search's folder (trials' runs, fixed validation episodes, best.toml,
            trials.csv, report/).
        trials: the study's size: a worker stops once the study holds this many trials.
        sampler: ``tpe`` (Bayesian), ``random`` or ``grid`` (every combination of choices).
        pruner: stop unpromising trials early from the trainer's validations: ``median``,
            ``hyperband`` or ``none``.
        storage: where the study lives: an Optuna URL (default: sqlite:///OUT/study.db), or
            journal:PATH for Optuna's journal file; workers given the same storage and study
            share it.
        study: the study's name (a study of that name in the storage is continued).
        sampler_seed: seed of the sampler (give each parallel worker its own).
        config: the base training config (TOML); train's flags given here override it and the
            space overrides both.
        objective_ways, objective_shots, objective_queries, objective_episodes: the fixed
            validation episodes every trial is scored on.
    """

    space: str = flag("", metavar="SPACE.toml")
    out: str = flag("", metavar="DIR")
    trials: int = flag(20, least=1, most=MAX_TRIALS)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    storage: str | None = flag(None, metavar="URL")
    study: str = "metamodal"
    sampler_seed: int | None = flag(None, least=0, most=2**32 - 1)  # numpy's seeds
    config: str | None = flag(None, metavar="FILE.toml")
    objective_ways: int = flag(5, least=2, most=LIMITS["ways"])
    objective_shots: int = flag(1, least=1, most=LIMITS["shots"])
    objective_queries: int = flag(15, least=1, most=LIMITS["queries"])
    objective_episodes: int = flag(200, least=1, most=MAX_OBJECTIVE_EPISODES)


@dataclass
class EpisodesSettings:
    """The episode file that `metamodal.api.episodes` writes (a published protocol).

    Args:
        data: the dataset directory.
        out: the episodes.jsonl to write.
        within: every run within one group: group names (comma-separated, used in turn) or
            '*' for every group that can supply a run (Lake et al. 2015).
        split: draw classes from this split.
        split_seed: seed of the split when the dataset has no splits.toml (use the training
            seed).
        ways: classes per run.
        shots: support samples per class.
        queries: query samples per class.
        runs: number of runs (episodes).
        seed: seed of the runs.
    """

    data: str = flag("", name="")
    out: str = flag("", metavar="FILE")
    within: str | None = flag(None, metavar="GROUPS")
    split: Literal["all", "train", "val", "test"] = "all"
    split_seed: int = flag(0, least=0, most=MAX_SEED)
    ways: int = flag(5, least=2, most=LIMITS["ways"])
    shots: int = flag(1, least=1, most=LIMITS["shots"])
    queries: int = flag(15, least=1, most=LIMITS["queries"])
    runs: int = flag(600, least=1, most=MAX_EPISODES)
    seed: int = flag(0, least=0, most=MAX_SEED)


@dataclass
class SyntheticSettings:
    """The embedded synthetic dataset that `metamodal.api.make_synthetic` writes.

    Args:
        out: the dataset directory to write.
        classes: number of classes.
        per_class: samples per class.
        seed: seed of the generator.
        missing_rate: probability that a modality is missing in a sample.
        noise: nuisance strength in every modality (0 clean, 1-2 hard).
        attribute_values: values per latent attribute (2-5); fewer = weaker single modalities.
        image_size: side of the images in pixels.
        track_length: points of each trajectory.
        overwrite: replace a dataset already in ``out``.
    """

    out: str = flag("", name="")
    classes: int = 100
    per_class: int = 20
    seed: int = flag(0, least=0, most=MAX_SEED)
    missing_rate: float = 0.1
    noise: float = 0.5
    attribute_values: int = 3
    image_size: int = 32
    track_length: int = 64
    overwrite: bool = False


@dataclass
class ImportSettings:
    """What every importer of `metamodal.api.import_dataset` takes.

    Args:
        source: the folder, archive or table to import.
        out: the dataset directory to write.
        name: the dataset's name.
        overwrite: replace OUT when it already holds a dataset.
        val_groups: groups (or classes, without groups) held out for validation, written to
            splits.toml.
        test_groups: groups (or classes) held out for testing.
        progress: show a progress bar.
    """

    source: str = flag("", name="")
    out: str = flag("", name="")
    name: str | None = None
    overwrite: bool = False
    val_groups: list[str] = flag([], metavar="GROUPS")
    test_groups: list[str] = flag([], metavar="GROUPS")
    progress: bool = flag(True, name="--no-progress")


@dataclass
class FolderImportSettings(ImportSettings):
    """One folder of media files per class (``SOURCE/[GROUP/]CLASS/FILE``).

    Args:
        group_level: folders above the class folders are groups (auto: detect).
        skip_other_files: leave out files of other types instead of failing.
        skip_bad_files: leave out files that cannot be read (corrupt, empty, truncated)
            instead of failing; every file is decoded once at import.
        keep_top_folder: for an archive whose files lie below one folder: keep that folder
            (a class, or a group) instead of reading it as the source's root.
    """

    group_level: Literal["auto", "yes", "no"] = "auto"
    skip_other_files: bool = False
    skip_bad_files: bool = False
    keep_top_folder: bool = False


@dataclass
class ImageFolderSettings(FolderImportSettings):
    """One folder of images per class.

    Args:
        image_size: decoded image size (loader option).
        channels: 1 grey, 3 RGB.
    """

    image_size: int | None = None
    channels: Literal[1, 3] | None = None


@dataclass
class VideoFolderSettings(ImageFolderSettings):
    """One folder of videos per class (MP4, WebM, AVI, MKV, MOV ...).

    Args:
        frames: frames sampled uniformly from each video (default: the loader's, 8).
    """

    frames: int | None = None


@dataclass
class TableImportSettings(ImportSettings):
    """A CSV / JSON-lines / Parquet table whose columns are named by role.

    Args:
        label: the column of class labels.
        id: the column of unique sample ids (default: id, or row numbers).
        group: a column grouping classes (splits by group).
        text: columns holding text.
        numeric: columns holding numbers (one tabular modality).
        image: columns holding image file paths.
        audio: columns holding audio file paths.
        sequence: columns holding .npy / .csv sequence file paths.
        video: columns holding video file paths.
        root: folder the file paths are relative to (default: the table's folder); paths out
            of it are refused. For an archive SOURCE, a folder inside the archive.
        allow_missing_files: a path to a missing file becomes an empty cell.
        table: when SOURCE is a zip or tar archive holding the table and its files: the
            table's path inside it (default: its CSV / JSON-lines / Parquet file nearest its
            root).
    """

    label: str = ""
    id: str | None = None
    group: str | None = None
    text: list[str] = flag([], metavar="COLUMNS")
    numeric: list[str] = flag([], metavar="COLUMNS")
    image: list[str] = flag([], metavar="COLUMNS")
    audio: list[str] = flag([], metavar="COLUMNS")
    sequence: list[str] = flag([], metavar="COLUMNS")
    video: list[str] = flag([], metavar="COLUMNS")
    root: str | None = None
    allow_missing_files: bool = False
    table: str | None = flag(None, metavar="PATH")


@dataclass
class OmniglotImportSettings(ImportSettings):
    """The official Omniglot archives or folders (images + pen strokes, ``all_runs``).

    Args:
        image_size: decoded image size (files keep 105x105).
        stroke_length: points of a stroke sequence kept when decoded.
        no_strokes: import the images only.
        allow_unmatched: import a drawing lacking its image or strokes with that modality
            missing.
    """

    image_size: int = 28
    stroke_length: int = flag(256, least=1, most=SEQUENCE_MAX_LENGTH)
    no_strokes: bool = False
    allow_unmatched: bool = False


IMPORT_LAYOUTS: dict[str, tuple[type[ImportSettings], str]] = {
    "imagefolder": (ImageFolderSettings, "one folder of images per class "
                    "(SOURCE/[GROUP/]CLASS/FILE; SOURCE a folder, .zip or .tar[.gz|.bz2|.xz])"),
    "audiofolder": (FolderImportSettings, "one folder of audio files per class "
                    "(SOURCE/[GROUP/]CLASS/FILE; SOURCE a folder, .zip or .tar[.gz|.bz2|.xz])"),
    "videofolder": (VideoFolderSettings, "one folder of videos per class "
                    "(SOURCE/[GROUP/]CLASS/FILE; SOURCE a folder, .zip or .tar[.gz|.bz2|.xz]); "
                    "frames sampled uniformly"),
    "table": (TableImportSettings, "a CSV / JSON-lines / Parquet table, or a .zip / .tar[.gz] "
              "holding it and its files; name the columns by role"),
    "omniglot": (OmniglotImportSettings, "the official Omniglot archives or folders (images + "
                 "strokes, all_runs)"),
}
"""Import layout -> (its settings, one line of help)."""


@dataclass
class DownloadSettings:
    """What `metamodal.api.download` fetches, verifies, unpacks and imports.

    Args:
        dataset: the dataset (omniglot).
        dir: folder for archives/, unpacked/ and the imported dataset/.
        sets: background-small (default), background, evaluation, or archive names.
        url: base URL the archive names are appended to (default: the authors' repository).
        sha256: expected SHA-256 of an archive, NAME=HEX (repeatable).
        no_import: only download and unpack.
        overwrite: import again over DIR/dataset.
        val_groups: alphabets held out for validation.
        test_groups: alphabets held out for testing.
        image_size: decoded image size.
        timeout: seconds to wait for the server's next bytes (up to a day).
        progress: show a progress bar.
    """

    dataset: Literal["omniglot"] = flag("omniglot", name="")
    dir: str = flag("", name="")
    sets: list[str] = flag([], metavar="SETS")
    url: str | None = None
    sha256: dict[str, str] = flag({}, metavar="NAME=HEX", pairs=True)
    no_import: bool = False
    overwrite: bool = False
    val_groups: list[str] = flag([], metavar="GROUPS")
    test_groups: list[str] = flag([], metavar="GROUPS")
    image_size: int = 28
    timeout: float = flag(60.0, least=0.001, most=MAX_TIMEOUT)
    progress: bool = flag(True, name="--no-progress")


@dataclass
class RetrieveSettings:
    """The cross-modal retrieval that `metamodal.api.retrieve` measures.

    Args:
        run: the run directory (of align or train --align-weight).
        query_modality: the modality of the queries.
        target_modality: the modality ranked for each query.
        data: another dataset (default: the run's own).
        split: the classes: test, val, train or all.
        baseline_runs: also fit ridge / CCA maps on these runs' encoders, NAME=RUN
            (repeatable).
        seed: seeds the random rankings and the untrained encoders.
        device: where the encoders run.
        json: also write the results (and top matches) as JSON to this file.
        progress: show a progress bar while pretrained encoders compute features.
    """

    run: str = flag("", name="")
    query_modality: str = ""
    target_modality: str = ""
    data: str | None = None
    split: Literal["test", "val", "train", "all"] = "test"
    baseline_runs: dict[str, str] = flag({}, name="--baseline-run", metavar="NAME=RUN",
                                         pairs=True)
    seed: int = flag(0, least=0, most=MAX_SEED)
    device: str = "cpu"
    json: str | None = flag(None, metavar="FILE")
    progress: bool = flag(True, name="--no-progress")


@dataclass
class ZeroShotSettings:
    """The zero-shot and few+zero-shot (AM3) accuracy that `metamodal.api.zero_shot` measures.

    Args:
        run: the run directory (a metric learner, e.g. train --align-weight).
        descriptions: a descriptions.toml (class -> text); default: the dataset's own.
        descriptions_from: describe each class by this modality of its samples (e.g. a
            caption column) instead of descriptions.toml; queries are embedded without it.
        data: another dataset (default: the run's own).
        ways: classes per episode.
        shots: shot counts of few+zero-shot.
        queries: query samples per class.
        episodes_count: test episodes.
        am3_steps: meta-training episodes of the AM3 head (backbone frozen; 0: untrained).
        seed: seed of the episodes.
        device: where the encoders run.
        json: also write the results as JSON to this file.
        progress: show a progress bar while pretrained encoders compute features.
    """

    run: str = flag("", name="")
    descriptions: str | None = None
    descriptions_from: str | None = flag(None, metavar="MODALITY")
    data: str | None = None
    ways: int = flag(5, least=2, most=LIMITS["ways"])
    shots: list[int] = flag([1, 5], values="1,5")
    queries: int = flag(15, least=1, most=LIMITS["queries"])
    episodes_count: int = flag(600, least=1, most=MAX_EPISODES)
    am3_steps: int = flag(500, least=0, most=LIMITS["steps"])
    seed: int = flag(0, least=0, most=MAX_SEED)
    device: str = "cpu"
    json: str | None = flag(None, metavar="FILE")
    progress: bool = flag(True, name="--no-progress")


@dataclass
class CacheSettings:
    """The feature cache of pretrained encoders that `metamodal.api.cache_info` describes and
    `metamodal.api.clear_cache` empties.

    Args:
        dir: cache directory (default $METAMODAL_CACHE or ~/.cache/metamodal/features).
        encoder: only this encoder's features (e.g. minilm).
        limit: size limit to report (default $METAMODAL_CACHE_LIMIT or 2GiB).
        json: also write the description as JSON to this file.
    """

    dir: str | None = None
    encoder: str | None = None
    limit: str | None = None
    json: str | None = flag(None, metavar="FILE")


@dataclass
class LearnerFlags:
    """The optimisation-based learners' options that have flags of their own (they land in
    `metamodal.config.TrainConfig`'s ``learner_options``).

    Args:
        inner_steps: inner steps in training.
        inner_lr: inner learning rate in training.
        eval_steps: inner steps at evaluation.
        eval_lr: inner learning rate at evaluation.
        first_order: first-order meta-gradients.
        adapt: what the inner loop adapts: all, head, fusion, or comma-separated modalities.
    """

    inner_steps: int | None = None
    inner_lr: float | None = None
    eval_steps: int | None = None
    eval_lr: float | None = None
    first_order: bool = False
    adapt: str | None = None

    def options(self) -> dict[str, Any]:
        """The options given (``None`` and ``False`` are left out), as ``learner_options``."""
        options = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}
        if "adapt" in options:
            names = [n.strip() for n in options["adapt"].split(",") if n.strip()]
            options["adapt"] = names[0] if len(names) == 1 and names[0] in (
                "all", "head", "fusion") else names
        return options


@dataclass
class AlignFlags:
    """The alignment options that have flags of their own (they land in
    `metamodal.config.TrainConfig`'s ``align_options``).

    Args:
        temperature: initial InfoNCE temperature (0.07).
        margin: margin of the margin objective (1.0).
        regression_loss: loss of the regression maps and objective (mse).
        direction: regression objective: SOURCE->TARGET, e.g. caption->image.
        positives: InfoNCE positives: the same sample (instance) or any sample of its class.
    """

    temperature: float | None = None
    margin: float | None = None
    regression_loss: Literal["mse", "cosine"] | None = None
    direction: str | None = None
    positives: Literal["instance", "class"] | None = None

    def options(self) -> dict[str, Any]:
        """The options given, as ``align_options``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class FusionFlags:
    """Late fusion's training options that have flags of their own (they land in
    `metamodal.config.TrainConfig`'s ``fusion_options``; ``fusion = "late"`` only).

    Args:
        unimodal_loss: weight of each modality's own query loss (0 = off).
        distill: weight of each modality's KL divergence from the fused posterior
            (cross-modal distillation; 0 = off).
    """

    unimodal_loss: float | None = None
    distill: float | None = None

    def options(self) -> dict[str, Any]:
        """The options given, as ``fusion_options``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class RunSettings:
    """How `metamodal.api.train` and `metamodal.api.align` write their run directory.

    Args:
        out: the run directory to write.
        config: a TOML training config (the other settings override it).
        resume: continue from the last checkpoint.
        overwrite: replace a finished run in OUT (once the new run is complete).
        progress: show a progress bar.
    """

    out: str = flag("", metavar="RUN")
    config: str | None = flag(None, metavar="FILE.toml")
    resume: bool = False
    overwrite: bool = False
    progress: bool = flag(True, name="--no-progress")


@dataclass
class DemoSettings:
    """Sizes of the demo; the defaults finish in minutes on 2 CPU cores. Every setting is
    checked before any work starts.

    Args:
        classes: classes of the generated dataset.
        per_class: samples per class (at least 20: the 5-shot episodes take 15 queries).
        image_size: side of its images in pixels.
        track_length: steps of its trajectories.
        steps: meta-training episodes of each episodic model.
        baseline_steps: supervised pre-training batches of the baselines.
        maml_steps: meta-updates of MAML (one episode each).
        maml_inner_steps: MAML's inner-loop steps in training.
        maml_eval_steps: MAML's inner-loop steps at evaluation.
        maml_lr: MAML's inner-loop learning rate.
        episodes: test episodes per evaluation (>= 600 for published numbers).
        robustness_episodes: episodes per point of the missing-modality curves.
        seed: seeds data generation, splits, training and episodes.
        dim: the shared embedding size.
        align_steps: steps of the contrastive alignment of all five encoders (default
            steps // 2).
        align_weight: weight of the alignment loss when ProtoNet trains on top of it.
        am3_steps: meta-training episodes of the AM3 head, backbone frozen (default
            min(steps, 500)).
        mapping: run the cross-modal part (alignment, retrieval, zero-shot, AM3, imputation).
        precision: the precision of every training step (`metamodal.config.TrainConfig`):
            ``auto`` trains the encoders and the fusion in bfloat16 where the hardware
            computes it natively (a CPU with AMX or AVX512-BF16), ``fp32`` or ``bf16``.
    """

    classes: int = 100
    per_class: int = flag(20, least=20, most=100_000)
    image_size: int = 16
    track_length: int = 32
    steps: int = flag(600, least=1, most=LIMITS["steps"])
    baseline_steps: int = flag(600, least=1, most=LIMITS["steps"])
    maml_steps: int = flag(600, least=1, most=LIMITS["steps"])
    maml_inner_steps: int = flag(1, least=1, most=1000)
    maml_eval_steps: int = flag(1, least=1, most=1000)
    maml_lr: float = flag(5.0, least=1e-12, most=MAX_LR)
    episodes: int = flag(600, least=1, most=MAX_EPISODES)
    robustness_episodes: int = flag(300, least=1, most=MAX_EPISODES)
    seed: int = flag(0, least=0, most=MAX_SEED)
    dim: int = flag(64, least=1, most=LIMITS["dim"])
    align_steps: int | None = flag(None, least=1, most=LIMITS["steps"])
    align_weight: float = flag(0.5, least=0, most=1e6)
    am3_steps: int | None = flag(None, least=1, most=LIMITS["steps"])
    mapping: bool = flag(True, name="--no-mapping")
    precision: Literal["auto", "fp32", "bf16"] = "auto"


QUICK_DEMO = {"classes": 40, "per_class": 20, "steps": 60, "baseline_steps": 60,
              "maml_steps": 60, "episodes": 600, "robustness_episodes": 100, "align_steps": 60,
              "am3_steps": 100}
"""The sizes of ``metamodal demo --quick``: a small, less accurate smoke run."""


@dataclass
class DemoRunSettings:
    """Where `metamodal.api.demo` works.

    Args:
        out: the demo directory (data/, runs/, report/).
        data: use this dataset instead of generating one.
        quick: a small, fast version (a smoke run): the sizes of QUICK_DEMO.
        progress: show progress bars.
    """

    out: str = "metamodal-demo"
    data: str | None = None
    quick: bool = False
    progress: bool = flag(True, name="--no-progress")


@dataclass
class ExportSettings:
    """What `metamodal.api.export` writes: a run's encoders and fusion as a model file that
    maps preprocessed inputs to embeddings, and a JSON sidecar beside it (``OUT`` with the
    suffix ``.json``) with the preprocessing and the prototype rule.

    Args:
        run: the run directory.
        out: the model file to write (e.g. model.onnx or model.pt).
        format: onnx (run with onnxruntime) or torchscript (torch.jit.load).
        modalities: export only these modalities (the others count as absent); needed
            when a modality's encoder does not export.
        opset: the ONNX opset (7 to 23, the versions torch's exporter writes; the encoders'
            operators need 13 or more).
        features: export a modality with a frozen pretrained encoder as its adapter over
            precomputed features (the pretrained network stays outside the graph).
        check: run the written file (onnxruntime or torch.jit.load) on example inputs and
            report its largest difference from PyTorch's embeddings.
        overwrite: replace OUT and its sidecar when they exist.
        json: also write the result as JSON to this file.
    """

    run: str = flag("", name="")
    out: str = flag("", name="")
    format: Literal["onnx", "torchscript"] = "onnx"
    modalities: list[str] | None = None
    opset: int = flag(17, least=7, most=23)
    features: bool = False
    check: bool = flag(True, name="--no-check")
    overwrite: bool = False
    json: str | None = flag(None, metavar="FILE")


@dataclass
class EnsembleSettings(TestTimeOptions):
    """What `metamodal.api.ensemble` combines and writes: two or more trained runs of the
    same dataset and class split, fitted once on episodes of their validation classes. The
    test-time settings (`TestTimeOptions`: ``tta``, ``transduction``, ...) replace the own of
    every member that can honour them (one that cannot keeps its own and still votes; a
    setting no member can honour is refused): the ensemble is fitted with them and its
    members keep them.

    Args:
        runs: the member run directories (two or more).
        out: the ensemble run directory to write.
        method: mean (average of temperature-calibrated probabilities) or stack (weights over
            the members' calibrated log-probabilities, fitted on validation episodes).
        ways: classes per validation episode; when not given 5, lowered (with a warning) to
            what the validation split has.
        shots: support samples per class.
        queries: query samples per class; when not given 15, lowered to what the classes hold.
        episodes_count: validation episodes the temperatures and weights are fitted on.
        seed: seed of the validation episodes.
        joint_transduction: the members' transduction steps take each query's assignment
            from the ensemble's combined probabilities instead of each member's own, so that
            one member's confidence moves the others' prototypes (members with prototypes,
            each with its own ``transduction`` steps and balance).
        overwrite: replace OUT when it exists.
        json: also write the result as JSON to this file.
        progress: show a progress bar while pretrained encoders compute features.
    """

    runs: list[str] = flag([], name="")
    out: str = ""
    method: Literal["mean", "stack"] = "mean"
    joint_transduction: bool = False
    ways: int | None = None
    shots: int = 1
    queries: int | None = None
    episodes_count: int = flag(300, least=1, most=MAX_EPISODES)
    seed: int = flag(0, least=0, most=MAX_SEED)
    overwrite: bool = False
    json: str | None = flag(None, metavar="FILE")
    progress: bool = flag(True, name="--no-progress")
