"""`FewShotClassifier`: a scikit-learn-style face on a meta-trained run."""


from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metamodal.config import test_time_overrides
from metamodal.data.batch import ModalityBatch, batch_to, index_batch
from metamodal.data.dataset import MultimodalDataset, load_dataset, load_sample_table
from metamodal.data.records import Label, checked_labels, records_dataset
from metamodal.errors import (
    ConfigError,
    DatasetError,
    InsufficientSamplesError,
    ModalityError,
    OutputError,
    RunError,
)
from metamodal.estimator import EstimatorParams
from metamodal.io import atomic_write, make_directory, sha256_file
from metamodal.learners.base import class_modality_counts
from metamodal.learners.embeddings import Embeddings
from metamodal.model.ensemble import EnsembleModel, compares_per_modality
from metamodal.model.test_time import settings_in_force
from metamodal.runs.directory import (
    CONFIG_FILE,
    MEMBERS_DIR,
    PREPROCESSOR_FILE,
    WEIGHTS_FILE,
    Run,
    load_run,
)
from metamodal.runs.support import (
    SUPPORT_FILE,
    SUPPORT_META,
    TEST_TIME_KEYS,
    EncodedSamples,
    check_support_model,
    read_support_meta,
    read_support_tensors,
    saved_test_time,
    write_support,
)

SampleSource = Any
"""What ``X`` may be: a list of dicts, a pandas DataFrame, a sample table or dataset directory
path, or a `MultimodalDataset` (see `FewShotClassifier`)."""


SAVED_FILES = frozenset({CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, MEMBERS_DIR, SUPPORT_FILE,
                         SUPPORT_META})
"""What `FewShotClassifier.save` writes into a directory other than its run's."""


def check_save_directory(directory: Path) -> None:
    """Raise `OutputError` unless ``directory`` is missing, empty, or holds only what an
    earlier `FewShotClassifier.save` wrote there (its ``support.json`` among them)."""
    if not directory.is_dir():
        return  # missing (made), or a file in its place (make_directory says so)
    entries = {entry.name for entry in directory.iterdir()}
    if not entries or (SUPPORT_META in entries and entries <= SAVED_FILES):
        return
    others = sorted(entries - SAVED_FILES) or sorted(entries)
    raise OutputError(
        "the directory is not empty and is no saved classifier: it holds "
        f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}, and saving would "
        f"replace its {CONFIG_FILE}, {WEIGHTS_FILE} and {PREPROCESSOR_FILE}",
        file=directory, fix="save into a new or empty directory (or one an earlier save wrote)")


class FewShotClassifier(EstimatorParams):
    """Classify new classes from a few labelled examples with a meta-trained run.

    ``fit(X, y)`` keeps what the run's learner needs to adapt to the labelled support samples
    ``X`` (any mix of the model's modalities, some may be missing) with their labels ``y``: their
    embeddings for a metric learner (e.g. ProtoNet's prototypes come from them), the decoded
    samples themselves for a learner that adapts the network's weights (the MAML family).
    ``predict(X)`` / ``predict_proba(X)`` / ``decision_function(X)`` adapt and classify;
    ``score(X, y)`` is the accuracy. ``X`` is, in every method, one of:

    * a list of dicts, one per sample, keys = column names of the run's dataset schema (``id``
      optional, one column per modality, a tabular modality's columns); ``None``, ``""`` or a
      key left out is a missing modality, a float NaN is an error;
    * a pandas DataFrame with those columns (pandas' NaN / ``NA`` is a missing cell);
    * a sample table (``.csv`` / ``.jsonl`` / ``.parquet``; media paths relative to the file)
      or a dataset directory, as a path;
    * a `MultimodalDataset`.

    Media paths in a list of dicts or a DataFrame are relative to ``media_root`` and never
    leave it (see `metamodal.data.records`). ``y`` is a sequence of labels, one per sample:
    strings or integers. Errors name the row (1-based, in the order given) and the column.

    The class follows scikit-learn's conventions: the constructor only stores its arguments
    (it reads no file: the run is loaded by ``fit``), ``get_params`` / ``set_params`` work, and
    so does ``sklearn.base.clone``; what ``fit`` learns ends with ``_``. scikit-learn itself is
    not needed.

    Args:
        run: a run directory written by ``metamodal train``.
        device: where the model runs (``cpu``, ``cuda``).
        modalities: the modalities to use, a subset of the model's; the others are treated as
            absent in every sample, in ``fit`` and in prediction (default: all of the
            model's). A model modality the input lacks entirely is absent in every sample,
            with one warning; a modality the model never saw is a `ModalityError`.
        media_root: the directory that media paths of a list of dicts or a DataFrame are
            relative to (default: none, and such a path is an error).
        tta: test-time augmentation copies per sample (default: the run's ``tta``; see
            `metamodal.model.test_time`).
        transduction: soft k-means steps over the queries of each `predict` call (default:
            the run's ``transduction``).
        transduction_balance: those steps assign the queries evenly over the classes, for
            `predict` calls whose queries are spread evenly over them (default: the run's).
        fusion_confidence: late fusion lowers the weight of a modality whose posterior is
            uncertain, query by query (default: the run's ``fusion_confidence``).
        fusion_reliability: late fusion weighs each modality per class by its agreement with
            the fused model on the queries of each `predict` call (default: the run's).
        joint_transduction: for an ensemble run, its members' transduction steps are taken
            jointly (True) or each on its own (False) (default: as the ensemble was made);
            given for a run that is not an ensemble, a `ConfigError` on loading.

    Attributes (after ``fit``):
        run_: the loaded run (`metamodal.runs.directory.Run`: model, preprocessor, schema).
        modalities_: the modalities used, in the model's order.
        classes_: class labels, the column order of `predict_proba`.
        support_: the kept support samples (`EncodedSamples`): embedded for a metric
            learner, decoded for a learner that adapts weights.
        support_labels_: long ``[S]`` class index of each support sample.

    Example:
        >>> clf = FewShotClassifier("runs/demo", modalities=["caption"])  # reads no file
        >>> clf
        FewShotClassifier(run='runs/demo', modalities=['caption'])
        >>> clf.set_params(device="cuda").get_params()["device"]
        'cuda'

        Fitted on a tiny run (trained for two steps here; a real one comes from
        ``metamodal train``):

        >>> import tempfile
        >>> from metamodal.config import TrainConfig
        >>> from metamodal.datasets.synthetic import make_synthetic
        >>> from metamodal.train.trainer import Trainer
        >>> root = Path(tempfile.mkdtemp())
        >>> data = make_synthetic(root / "data", classes=12, per_class=3, image_size=8)
        >>> config = TrainConfig(data=str(data), modalities=["caption"],
        ...                      steps=2, ways=2, shots=1, queries=1, dim=8, val_every=0,
        ...                      device="cpu", cache=False)
        >>> _ = Trainer(config, root / "run", progress=False).fit()
        >>> X = [{"caption": "a tiny blue bird of the dunes"},
        ...      {"caption": "a large grey heron by the river"}]
        >>> clf = FewShotClassifier(root / "run").fit(X, ["finch", "heron"])
        >>> clf.classes_
        ['finch', 'heron']
        >>> clf.predict(X)  # with one shot a sample is its class's prototype
        ['finch', 'heron']
        >>> clf.predict_proba(X).shape, clf.score(X, ["finch", "heron"])
        ((2, 2), 1.0)
    """

    # scikit-learn's conventions come from EstimatorParams (get_params, set_params, repr) and
    # are not inherited from sklearn.base.BaseEstimator / ClassifierMixin: scikit-learn (with
    # SciPy) is not a dependency of metamodal's core, and importing this class must not need
    # it. `__sklearn_tags__` imports scikit-learn only when scikit-learn asks for the tags.

    def __init__(
        self,
        run: str | os.PathLike[str],
        *,
        device: str = "cpu",
        modalities: Sequence[str] | None = None,
        media_root: str | os.PathLike[str] | None = None,
        tta: int | None = None,
        transduction: int | None = None,
        transduction_balance: bool | None = None,
        fusion_confidence: float | None = None,
        fusion_reliability: float | None = None,
        joint_transduction: bool | None = None,
    ) -> None:
        self.run = run
        self.device = device
        self.modalities = modalities
        self.media_root = media_root
        self.tta = tta
        self.transduction = transduction
        self.transduction_balance = transduction_balance
        self.fusion_confidence = fusion_confidence
        self.fusion_reliability = fusion_reliability
        self.joint_transduction = joint_transduction

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags: a classifier that needs ``y`` and validates its own input
        (called by scikit-learn only, so scikit-learn is importable here)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), no_validation=True,
                    input_tags=InputTags(two_d_array=False, string=True, dict=True))

    def __sklearn_is_fitted__(self) -> bool:
        """True after ``fit`` (or `load` of a saved classifier); scikit-learn asks this."""
        return hasattr(self, "classes_")

    # -- reading input ----------------------------------------------------------------------

    def loaded_run(self) -> Run:
        """The run named by ``run`` on ``device``, loaded once per (run, device) and shared by
        shallow copies of the classifier.

        Raises:
            RunError: the run directory is missing or damaged.
        """
        test_time = test_time_overrides(self)
        key = (os.fspath(self.run) if isinstance(self.run, str | os.PathLike) else None,
               self.device, self.joint_transduction, *test_time.values())
        if key[0] is None:
            raise ConfigError(f"run must be a run directory path, not {type(self.run).__name__}",
                              column="run", fix="FewShotClassifier('path/to/run')")
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != key:
            self._loaded = (key, load_run(key[0], device=self.device, test_time=test_time,
                                          joint_transduction=self.joint_transduction))
        return self._loaded[1]

    def _used_modalities(self, run: Run) -> list[str]:
        """``modalities`` checked against the model's, in the model's order."""
        known = list(run.model.modalities)
        if self.modalities is None:
            return known
        chosen = self.modalities
        fix = f"name some of the model's modalities, e.g. modalities={known[:1]!r}"
        if isinstance(chosen, str) or not isinstance(chosen, Sequence | set | frozenset):
            raise ConfigError(f"modalities must be a list of names, not {chosen!r}",
                              column="modalities", fix=fix)
        unknown = [m for m in chosen if m not in known]
        if unknown or not chosen:
            raise ConfigError(
                f"the model has no modality {unknown[0]!r}" if unknown else "no modality named",
                column="modalities", fix=f"{fix} (the model has: {', '.join(known)})")
        return [m for m in known if m in chosen]

    def load_samples(self, X: SampleSource, *, labelled: bool = False) -> MultimodalDataset:
        """Read samples (any form of ``X``, see the class docstring) with the run's schema,
        checking their modalities.

        Args:
            X: the samples.
            labelled: require the label column of a sample table (as for a support set).

        Raises:
            ModalityError: the samples carry modalities the model never saw, or none of the
                ones used.
        """
        fitted = hasattr(self, "classes_")
        run = self.run_ if fitted else self.loaded_run()
        modalities = self.modalities_ if fitted else self._used_modalities(run)
        return self._read(X, run, modalities, labelled=labelled)

    def _read(self, X: SampleSource, run: Run, modalities: list[str], *,
              labelled: bool) -> MultimodalDataset:
        warn_lacking = True
        if isinstance(X, MultimodalDataset):
            dataset = X  # read with the run's schema (load_samples), its loader has warned
            warn_lacking = X.schema != run.schema
        elif isinstance(X, str | os.PathLike):
            path = Path(X)
            if path.is_dir():
                dataset = load_dataset(path)
            else:
                dataset = load_sample_table(path, run.schema, require_label=labelled)
                warn_lacking = False  # load_sample_table warns of each column it lacks
        else:
            dataset = records_dataset(X, run.schema, media_root=self.media_root,
                                      decoded=modalities)
        self._check_modalities(dataset, run, modalities, warn_lacking=warn_lacking)
        return dataset

    def _check_modalities(self, dataset: MultimodalDataset, run: Run, modalities: list[str],
                          *, warn_lacking: bool) -> None:
        known = set(run.model.modalities)
        unknown = [name for name in dataset.schema.modalities if name not in known
                   and name not in run.schema.modalities]
        usable = [name for name in modalities if name in dataset.schema.modalities
                  and _has_columns(dataset, name)]
        where = dataset.table.file if hasattr(dataset, "table") else None
        partial = {name: _missing_columns(dataset, name) for name in modalities
                   if _any_column(dataset, name) and name in dataset.schema.modalities
                   and not _has_columns(dataset, name)}
        # a modality with some of its columns is refused even beside a whole one (it was
        # decoded with the others' values imputed)
        if unknown or not usable or partial:
            if unknown:
                what = f"modalities {unknown} were never seen in training"
            else:
                what = ("none of the modalities used has all its columns in this table"
                        if not usable else "a modality has only some of its columns here")
                what += "".join(f"; {name} lacks {', '.join(missing)}"
                                for name, missing in partial.items())
            raise ModalityError(
                what, file=where,
                fix=f"give samples with the model's modalities: {', '.join(modalities)} (a "
                "tabular modality needs every column; leave a cell empty for a missing value)",
            )
        lacking = [name for name in modalities if not _any_column(dataset, name)]
        if lacking and warn_lacking:
            warnings.warn(f"{where}: no column for modalities {lacking}; they are absent in "
                          "every sample", stacklevel=4)

    def _decode(self, dataset: MultimodalDataset, run: Run,
                modalities: list[str]) -> dict[str, ModalityBatch]:
        """The samples decoded with the run's fitted preprocessor, as one batch of the used
        modalities (those the samples lack are absent)."""
        declared = [m for m in run.preprocessor.modalities
                    if m in dataset.schema.modalities and m in modalities]
        store = run.preprocessor.transform(dataset, modalities=declared)
        names = [m for m in modalities if m in store.modalities]
        return store.batch(torch.arange(len(store)), names)

    def _embed(self, run: Run, batch: dict[str, ModalityBatch], chunk: int = 512) -> Embeddings:
        """Embeddings of ``batch`` in chunks of ``chunk`` samples, without gradients."""
        model = run.model.eval()
        size = len(next(iter(batch.values())))
        with torch.no_grad():
            return Embeddings.cat([
                model.embed(batch_to(index_batch(batch, rows), self.device)).detach()
                for rows in torch.arange(size).split(chunk)])

    # -- fitting and predicting -------------------------------------------------------------

    def fit(self, X: SampleSource, y: Sequence[Label] | None = None, *,
            classes: Sequence[Label] | None = None) -> FewShotClassifier:
        """Load the run and keep the labelled support samples (embedded, or decoded; see the
        class docstring).

        Args:
            X: the support samples, ``S`` of them (any form, see the class docstring).
            y: their labels, ``S`` of them. Leaving it out takes the labels from the label
                column of a sample table or dataset ``X``: deprecated, pass them.
            classes: the classes to predict, in order (default: the sorted labels). A class
                with no support sample raises `InsufficientSamplesError`.

        Raises:
            RunError: the run directory is missing or corrupt.
            DatasetError: ``y`` does not give one valid label per sample, or ``X`` cannot be
                read (the row and column are named).
            InsufficientSamplesError: one class only, a label not among ``classes``, or a
                class with no support sample.
            ModalityError: a support sample carries none of the used modalities (the row is
                named).
        """
        run = self.loaded_run()
        modalities = self._used_modalities(run)
        if y is None:
            if not isinstance(X, MultimodalDataset | str | os.PathLike):
                raise DatasetError("no labels given for the support samples", column="y",
                                   fix="call fit(X, y) with one label per sample in y")
            warnings.warn(
                "FewShotClassifier.fit(support) with the labels read from the support table is "
                "deprecated; pass them as y: fit(X, y), e.g. support = "
                "clf.load_samples(path, labelled=True); clf.fit(support, support.labels)",
                DeprecationWarning, stacklevel=2)
            dataset = self._read(X, run, modalities, labelled=True)
            labels = checked_labels(dataset.labels, len(dataset), column=dataset.schema.label)
        else:
            dataset = self._read(X, run, modalities, labelled=False)
            labels = checked_labels(y, len(dataset))
        from_table = y is None
        return self.fit_encoded(self._encode(dataset, run, modalities), labels, classes,
                                rows=dataset.rows() if from_table else None,
                                file=getattr(dataset.table, "file", None),
                                column=dataset.schema.label if from_table else "y")

    def encode(self, X: SampleSource) -> EncodedSamples:
        """Read, decode and (for a learner that embeds once) embed samples: what `fit_encoded`
        and `decision_function_encoded` take. The run is loaded if it is not yet.

        Args:
            X: the ``S`` samples (any form, see the class docstring).

        Returns:
            `EncodedSamples` of ``S`` rows, on the classifier's device.
        """
        fitted = hasattr(self, "classes_")
        run = self.run_ if fitted else self.loaded_run()
        modalities = self.modalities_ if fitted else self._used_modalities(run)
        return self._encode(self._read(X, run, modalities, labelled=False), run, modalities)

    def decode(self, X: SampleSource) -> EncodedSamples:
        """Read and decode samples without embedding them (see `embed`): the half of `encode`
        that needs no model, so that samples of several callers can be embedded as one batch.
        """
        fitted = hasattr(self, "classes_")
        run = self.run_ if fitted else self.loaded_run()
        modalities = self.modalities_ if fitted else self._used_modalities(run)
        batch = self._decode(self._read(X, run, modalities, labelled=False), run, modalities)
        return EncodedSamples(None, batch, _usable(batch))

    def embed(self, samples: EncodedSamples) -> EncodedSamples:
        """Decoded samples embedded when the learner embeds once, else unchanged."""
        run = self.run_ if hasattr(self, "classes_") else self.loaded_run()
        if samples.embeddings is not None or not run.model.capabilities().embeds_once:
            return samples
        return EncodedSamples(self._embed(run, samples.batch), None, samples.usable)

    def _encode(self, dataset: MultimodalDataset, run: Run,
                modalities: list[str]) -> EncodedSamples:
        batch = self._decode(dataset, run, modalities)
        usable = _usable(batch)
        if run.model.capabilities().embeds_once:
            return EncodedSamples(self._embed(run, batch), None, usable)
        return EncodedSamples(None, batch_to(batch, self.device), usable)

    def fit_encoded(self, support: EncodedSamples, y: Sequence[Label],
                    classes: Sequence[Label] | None = None, *, rows: list[int] | None = None,
                    file: str | os.PathLike[str] | None = None,
                    column: str = "y") -> FewShotClassifier:
        """Keep encoded support samples (from `encode`) with their labels: `fit` without
        reading, for a caller that keeps encoded samples (a server's stored tasks).

        Args:
            support: the ``S`` encoded support samples.
            y: their labels, ``S`` of them.
            classes: the classes to predict, in order (default: the sorted labels).
            rows, file, column: where the samples and their labels came from, for error
                messages (default: the position in ``y``, column ``y``).

        Raises:
            DatasetError: ``y`` does not give one valid label per sample.
            InsufficientSamplesError: one class only, a label not among ``classes``, or a
                class with no support sample.
            ModalityError: a support sample carries none of the used modalities (the row is
                named).
        """
        run = self.loaded_run()
        modalities = self._used_modalities(run)
        labels = checked_labels(y, len(support), column=column)
        if classes is None:
            classes = sorted(set(labels))
        else:
            classes = checked_labels(classes, len(classes), column="classes")
            if len(set(classes)) < len(classes):
                raise DatasetError("a class is named twice", column="classes",
                                   fix="name each class once")
        if len(classes) < 2:
            raise InsufficientSamplesError(
                f"the support holds one class, {classes[0]!r}: every query would be predicted "
                "as it", file=file, column=column,
                fix="give support samples of at least two classes")
        counts = {c: 0 for c in classes}
        for position, (label, ok) in enumerate(zip(labels, support.usable.tolist(),
                                                   strict=True)):
            row = position + 1 if rows is None else rows[position]
            if label not in counts:
                raise InsufficientSamplesError(
                    f"support label {label!r} is not among the classes given", row=row,
                    column=column, fix="add it to `classes` or remove those samples")
            if not ok:
                raise ModalityError(
                    f"a support sample of class {label!r} carries none of the used "
                    "modalities; it would teach the classifier nothing", file=file, row=row,
                    fix=f"give it at least one of: {', '.join(modalities)}, or leave it out")
            counts[label] += 1
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise InsufficientSamplesError(
                f"classes without a support example: {', '.join(map(str, empty))}",
                file=file, fix="give at least one sample of each class, or leave the class "
                "out of `classes`")
        index = {c: k for k, c in enumerate(classes)}
        self.support_ = support.to(self.device)
        self.support_labels_ = torch.tensor([index[label] for label in labels],
                                            dtype=torch.long)
        self.run_, self.modalities_, self.classes_ = run, modalities, list(classes)
        # what embedded the support set, which `save` records (set_params may change the
        # parameters before the next fit)
        self.test_time_ = {key: getattr(self, key) for key in TEST_TIME_KEYS}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise RunError("the classifier has no support set yet",
                           fix="call fit(X, y) before predict")

    def decision_function(self, X: SampleSource) -> np.ndarray:
        """Logits ``[Q, classes]`` of each of the ``Q`` samples of ``X``."""
        self._check_fitted()
        return self._logits(self._read(X, self.run_, self.modalities_, labelled=False))

    def _logits(self, dataset: MultimodalDataset) -> np.ndarray:
        """Logits ``[Q, classes]`` of the samples of a dataset read by `_read`; a warning when
        balanced transduction assumes the ``Q`` samples spread evenly over the classes."""
        model = self.run_.model
        if len(dataset) >= len(self.classes_) and any(
                t.transduction and t.transduction_balance for t in settings_in_force(model)):
            warnings.warn(
                f"transduction_balance is on: the {len(dataset)} query samples are taken to be "
                f"spread evenly over the {len(self.classes_)} classes; where they are not, it "
                "raises the error (docs/test-time.md): pass transduction_balance=False "
                "(--no-transduction-balance)", stacklevel=3)
        query = self._encode(dataset, self.run_, self.modalities_)
        if not bool(query.usable.all()):
            first = int((~query.usable).nonzero()[0])
            raise ModalityError(
                f"{int((~query.usable).sum())} query sample(s) carry none of the used "
                f"modalities (the first is {dataset.ids[first]!r}); no prediction can be made "
                "for them", file=getattr(dataset.table, "file", None), row=dataset.rows()[first],
                fix=f"give each query sample at least one of: {', '.join(self.modalities_)}, "
                "or leave such samples out")
        comparable = self.comparable(query)
        if not bool(comparable.all()):
            first = int((~comparable).nonzero()[0])
            raise ModalityError(
                f"query sample {dataset.ids[first]!r} cannot be compared with the support "
                f"samples: {self.why_incomparable(query, first)}; it would get even "
                "probabilities, a guess", file=getattr(
                    dataset.table, "file", None), row=dataset.rows()[first],
                fix="give the query a modality every class's support samples carry, or give "
                "every class support samples with the query's")
        return self.decision_function_encoded(query)

    @torch.no_grad()
    def decision_function_encoded(self, query: EncodedSamples) -> np.ndarray:
        """Logits ``[Q, classes]`` of encoded query samples (from `encode`, each carrying a
        used modality)."""
        self._check_fitted()
        model = self.run_.model.eval()
        labels = self.support_labels_.to(self.device)
        query = self.embed(query).to(self.device)
        if self.support_.embeddings is not None:
            logits = model.logits(self.support_.embeddings, labels, query.embeddings,
                                  len(self.classes_))
        else:
            logits = model.adapt_predict(self.support_.batch, labels, query.batch,
                                         len(self.classes_))
        return logits.float().cpu().numpy()

    def comparable(self, query: EncodedSamples) -> torch.Tensor:
        """Bool ``[Q]``: whether the model can compare each encoded query sample with the
        support set, by the modalities they carry. A metric learner of late fusion compares
        each modality on its own, and a modality only where every class has a support sample
        carrying it; an ensemble needs a member that can compare them (its members see only
        their own modalities). A query it cannot compare gets no score at all: even
        probabilities, a guess that `predict` would show as its first class."""
        self._check_fitted()
        return _compares(self.run_.model, query.modalities, query.carried.cpu(),
                         *self._held(query.modalities))

    def why_incomparable(self, query: EncodedSamples, row: int) -> str:
        """Why query sample ``row`` cannot be compared with the support set (`comparable`),
        in words: what it carries, and what the support samples, the classes or (for an
        ensemble) each member lack."""
        model, carried = self.run_.model, query.carried_by(row)
        start = f"it carries {', '.join(carried)}, the support samples carry " \
                f"{', '.join(self.support_.carried_by())}"
        if not isinstance(model, EnsembleModel):
            return f"{start}: {self._why_not(model, carried)}"
        return f"{start}; no member of the ensemble can compare it: " + "; ".join(
            f"member {m + 1} ({', '.join(member.modalities)}): "
            f"{self._why_not(member, carried)}" for m, member in enumerate(model.members))

    def _why_not(self, model: Any, carried: list[str]) -> str:
        """Why ``model`` (a run's, or an ensemble member's) cannot compare a query carrying
        ``carried`` with the support set."""
        own = [name for name in carried if name in model.modalities]
        if not own:
            return "it takes none of the query's modalities"
        if not compares_per_modality(model):
            return "no support sample carries a modality it takes"
        by_class, gaps = self._class_carries(), []
        for name in [n for n in own if n in self.support_.modalities]:
            has = by_class[:, self.support_.modalities.index(name)].tolist()
            lacking = [repr(label) for label, held in zip(self.classes_, has, strict=True)
                       if not held]
            gaps.append(f"no support sample of {', '.join(lacking)} carries {name}")
        return ("late fusion compares a modality only where every class has a support sample "
                "carrying it" + (f" ({'; '.join(gaps)})" if gaps else ""))

    def _class_carries(self) -> torch.Tensor:
        """Bool ``[classes, M]`` over the support's modalities: whether some support sample of
        the class carries the modality."""
        return class_modality_counts(self.support_.carried.cpu(), self.support_labels_.cpu(),
                                     len(self.classes_)) > 0

    def _held(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool ``[M]`` each, over ``names``: the modalities some support sample carries, and
        those that every class has a support sample carrying."""
        by_class = self._class_carries()
        some, every = by_class.any(0).tolist(), by_class.all(0).tolist()
        position = {name: m for m, name in enumerate(self.support_.modalities)}
        return (torch.tensor([name in position and some[position[name]] for name in names]),
                torch.tensor([name in position and every[position[name]] for name in names]))

    @torch.no_grad()
    def support_scores(self, query: EncodedSamples) -> np.ndarray:
        """How near each encoded query sample is to each kept support sample, ``[Q, S]``
        (higher is nearer), in the order of ``support_labels_``.

        A learner that embeds once scores with its own rule, each support sample taken as a
        class of its own (for ProtoNet: minus the squared distance to the sample). A learner
        that adapts weights per task has no rule for single samples: the score is minus the
        squared distance between the unadapted network's embeddings (late fusion: the mean
        over the modalities both samples have).
        """
        self._check_fitted()
        model = self.run_.model.eval()
        query = self.embed(query).to(self.device)
        if self.support_.embeddings is not None:
            support = self.support_.embeddings
            own = torch.arange(len(support), device=self.device)
            return model.logits(support, own, query.embeddings, len(support)).float().cpu(
                ).numpy()
        support, query_z = model.embed(self.support_.batch), model.embed(query.batch)
        if support.late:
            both = query_z.present[:, None, :] & support.present[None, :, :]  # [Q, S, M]
            distance = ((query_z.z[:, None] - support.z[None]) ** 2).sum(-1)  # [Q, S, M]
            scores = -(distance * both).sum(-1) / both.sum(-1).clamp(min=1)
        else:
            scores = -torch.cdist(query_z.z, support.z) ** 2
        return scores.float().cpu().numpy()

    def predict_proba(self, X: SampleSource) -> np.ndarray:
        """Class probabilities ``[Q, classes]`` (softmax of the logits)."""
        return torch.softmax(torch.from_numpy(self.decision_function(X)), -1).numpy()

    def predict(self, X: SampleSource) -> list[Label]:
        """The predicted class label of each sample of ``X`` (a list, in ``X``'s order)."""
        return [self.classes_[k] for k in self.decision_function(X).argmax(1)]

    def score(self, X: SampleSource, y: Sequence[Label],
              sample_weight: Sequence[float] | None = None) -> float:
        """The accuracy of `predict` on ``X`` against the labels ``y`` (weighted by
        ``sample_weight`` when given), as scikit-learn's ``ClassifierMixin.score``; a label
        that is not among ``classes_`` counts as an error.

        Raises:
            DatasetError: ``y`` (or ``sample_weight``) does not give one valid value per
                sample of ``X``.
        """
        self._check_fitted()
        dataset = self._read(X, self.run_, self.modalities_, labelled=False)
        labels = checked_labels(y, len(dataset))
        predicted = self._logits(dataset).argmax(1)
        correct = np.array([self.classes_[k] == label for k, label in zip(predicted, labels,
                                                                           strict=True)],
                           dtype=np.float64)
        if sample_weight is None:
            return float(correct.mean())
        try:
            weights = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            weights = np.full(0, np.nan)
        if weights.shape != correct.shape or not np.isfinite(weights).all() or (
                weights < 0).any() or weights.sum() <= 0:
            raise DatasetError("sample_weight must hold one finite weight >= 0 per sample, "
                               "not all zero", column="sample_weight",
                               fix="give one weight per sample of X")
        return float((correct * weights).sum() / weights.sum())

    # -- saving and loading -----------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the run (config, preprocessor, weights) and the fitted support set to
        ``directory``, which `load` reads back, with the test-time settings and the
        modalities that embedded the support set (as they were at `fit`). The constructor's
        ``media_root`` is not written: pass it to `load` again.

        Raises:
            RunError: not fitted, or the classes are not strings (``support.json`` names
                classes as strings).
            OutputError: ``directory`` holds anything but an earlier `save`'s files (another
                run's, whose weights this would replace, or files of the user's).
        """
        self._check_fitted()
        if not all(isinstance(c, str) for c in self.classes_):
            raise RunError("only string class labels can be saved", column="classes",
                           fix="fit with string labels, e.g. y = [str(label) for label in y]")
        directory = Path(directory)
        source = self.run_.path
        if directory.resolve() != source.resolve():
            check_save_directory(directory)
        make_directory(directory)
        if directory.resolve() != source.resolve():
            if (source / MEMBERS_DIR).is_dir():  # an ensemble: its members' configs too
                shutil.rmtree(directory / MEMBERS_DIR, ignore_errors=True)
                shutil.copytree(source / MEMBERS_DIR, directory / MEMBERS_DIR)
            for name in (PREPROCESSOR_FILE, WEIGHTS_FILE, CONFIG_FILE):
                atomic_write(directory / name,
                             lambda tmp, src=source / name: shutil.copyfile(src, tmp))
        tensors = {"labels": self.support_labels_, **self.support_.tensors()}
        write_support(directory, tensors, classes=self.classes_,
                      modalities=self.support_.modalities, form=self.support_.form,
                      model=sha256_file(directory / WEIGHTS_FILE), test_time=self.test_time_,
                      used=self.modalities_)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu",
             modalities: Sequence[str] | None = None,
             media_root: str | os.PathLike[str] | None = None) -> FewShotClassifier:
        """Read a classifier written by `save` (fitted), or a plain run directory (unfitted:
        the run is loaded and checked now). Every file is read strictly: a missing, corrupt or
        inconsistent one is a `RunError` naming it and the key or tensor.

        Args:
            directory: what `save` wrote, or a run directory.
            device, modalities, media_root: as for the constructor; the test-time settings
                and (unless given, and then the same) the modalities are those that embedded
                the saved support set.

        Raises:
            ConfigError: keyed ``modalities``: other modalities than those that embedded the
                saved support set.
        """
        directory = Path(directory)
        if not (directory / SUPPORT_FILE).exists():
            if (directory / SUPPORT_META).exists():
                raise RunError(f"{SUPPORT_META} is here but {SUPPORT_FILE}, the support "
                               "set it describes, is missing", file=directory / SUPPORT_FILE,
                               fix="fit the classifier on its support set and save it again "
                               f"(or delete {SUPPORT_META} to load the run unfitted)")
            classifier = cls(directory, device=device, modalities=modalities,
                             media_root=media_root)
            classifier.loaded_run()
            return classifier
        meta = read_support_meta(directory / SUPPORT_META)
        used = meta.get("used")  # None: saved before they were kept
        if modalities is not None and used is not None and set(modalities) != set(used):
            raise ConfigError(
                f"the saved support set was embedded from {', '.join(used)}; its prototypes "
                f"mean nothing to queries of {', '.join(modalities)}",
                column="modalities", fix=f"load it without modalities, or with "
                f"modalities={used}; or fit a classifier of these modalities again")
        test_time = saved_test_time(directory / SUPPORT_META, meta)
        classifier = cls(directory, device=device, media_root=media_root,
                         modalities=modalities if modalities is not None else used,
                         **test_time)
        run = classifier.loaded_run()
        expected = "embeddings" if run.model.capabilities().embeds_once else "samples"
        if meta["form"] != expected:
            raise RunError(
                f"the saved support set holds {meta['form']}, but the run's learner "
                f"({run.config.learner}) needs {expected}",
                file=directory / SUPPORT_META, column="form",
                fix="fit this run's classifier on the support set again and save it")
        check_support_model(directory / SUPPORT_META, meta, run.path / WEIGHTS_FILE)
        width = run.model.backbone.fusion.out_dim if expected == "embeddings" else None
        tensors = read_support_tensors(directory / SUPPORT_FILE, meta, run.model.modalities,
                                       int(width) if width is not None else None)
        classifier.support_labels_ = tensors["labels"]
        classifier.support_ = EncodedSamples.from_tensors(
            tensors, meta["form"], meta["modalities"]).to(device)
        classifier.run_, classifier.modalities_ = run, classifier._used_modalities(run)
        classifier.classes_, classifier.test_time_ = meta["classes"], test_time
        return classifier


def _usable(batch: dict[str, ModalityBatch]) -> torch.Tensor:
    """bool ``[S]``: the sample has at least one modality of ``batch``."""
    return torch.stack([mb.present.to(torch.bool) for mb in batch.values()], 1).any(1)


def _missing_columns(dataset: MultimodalDataset, modality: str) -> list[str]:
    """The columns of ``modality`` the samples' table lacks."""
    spec = dataset.schema.modalities[modality]
    columns = spec.columns if spec.columns is not None else [spec.column]
    return [c for c in columns if c not in dataset.table.columns]


def _has_columns(dataset: MultimodalDataset, modality: str) -> bool:
    return not _missing_columns(dataset, modality)


def _any_column(dataset: MultimodalDataset, modality: str) -> bool:
    """True when the samples have a column of ``modality`` (one of a tabular modality's)."""
    spec = dataset.schema.modalities.get(modality)
    return spec is not None and any(c in dataset.table.columns for c in spec.source_columns())


def _compares(model: Any, names: list[str], carried: torch.Tensor, some: torch.Tensor,
              every: torch.Tensor) -> torch.Tensor:
    """Bool ``[Q]``: whether ``model`` (a run's model, or an ensemble's) can compare each query
    (``carried``: bool ``[Q, M]`` over ``names``) with support samples of which ``some`` carry
    a modality and, of ``every`` class, some carry it (bool ``[M]`` each): see
    `FewShotClassifier.comparable`."""
    if isinstance(model, EnsembleModel):
        votes = [_compares(member, names, carried, some, every) for member in model.members]
        return torch.stack(votes).any(0)
    own = torch.tensor([name in model.modalities for name in names], dtype=torch.bool)
    if compares_per_modality(model):
        return (carried & (every & own)).any(1)
    return (carried & own).any(1) & bool((some & own).any())
