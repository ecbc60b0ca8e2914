"""`FewShotClassifier`: a scikit-learn-style face on a meta-trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from metamodal.data.dataset import MultimodalDataset, load_dataset, load_sample_table
from metamodal.errors import InsufficientSamplesError, ModalityError, RunError
from metamodal.evaluate.protocol import embed_store
from metamodal.io import atomic_write, atomic_write_json
from metamodal.learners.embeddings import Embeddings
from metamodal.train.run import CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, Run, load_run

SUPPORT_FILE = "support.safetensors"
SUPPORT_META = "support.json"
SampleSource = str | Path | MultimodalDataset


class FewShotClassifier:
    """Classify new classes from a few labelled examples with a meta-trained run.

    ``fit(support)`` embeds the labelled support samples (any mix of the model's modalities,
    some may be missing) and keeps them; ``predict(query)`` / ``predict_proba(query)`` apply the
    run's few-shot head (e.g. ProtoNet's nearest prototype) against them. Support and query are
    sample tables in the dataset format (a ``.csv``/``.jsonl``/``.parquet`` file whose media
    paths are relative to the file, or a dataset directory), or a `MultimodalDataset`.

    Args:
        run: a run directory written by ``metamodal train``.
        device: where the model runs (``cpu``, ``cuda``).

    Attributes (after ``fit``):
        classes_: class labels, the column order of `predict_proba`.
        support_embeddings_: the embedded support set.
        support_labels_: long ``[S]`` class index of each support sample.

    Example:
        >>> clf = FewShotClassifier("runs/demo").fit("support.csv")  # doctest: +SKIP
        >>> clf.predict("query.csv")[:3]  # doctest: +SKIP
        ['heron', 'finch', 'heron']
    """

    def __init__(self, run: str | Path, *, device: str = "cpu") -> None:
        self.run = Path(run)
        self.device = device
        self._run: Run = load_run(self.run, device=device)

    @property
    def modalities(self) -> list[str]:
        """The modalities the model was trained on."""
        return list(self._run.model.modalities)

    def load_samples(self, source: SampleSource, *, labelled: bool = False) -> MultimodalDataset:
        """Read samples in the dataset format with the run's schema, checking modalities.

        Args:
            source: a sample table file, a dataset directory, or a `MultimodalDataset`.
            labelled: require the label column (as for a support set).

        Raises:
            ModalityError: the samples carry modalities the model never saw, or none of its.
        """
        if isinstance(source, MultimodalDataset):
            dataset = source
        else:
            path = Path(source)
            if path.is_dir():
                dataset = load_dataset(path)
            else:
                dataset = load_sample_table(path, self._run.schema, require_label=labelled)
        self._check_modalities(dataset)
        return dataset

    def _check_modalities(self, dataset: MultimodalDataset) -> None:
        known = set(self.modalities)
        unknown = [name for name in dataset.schema.modalities if name not in known
                   and name not in self._run.schema.modalities]
        usable = [name for name in self.modalities if name in dataset.schema.modalities
                  and _has_columns(dataset, name)]
        if unknown or not usable:
            where = dataset.table.file if hasattr(dataset, "table") else None
            what = (f"modalities {unknown} were never seen in training" if unknown
                    else "none of the model's modalities has a column in this table")
            raise ModalityError(
                what, file=where,
                fix=f"give samples with the model's modalities: {', '.join(self.modalities)}",
            )

    def _embed(self, dataset: MultimodalDataset) -> Embeddings:
        store = self._run.preprocessor.transform(dataset)
        indices = torch.arange(len(store))
        return embed_store(self._run.model, store, indices, device=self.device)

    def fit(self, support: SampleSource, classes: list[str] | None = None) -> FewShotClassifier:
        """Embed and keep the labelled support samples.

        Args:
            support: the labelled support samples (every sample needs a label).
            classes: the classes to predict, in order (default: sorted support labels). A class
                with no usable support sample raises `InsufficientSamplesError`.
        """
        dataset = self.load_samples(support, labelled=True)
        embeddings = self._embed(dataset)
        usable = embeddings.present.any(1)
        labels = list(dataset.labels)
        classes = sorted(set(labels)) if classes is None else list(classes)
        counts = {c: 0 for c in classes}
        for label, ok in zip(labels, usable.tolist(), strict=True):
            if label not in counts:
                raise InsufficientSamplesError(
                    f"support label {label!r} is not among the classes given", column="label",
                    fix="add it to `classes` or remove those samples")
            counts[label] += int(ok)
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise InsufficientSamplesError(
                f"classes without a usable support example: {', '.join(map(str, empty))}",
                file=getattr(dataset.table, "file", None),
                fix="give at least one sample with one of the model's modalities "
                f"({', '.join(self.modalities)}) for each class",
            )
        keep = torch.nonzero(usable).flatten()
        index = {c: k for k, c in enumerate(classes)}
        self.classes_ = classes
        self.support_embeddings_ = embeddings.index(keep)
        self.support_labels_ = torch.tensor([index[labels[i]] for i in keep.tolist()],
                                            dtype=torch.long)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise RunError("the classifier has no support set yet",
                           fix="call fit(support) before predict")

    @torch.no_grad()
    def decision_function(self, query: SampleSource) -> np.ndarray:
        """Head logits ``[Q, classes]`` of each query sample."""
        self._check_fitted()
        dataset = self.load_samples(query)
        embeddings = self._embed(dataset)
        logits = self._run.model.logits(
            self.support_embeddings_.to(self.device), self.support_labels_.to(self.device),
            embeddings, len(self.classes_),
        )
        return logits.float().cpu().numpy()

    def predict_proba(self, query: SampleSource) -> np.ndarray:
        """Class probabilities ``[Q, classes]`` (softmax of the head's logits)."""
        return torch.softmax(torch.from_numpy(self.decision_function(query)), -1).numpy()

    def predict(self, query: SampleSource) -> list[str]:
        """The predicted class label of each query sample."""
        return [self.classes_[k] for k in self.decision_function(query).argmax(1)]

    def save(self, directory: str | Path) -> Path:
        """Write the run (config, preprocessor, weights) and the fitted support set to
        ``directory``, which `load` reads back."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if directory.resolve() != self.run.resolve():
            for name in (CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE):
                source = self.run / name
                atomic_write(directory / name, lambda tmp, src=source: shutil.copyfile(src, tmp))
        tensors = {"z": self.support_embeddings_.z.contiguous().cpu(),
                   "present": self.support_embeddings_.present.contiguous().cpu(),
                   "labels": self.support_labels_}
        atomic_write(directory / SUPPORT_FILE, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_json(directory / SUPPORT_META, {
            "classes": self.classes_, "modalities": self.support_embeddings_.modalities})
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> FewShotClassifier:
        """Read a classifier written by `save` (or an unfitted one from a plain run dir)."""
        classifier = cls(directory, device=device)
        directory = Path(directory)
        if (directory / SUPPORT_FILE).exists():
            try:
                tensors = load_file(str(directory / SUPPORT_FILE))
                meta = json.loads((directory / SUPPORT_META).read_text())
            except (OSError, ValueError) as error:
                raise RunError(f"saved support set is corrupt ({error})",
                               file=directory / SUPPORT_FILE, fix="fit and save again") from None
            classifier.classes_ = meta["classes"]
            classifier.support_embeddings_ = Embeddings(
                tensors["z"].to(device), tensors["present"].to(device),
                modalities=meta["modalities"])
            classifier.support_labels_ = tensors["labels"]
        return classifier


def _has_columns(dataset: MultimodalDataset, modality: str) -> bool:
    spec = dataset.schema.modalities[modality]
    columns = spec.columns if spec.kind == "tabular" else [spec.column]
    return all(c in dataset.table.columns for c in columns)
