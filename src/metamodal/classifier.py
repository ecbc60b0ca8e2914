"""`FewShotClassifier`: a scikit-learn-style face on a meta-trained run."""


from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metamodal.data.batch import ModalityBatch, batch_to, index_batch
from metamodal.data.dataset import MultimodalDataset, load_dataset, load_sample_table
from metamodal.errors import InsufficientSamplesError, ModalityError, RunError
from metamodal.io import ParseError, atomic_write, atomic_write_json, loads_json
from metamodal.learners.embeddings import Embeddings
from metamodal.runs.directory import CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, Run, load_run

SUPPORT_FILE = "support.safetensors"
SUPPORT_META = "support.json"
SampleSource = str | Path | MultimodalDataset


class FewShotClassifier:
    """Classify new classes from a few labelled examples with a meta-trained run.

    ``fit(support)`` keeps what the run's learner needs to adapt to the labelled support
    samples (any mix of the model's modalities, some may be missing): their embeddings for a
    metric learner (e.g. ProtoNet's prototypes come from them), the decoded samples themselves
    for a learner that adapts the network's weights (the MAML family);
    ``predict(query)`` / ``predict_proba(query)`` adapt and classify. Support and query are
    sample tables in the dataset format (a ``.csv``/``.jsonl``/``.parquet`` file whose media
    paths are relative to the file, or a dataset directory), or a `MultimodalDataset`.

    Args:
        run: a run directory written by ``metamodal train``.
        device: where the model runs (``cpu``, ``cuda``).

    Attributes (after ``fit``):
        classes_: class labels, the column order of `predict_proba`.
        support_embeddings_: the embedded support set (metric learners), else None.
        support_batch_: modality name -> `ModalityBatch` of the decoded support samples
            (learners that adapt weights), else None.
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

    def _decode(self, dataset: MultimodalDataset) -> dict[str, ModalityBatch]:
        """The samples decoded with the run's fitted preprocessor, as one batch of the model's
        modalities (those the table lacks are absent)."""
        declared = [m for m in self._run.preprocessor.modalities
                    if m in dataset.schema.modalities]
        store = self._run.preprocessor.transform(dataset, modalities=declared)
        names = [m for m in self.modalities if m in store.modalities]
        return store.batch(torch.arange(len(store)), names)

    def _embed(self, batch: dict[str, ModalityBatch], chunk: int = 512) -> Embeddings:
        """Embeddings of ``batch`` in chunks of ``chunk`` samples, without gradients."""
        model = self._run.model.eval()
        size = len(next(iter(batch.values())))
        with torch.no_grad():
            return Embeddings.cat([
                model.embed(batch_to(index_batch(batch, rows), self.device)).detach()
                for rows in torch.arange(size).split(chunk)])

    def fit(self, support: SampleSource, classes: list[str] | None = None) -> FewShotClassifier:
        """Keep the labelled support samples (embedded, or decoded; see the class docstring).

        Args:
            support: the labelled support samples (every sample needs a label).
            classes: the classes to predict, in order (default: sorted support labels). A class
                with no usable support sample raises `InsufficientSamplesError`.
        """
        dataset = self.load_samples(support, labelled=True)
        batch = self._decode(dataset)
        usable = torch.stack([mb.present.to(torch.bool) for mb in batch.values()], 1).any(1)
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
        kept = index_batch(batch, keep)
        self.classes_ = classes
        if self._run.model.capabilities().embeds_once:
            self.support_embeddings_, self.support_batch_ = self._embed(kept), None
        else:
            self.support_embeddings_, self.support_batch_ = None, kept
        self.support_labels_ = torch.tensor([index[labels[i]] for i in keep.tolist()],
                                            dtype=torch.long)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise RunError("the classifier has no support set yet",
                           fix="call fit(support) before predict")

    @torch.no_grad()
    def decision_function(self, query: SampleSource) -> np.ndarray:
        """Logits ``[Q, classes]`` of each query sample."""
        self._check_fitted()
        dataset = self.load_samples(query)
        batch = self._decode(dataset)
        usable = torch.stack([mb.present.to(torch.bool) for mb in batch.values()], 1).any(1)
        if not bool(usable.all()):
            first = int((~usable).nonzero()[0])
            raise ModalityError(
                f"{int((~usable).sum())} query sample(s) carry none of the model's modalities "
                f"(the first is {dataset.ids[first]!r}); no prediction can be made for them",
                file=getattr(dataset.table, "file", None), row=dataset.rows()[first],
                fix=f"give each query sample at least one of: {', '.join(self.modalities)}, "
                "or leave such samples out")
        model = self._run.model.eval()
        labels = self.support_labels_.to(self.device)
        if self.support_batch_ is None:
            logits = model.logits(self.support_embeddings_.to(self.device), labels,
                                  self._embed(batch), len(self.classes_))
        else:
            logits = model.adapt_predict(batch_to(self.support_batch_, self.device), labels,
                                         batch_to(batch, self.device), len(self.classes_))
        return logits.float().cpu().numpy()

    def predict_proba(self, query: SampleSource) -> np.ndarray:
        """Class probabilities ``[Q, classes]`` (softmax of the logits)."""
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
        tensors = {"labels": self.support_labels_.contiguous().cpu()}
        if self.support_batch_ is None:
            form = "embeddings"
            tensors["z"] = self.support_embeddings_.z.contiguous().cpu()
            tensors["present"] = self.support_embeddings_.present.contiguous().cpu()
            modalities = self.support_embeddings_.modalities
        else:
            form = "samples"
            modalities = list(self.support_batch_)
            for name, mb in self.support_batch_.items():
                tensors[f"{name}.values"] = mb.values.contiguous().cpu()
                tensors[f"{name}.present"] = mb.present.contiguous().cpu()
                if mb.lengths is not None:
                    tensors[f"{name}.lengths"] = mb.lengths.contiguous().cpu()
        atomic_write(directory / SUPPORT_FILE, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_json(directory / SUPPORT_META, {
            "classes": self.classes_, "modalities": modalities, "form": form})
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> FewShotClassifier:
        """Read a classifier written by `save` (or an unfitted one from a plain run dir)."""
        classifier = cls(directory, device=device)
        directory = Path(directory)
        if not (directory / SUPPORT_FILE).exists():
            return classifier
        meta = _read_support_meta(directory / SUPPORT_META)
        expected = ("embeddings" if classifier._run.model.capabilities().embeds_once
                    else "samples")
        if meta["form"] != expected:
            raise RunError(
                f"the saved support set holds {meta['form']}, but the run's learner "
                f"({classifier._run.config.learner}) needs {expected}",
                file=directory / SUPPORT_META, column="form",
                fix="fit this run's classifier on the support set again and save it")
        tensors = _read_support_tensors(directory / SUPPORT_FILE, meta,
                                        classifier._run.model.modalities)
        classifier.classes_ = meta["classes"]
        classifier.support_labels_ = tensors["labels"]
        if meta["form"] == "embeddings":
            classifier.support_batch_ = None
            classifier.support_embeddings_ = Embeddings(
                tensors["z"].to(device), tensors["present"].to(device),
                modalities=meta["modalities"])
        else:
            classifier.support_embeddings_ = None
            classifier.support_batch_ = {
                name: ModalityBatch(tensors[f"{name}.values"], tensors[f"{name}.present"],
                                    tensors.get(f"{name}.lengths"))
                for name in meta["modalities"]}
        return classifier


def _read_support_meta(path: Path) -> dict:
    """``support.json``, checked: ``classes`` a non-empty list of unique strings,
    ``modalities`` a list of strings, ``form`` ``embeddings`` or ``samples``."""
    fix = "fit the classifier on its support set and save it again"
    try:
        meta = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError("support.json is missing beside support.safetensors", file=path,
                       fix=fix) from None
    except (ParseError, OSError, UnicodeDecodeError) as error:
        raise RunError(f"support.json is corrupt ({error})", file=path, fix=fix) from None
    if not isinstance(meta, dict):
        raise RunError("support.json must hold an object", file=path, fix=fix)
    meta.setdefault("form", "embeddings")
    classes, modalities = meta.get("classes"), meta.get("modalities")
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes)):
        raise RunError("`classes` must be a non-empty list of distinct class names", file=path,
                       column="classes", fix=fix)
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise RunError("`modalities` must be a list of modality names", file=path,
                       column="modalities", fix=fix)
    if meta["form"] not in ("embeddings", "samples"):
        raise RunError(f"unknown form {meta['form']!r}", file=path, column="form", fix=fix)
    return meta


def _read_support_tensors(path: Path, meta: dict, model_modalities: list[str]) -> dict:
    """``support.safetensors``, checked against ``support.json``: every tensor present, of
    consistent sizes, finite, labels within the classes; `RunError` naming the tensor."""
    fix = "fit the classifier on its support set and save it again"
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise RunError(f"support.safetensors is corrupt ({error})", file=path,
                       fix=fix) from None

    def need(key: str, dims: int | None = None) -> torch.Tensor:
        if key not in tensors:
            raise RunError("a tensor is missing", file=path, column=key, fix=fix)
        tensor = tensors[key]
        if dims is not None and tensor.dim() != dims:
            raise RunError(f"tensor has {tensor.dim()} dimensions, {dims} expected", file=path,
                           column=key, fix=fix)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunError("tensor holds NaN or infinite values", file=path, column=key,
                           fix=fix)
        if tensor.shape[0] != size:
            raise RunError(f"tensor has {tensor.shape[0]} rows, the labels {size}", file=path,
                           column=key, fix=fix)
        return tensor

    size = -1
    labels = tensors.get("labels")
    if labels is None or labels.dim() != 1 or labels.dtype != torch.long or len(labels) == 0:
        raise RunError("`labels` must be a non-empty 1-D int64 tensor", file=path,
                       column="labels", fix=fix)
    size = len(labels)
    if int(labels.min()) < 0 or int(labels.max()) >= len(meta["classes"]):
        raise RunError(f"labels must lie in 0..{len(meta['classes']) - 1}", file=path,
                       column="labels", fix=fix)
    unknown = [m for m in meta["modalities"] if m not in model_modalities]
    if unknown:
        raise RunError(f"modalities {unknown} are not the model's", file=path.with_name(
            SUPPORT_META), column="modalities", fix=fix)
    if meta["form"] == "embeddings":
        z = need("z")
        present = need("present", 2)
        if z.dim() not in (2, 3) or present.dtype != torch.bool:
            raise RunError("`z` must be [S, D] or [S, M, D] with a bool `present`", file=path,
                           column="z", fix=fix)
    else:
        for name in meta["modalities"]:
            need(f"{name}.values")
            if need(f"{name}.present", 1).dtype != torch.bool:
                raise RunError("tensor must be bool", file=path, column=f"{name}.present",
                               fix=fix)
            if f"{name}.lengths" in tensors:
                need(f"{name}.lengths", 1)
    return tensors


def _has_columns(dataset: MultimodalDataset, modality: str) -> bool:
    spec = dataset.schema.modalities[modality]
    columns = spec.columns if spec.kind == "tabular" else [spec.column]
    return all(c in dataset.table.columns for c in columns)
