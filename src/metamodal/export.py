"""A run's encoders and fusion as a standalone graph: ONNX or TorchScript (``metamodal export``).

`EmbeddingGraph` wraps a `Backbone` in a module whose ``forward`` takes flat tensors (per
modality ``NAME.values``, ``NAME.present`` and, for the kinds with lengths, ``NAME.lengths``)
and returns the embeddings a prototype rule compares: ``embedding`` (``[B, D]``, or ``[B, M,
D]`` under late fusion) and ``present`` (bool ``[B, M]``). `export_graph` traces it with
example inputs that have an absent row in every modality (so the general, masking path of
every encoder and fusion is the one recorded) and writes ``model.onnx`` (with
``torch.onnx.export``'s TorchScript-based exporter, dynamic batch and length axes) or
``model.pt`` (``torch.jit.trace``). `describe` writes what the graph cannot hold: the
preprocessing each input needs, and the rule that turns embeddings into class scores.

Encoders whose graph cannot be traced are listed in `UNSUPPORTED` with the reason; asking to
export one is a `ConfigError` that names the modality and the fix (``--modalities`` without
it). A modality with a frozen pretrained encoder is decoded into features by the
preprocessor, outside the model: it exports only with ``features=True``, as its adapter over
precomputed features.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder
from metamodal.errors import ConfigError
from metamodal.model.backbone import Backbone

FORMATS = ("onnx", "torchscript")
"""The formats `export_graph` writes."""

DEFAULT_OPSET = 17
"""The ONNX opset written when none is asked for."""

TOLERANCE = 1e-4
"""The largest absolute difference between the exported graph's embeddings and PyTorch's that
the tests accept (measured: about 1e-6 in float32)."""

LENGTH_AXES = {"text": 1, "audio": 2, "sequence": 1}
"""Kinds whose batches carry ``lengths``, and the axis of ``values`` the lengths count."""

UNSUPPORTED: dict[str, dict[str, str]] = {
    "onnx": {
        "gru": "it runs a packed variable-length GRU (pack_padded_sequence), which neither "
               "ONNX exporter of torch converts (the TorchScript-based one fails on the packed "
               "sequence, torch.export on its data-dependent lengths)",
        "trajectory": "it resamples each stroke along its path with torch.searchsorted, which "
                      "has no ONNX operator",
        "stroke-set": "it cuts the strokes apart and resamples them with torch.searchsorted, "
                      "which has no ONNX operator",
        "stroke-image": "it resamples each stroke along its path with torch.searchsorted, "
                        "which has no ONNX operator",
    },
    "torchscript": {},
}
"""Format -> encoder name -> why that encoder's graph does not export in that format (every
registered encoder not listed exports, checked by the tests to `TOLERANCE`)."""


@dataclass
class GraphInput:
    """One input tensor of the exported graph.

    Args:
        name: ``MODALITY.values``, ``MODALITY.present`` or ``MODALITY.lengths``.
        dtype: ``float32``, ``int64`` or ``bool``.
        shape: the axes: an int for a fixed size, a name (``batch``, ``MODALITY.length``)
            for a dynamic one.
    """

    name: str
    dtype: str
    shape: list[int | str]

    def to_dict(self) -> dict[str, Any]:
        """The input as JSON-able data."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class Layout:
    """The ``values`` tensor of one modality as the preprocessor makes it.

    Args:
        shape: the axes after the batch axis (the padded length for a length axis).
        dtype: ``float32`` or ``int64`` (token ids).
        length_axis: the axis of ``values`` (counting the batch axis) that ``lengths``
            counts, or None for a kind without lengths.
    """

    shape: list[int]
    dtype: torch.dtype
    length_axis: int | None = None


def input_layout(name: str, kind: str, info: Mapping[str, Any]) -> Layout:
    """The `Layout` of modality ``name`` of ``kind``, from its loader's ``input_info``
    (see `metamodal.data.batch` for the shapes of each kind).

    Raises:
        ConfigError: the kind is not one the exporter knows.

    Example:
        >>> input_layout("track", "sequence", {"features": 2, "max_length": 16})
        Layout(shape=[16, 2], dtype=torch.float32, length_axis=1)
    """
    if "pretrained" in info:  # frozen features, decoded by the preprocessor
        return Layout([int(info["features"])], torch.float32)
    if kind == "image":
        return Layout([int(info["channels"]), int(info["height"]), int(info["width"])],
                      torch.float32)
    if kind == "text":
        return Layout([int(info["max_length"])], torch.long, 1)
    if kind == "audio":
        return Layout([int(info["n_mels"]), int(info["max_frames"])], torch.float32, 2)
    if kind == "sequence":
        return Layout([int(info["max_length"]), int(info["features"])], torch.float32, 1)
    if kind == "tabular":
        return Layout([int(info["features"])], torch.float32)
    if kind == "video":
        return Layout([int(info["frames"]), int(info["channels"]), int(info["height"]),
                       int(info["width"])], torch.float32)
    raise ConfigError(f"modality {name!r} is of kind {kind!r}, which export does not know",
                      column=name, fix="export the other modalities with --modalities")


TRACE_MAX_LENGTH = 1024
"""The longest length axis the example inputs have: the exported length axes are dynamic, so
a loader's padded length of up to a million steps is traced (and checked) at this one."""


def example_inputs(graph: EmbeddingGraph, batch: int = 3, seed: int = 0) -> list[Tensor]:
    """Inputs to trace ``graph`` with: ``batch`` (>= 2) samples of random values at the
    padded sizes (a length axis at most `TRACE_MAX_LENGTH`), where the second sample lacks
    every modality and lengths differ, so that the general path (masking absent rows,
    padding) is the one traced.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {
        ...     "features": 3}}, dim=8)
        >>> [tuple(t.shape) for t in example_inputs(EmbeddingGraph(model.backbone,
        ...                                                        {"m": "tabular"}))]
        [(3, 3), (3,)]
    """
    generator = torch.Generator().manual_seed(seed)
    inputs: list[Tensor] = []
    present = torch.ones(batch, dtype=torch.bool)
    present[1] = False
    for name in graph.modalities:
        layout = graph.layouts[name]
        shape = [batch, *layout.shape]
        if layout.length_axis is not None:
            shape[layout.length_axis] = min(shape[layout.length_axis], TRACE_MAX_LENGTH)
        if layout.dtype == torch.long:
            vocab = int(graph.backbone.encoders[name].input_info.get("vocab_size", 2))
            values = torch.randint(1, max(vocab, 2), shape, generator=generator)
        else:
            values = torch.randn(shape, generator=generator)
        values[1] = 0
        inputs += [values, present]
        if layout.length_axis is not None:
            size = shape[layout.length_axis]
            lengths = torch.tensor([size, 0] + [max(1, size // 2)] * (batch - 2))
            inputs.append(lengths)
    return inputs


def graph_inputs(graph: EmbeddingGraph) -> list[GraphInput]:
    """The inputs of ``graph`` with their dtypes and axes (dynamic ones by name)."""
    found = []
    for name in graph.modalities:
        layout = graph.layouts[name]
        shape: list[int | str] = ["batch", *layout.shape]
        if layout.length_axis is not None:
            shape[layout.length_axis] = f"{name}.length"
        found.append(GraphInput(f"{name}.values", _dtype_name(layout.dtype), shape))
        found.append(GraphInput(f"{name}.present", "bool", ["batch"]))
        if layout.length_axis is not None:
            found.append(GraphInput(f"{name}.lengths", "int64", ["batch"]))
    return found


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


OUTPUT_NAMES = ("embedding", "present")
"""The outputs of the exported graph."""


def write_onnx(graph: EmbeddingGraph, path: Any, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``graph`` and write it as one ONNX file at ``path`` (dynamic batch and length
    axes), with the TorchScript-based exporter of ``torch.onnx.export``."""
    dynamic: dict[str, dict[int, str]] = {}
    for item in graph_inputs(graph):
        dynamic[item.name] = {axis: size for axis, size in enumerate(item.shape)
                              if isinstance(size, str)}
    dynamic["embedding"] = {0: "batch"}
    dynamic["present"] = {0: "batch"}
    # the exporter's notes on constant folding and tracing concern its own optimisation, not
    # the result, which the check compares with PyTorch
    with torch.no_grad(), _no_fastpath(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(graph, tuple(example_inputs(graph)), str(path),
                          input_names=graph.input_names(), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, **_torchscript_exporter())


def _torchscript_exporter() -> dict[str, bool]:
    """The option of ``torch.onnx.export`` that picks its TorchScript-based exporter where it
    offers another (``dynamo``, torch 2.5 on); before that it is the only one."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters \
        else {}


class _no_fastpath:
    """Turn off the fused inference kernels of ``nn.TransformerEncoderLayer`` (the attention
    fusion), which the ONNX exporter does not know, while exporting."""

    def __enter__(self) -> None:
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.backends.mha.set_fastpath_enabled(self.before)


def write_torchscript(graph: EmbeddingGraph, path: Any) -> None:
    """Trace ``graph`` with ``torch.jit.trace`` and save it at ``path``."""
    with torch.no_grad():
        traced = torch.jit.trace(graph, tuple(example_inputs(graph)), check_trace=False)
    torch.jit.save(traced, str(path))


class EmbeddingGraph(nn.Module):
    """A `Backbone` as a function of flat tensors: what `export_graph` traces.

    The backbone is copied, put in eval mode, and every `Encoder` encodes all rows
    (``skip_absent = False``; absent rows are zeroed afterwards), so that the graph has no
    data-dependent row selection. Modalities of the backbone that are not exported count as
    absent for every sample, as in `Backbone.forward`.

    Args:
        backbone: the trained encoders and fusion.
        kinds: modality name -> kind, for the exported modalities (a subset of the
            backbone's, in any order; the graph keeps the backbone's order).

    Shapes:
        ``forward(*inputs)`` takes, per exported modality in `modalities` order, ``values``
        ``[B, ...]``, bool ``present`` ``[B]`` and, for text, audio and sequence, long
        ``lengths`` ``[B]``; it returns ``embedding`` ``[B, D]`` (late fusion: ``[B, M, D]``)
        and bool ``present`` ``[B, M]`` (M: every modality of the backbone).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {
        ...     "features": 3}}, dim=8, fusion="mean")
        >>> graph = EmbeddingGraph(model.backbone, {"m": "tabular"})
        >>> z, present = graph(torch.randn(2, 3), torch.tensor([True, False]))
        >>> z.shape, present.tolist()
        (torch.Size([2, 8]), [[True], [False]])
    """

    def __init__(self, backbone: Backbone, kinds: Mapping[str, str]) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).eval()
        for module in self.backbone.modules():
            if isinstance(module, Encoder):
                module.skip_absent = False
        self.modalities = [name for name in self.backbone.modalities if name in kinds]
        self.kinds = {name: kinds[name] for name in self.modalities}
        self.layouts = {name: input_layout(name, kinds[name],
                                           self.backbone.encoders[name].input_info)
                        for name in self.modalities}
        self.eval()

    def train(self, mode: bool = True) -> EmbeddingGraph:
        """Stay in eval mode (exporters switch modes and back): the graph is inference only."""
        return super().train(False)

    def input_names(self) -> list[str]:
        """The names of ``forward``'s inputs, in order."""
        names = []
        for name in self.modalities:
            names += [f"{name}.values", f"{name}.present"]
            if self.layouts[name].length_axis is not None:
                names.append(f"{name}.lengths")
        return names

    def batch(self, inputs: Sequence[Tensor]) -> dict[str, ModalityBatch]:
        """The flat ``inputs`` (in `input_names` order) as a batch of `ModalityBatch`es."""
        batch: dict[str, ModalityBatch] = {}
        position = 0
        for name in self.modalities:
            values, present = inputs[position], inputs[position + 1]
            position += 2
            lengths = None
            if self.layouts[name].length_axis is not None:
                lengths = inputs[position]
                position += 1
            batch[name] = ModalityBatch(values, present.to(torch.bool), lengths)
        return batch

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``embedding`` ``[B, D]`` (late fusion ``[B, M, D]``) and bool ``present``
        ``[B, M]`` of the flat inputs (see the class docstring)."""
        batch = self.batch(inputs)
        parts: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        for name, mb in batch.items():
            out = self.backbone.encoders[name](mb)
            parts[name] = torch.where(mb.present.unsqueeze(1), out,
                                      torch.zeros((), dtype=out.dtype))
            present[name] = mb.present
        reference = next(iter(batch))
        for name in self.backbone.modalities:  # not exported: absent, sized from the inputs
            if name not in parts:
                parts[name] = torch.zeros_like(parts[reference])
                present[name] = torch.zeros_like(present[reference])
        embeddings = self.backbone.fuse(parts, present)
        return embeddings.z, embeddings.present


PREPROCESSING = {
    "image": "decode, convert to the channels, resize to size (height, width), scale to 0..1, "
             "then (normalize) subtract mean and divide by std per channel; values [C, H, W]",
    "text": "tokenise with tokenizer (words: NFKC, lower-case, regex "
            "\\w+(?:['\u2019]\\w+)*|[^\\w\\s]; chars: each character, a run of white space "
            "as one space), keep max_length tokens, map each to its id (ids: vocab[i] has id "
            "i + first_word, a token not in vocab has id unknown, padding is 0; an empty text "
            "is [unknown]); lengths = tokens kept",
    "audio": "decode to mono at sample_rate, keep max_seconds, log-mel spectrogram (n_fft, "
             "hop_length, n_mels, f_min, f_max), then (normalize) subtract mean, divide by "
             "std; values [n_mels, frames], lengths = frames",
    "sequence": "read [T, D], keep max_length steps, then (normalize) subtract mean and divide "
                "by std per feature; values [T, features], lengths = T",
    "tabular": "read the columns in order; an empty cell becomes the column mean; then "
               "(normalize) subtract mean and divide by std per column; values [features]",
    "video": "decode frames evenly spaced over the clip, resize to size, scale to 0..1; "
             "values [frames, C, H, W]",
    "pretrained": "features of the frozen pretrained encoder (run outside the graph, see "
                  "metamodal.encoders.pretrained), then (normalize) subtract mean and divide "
                  "by std; values [features]",
}
"""What each kind's loader does to a raw cell, in words; the numbers are in the loader's
fitted state, which the sidecar holds in full (``preprocessing.MODALITY.state``)."""


def prototype_rule(model: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """The rule that turns the graph's embeddings into class scores, as the model's learner
    computes it, with the learned numbers it needs (JSON-able).

    ``reproduced`` says whether the rule below, applied to the graph's outputs, gives the
    learner's logits exactly (ProtoNet); for other learners the text says what the graph
    leaves out.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {
        ...     "features": 3}}, dim=8, fusion="mean")
        >>> rule = prototype_rule(model, ["m"])
        >>> rule["reproduced"], rule["temperature"]
        (True, 1.0)
    """
    learner = model.learner
    name = (model.spec or {}).get("learner", type(learner).__name__)
    rule: dict[str, Any] = {"learner": name, "late_fusion": model.late}
    absent = ("a support sample whose present row is all False (no modality) is left out of "
              "its class, unless its class has no other support sample")
    if name == "protonet":
        temperature = float(learner.log_temperature.exp())
        rule.update(reproduced=True, temperature=temperature, text=(
            "class prototype = mean of the embeddings of its support samples; logit of query "
            "q for class k = -||embedding[q] - prototype[k]||^2 / temperature; prediction = "
            f"argmax, probabilities = softmax of the logits; {absent}"))
    else:
        adapts = not model.capabilities().embeds_once
        rule.update(reproduced=False, text=(
            f"the learner {name!r} "
            + ("adapts the network's weights to each task (gradient steps on the support); "
               "the exported graph is the meta-learned network before adaptation and does "
               "not reproduce that adaptation" if adapts else
               "compares embeddings with its own head (learned parameters outside the "
               "backbone); the exported graph gives the embeddings, not the head")
            + "; for a rule that holds, class prototype = mean of its support embeddings, "
              "logit = -squared Euclidean distance (nearest prototype)"))
    if model.late:
        fusion = model.backbone.fusion
        order = list(model.modalities)
        rule["modalities"] = order
        rule["mix"] = [float(v) for v in fusion.mix.detach()]
        rule["late_text"] = (
            "late fusion: embedding is [B, M, D], one row per modality in `modalities` order. "
            "For each modality m that every class has in some support sample: prototypes "
            "from the support samples that have m, logits[q, m, k] as above from "
            "embedding[:, m]. valid[q, m] = present[q, m] and m is usable. Final logit[q, k] "
            "= sum over valid m of w[q, m] * logits[q, m, k], w[q] = softmax of `mix` over "
            "the valid m of q (zero logits when q has none).")
    settings = {k: v for k, v in asdict(model.test_time).items() if v}
    if settings:  # the run's test-time settings act outside the graph
        rule["reproduced"] = False
        rule["test_time"] = settings
        rule["test_time_text"] = (
            "the run evaluates and predicts with test-time settings the graph leaves out ("
            + ", ".join(f"{k} = {v}" for k, v in settings.items())
            + "; see metamodal.model.test_time): augmented copies averaged into each "
            "embedding (tta), soft k-means steps refining the prototypes with the queries "
            "(transduction, transduction_balance), per-query or per-class weights in late "
            "fusion's mix (fusion_confidence, fusion_reliability); the rule above is the "
            "model without them")
    rule["exported_modalities"] = list(modalities)
    return rule


def sidecar(run: Any, graph: EmbeddingGraph, *, format: str, opset: int | None,
            model_file: str) -> dict[str, Any]:
    """The sidecar JSON of an exported graph: format, inputs, outputs, preprocessing per
    modality (the loader's description and full fitted state), embedding size and the
    prototype rule (`prototype_rule`)."""
    state = run.preprocessor.state_dict()
    preprocessing = {}
    for name in graph.modalities:
        loader_state = state["loaders"][name]
        pretrained = isinstance(loader_state, Mapping) and loader_state.get("loader")
        kind = graph.kinds[name]
        preprocessing[name] = {
            "kind": kind, "encoder": (run.model.spec or {}).get("encoders", {}).get(name),
            "columns": state["specs"][name].get("columns") or state["specs"][name].get(
                "column"),
            "steps": PREPROCESSING["pretrained" if pretrained else kind],
            "state": loader_state,
        }
        if kind == "text" and not pretrained:
            from metamodal.data.loaders.text import FIRST_WORD_ID, PAD_ID, UNKNOWN_ID

            preprocessing[name]["ids"] = {"padding": PAD_ID, "unknown": UNKNOWN_ID,
                                          "first_word": FIRST_WORD_ID}
    z, _ = graph(*example_inputs(graph, batch=2))
    return {
        "format": format,
        "opset": opset,
        "model_file": model_file,
        "metamodal_version": _version(),
        "inputs": [item.to_dict() for item in graph_inputs(graph)],
        "outputs": [
            {"name": "embedding", "dtype": "float32", "shape": ["batch", *z.shape[1:]]},
            {"name": "present", "dtype": "bool", "shape": ["batch", len(graph.backbone.modalities)],
             "modalities": list(graph.backbone.modalities)},
        ],
        "absent": "a sample without a modality: present False, values and lengths zero "
                  "(padded to the sizes above); a modality left out of the export is absent "
                  "for every sample",
        "embedding_dim": int(z.shape[-1]),
        "modalities": list(graph.modalities),
        "preprocessing": preprocessing,
        "rule": prototype_rule(run.model, graph.modalities),
        "tolerance": TOLERANCE,
    }


def _version() -> str:
    from metamodal.version import __version__

    return __version__


def run_exported(path: Any, format: str, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Run an exported file on named inputs (``NAME.values``, ...): with onnxruntime for
    ``onnx``, ``torch.jit.load`` for ``torchscript``; returns ``(embedding, present)``.

    The TorchScript module takes the inputs positionally in the sidecar's ``inputs`` order;
    ``inputs`` must hold them in that order.
    """
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = {item.name for item in session.get_inputs()}
        feed = {name: tensor.numpy() for name, tensor in inputs.items() if name in wanted}
        z, present = session.run(list(OUTPUT_NAMES), feed)
        return torch.from_numpy(z), torch.from_numpy(present)
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        z, present = module(*inputs.values())
    return z, present


def check(graph: EmbeddingGraph, path: Any, format: str, reference: nn.Module | None = None,
          batch: int = 5) -> float:
    """The largest absolute difference between the embeddings of the exported file at
    ``path`` and of ``reference`` (the original `Backbone`; default ``graph``'s copy) in
    PyTorch, on example inputs other than those traced (another batch size, shorter padding,
    other lengths, an absent row).

    Raises:
        RunError: the presence masks differ (the exported graph is wrong, not imprecise).
    """
    from metamodal.errors import RunError

    inputs = example_inputs(graph, batch=batch, seed=1)
    position = 0
    for name in graph.modalities:  # shorter padding than traced, lengths within it
        axis = graph.layouts[name].length_axis
        step = 3 if axis is not None else 2
        if axis is not None:
            size = max(1, inputs[position].shape[axis] - 2)
            inputs[position] = inputs[position].narrow(axis, 0, size).contiguous()
            inputs[position + 2] = inputs[position + 2].clamp(max=size)
            inputs[position + 2][-1] = 1
        position += step
    named = dict(zip(graph.input_names(), inputs, strict=True))
    z, present = run_exported(path, format, named)
    with torch.no_grad():
        expected = (reference or graph.backbone)(graph.batch(inputs))
    if not torch.equal(present.to(torch.bool), expected.present):
        raise RunError("the exported graph's presence mask differs from PyTorch's", file=path,
                       fix="report this as a bug of metamodal export")
    return float((z - expected.z).abs().max())


def read_sidecar(path: Any) -> dict[str, Any]:
    """The sidecar JSON of an exported model file (``model.onnx`` -> ``model.json``).

    Raises:
        RunError: it is missing or not JSON.
    """
    import json
    from pathlib import Path

    from metamodal.errors import RunError

    side = Path(path).with_suffix(".json")
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read the export sidecar ({error})", file=side,
                       fix="export again with metamodal export") from None
