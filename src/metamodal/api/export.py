"""The verb that writes a run's encoders and fusion as a standalone model file: `export`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.fields import check_output_file, resolve, write_json
from metamodal.api.settings import ExportSettings
from metamodal.errors import ConfigError, MissingExtraError, RunError

INSTALL = "pip install -c constraints.txt -e '.[export]'"
"""The command that installs the ``export`` extra (onnx, onnxruntime, onnxscript)."""


@dataclass
class ExportResult:
    """What `export` wrote.

    Args:
        model_file: the model file (ONNX or TorchScript).
        sidecar: the JSON beside it (preprocessing, inputs, prototype rule).
        format: ``onnx`` or ``torchscript``.
        modalities: every modality of the run -> ``exported`` or why it was left out.
        embedding_dim: the size of the embeddings the graph returns.
        max_difference: the largest absolute difference between the written file's
            embeddings and PyTorch's on example inputs (None without ``check``).
        tolerance: what the tests accept (`metamodal.export.TOLERANCE`).
    """

    model_file: str
    sidecar: str
    format: str
    modalities: dict[str, str] = field(default_factory=dict)
    embedding_dim: int = 0
    max_difference: float | None = None
    tolerance: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``metamodal export --json``."""
        return {"model_file": self.model_file, "sidecar": self.sidecar, "format": self.format,
                "modalities": self.modalities, "embedding_dim": self.embedding_dim,
                "max_difference": self.max_difference, "tolerance": self.tolerance}

    def table(self) -> str:
        """What was written, each modality, and the check's largest difference."""
        lines = [f"wrote {self.model_file} ({self.format}) and {self.sidecar}",
                 f"embedding dim {self.embedding_dim}"]
        width = max((len(name) for name in self.modalities), default=8)
        lines += [f"  {name:<{width}}  {what}" for name, what in self.modalities.items()]
        if self.max_difference is not None:
            lines.append(f"check: max |exported - pytorch| = {self.max_difference:.2e} "
                         f"(tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


def _require(modules: tuple[str, ...]) -> None:
    """Raise `MissingExtraError` unless every module of the ``export`` extra imports."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"exporting to ONNX needs {', '.join(missing)}, which are not "
                                "installed", fix=INSTALL)


def export(run: str | Path | None = None, settings: ExportSettings | None = None,
           **options: Any) -> ExportResult:
    """Write a run's encoders and fusion as a model file that maps preprocessed inputs to
    embeddings (``metamodal export``), and a JSON sidecar (the model file with the suffix
    ``.json``) with the inputs, the preprocessing each one needs and the prototype rule.

    The graph's inputs are, per exported modality, ``NAME.values``, ``NAME.present`` and (text,
    audio, sequence) ``NAME.lengths``; its outputs ``embedding`` ``[B, D]`` (late fusion
    ``[B, M, D]``) and ``present`` ``[B, M]`` (see `metamodal.export`). A modality whose
    encoder does not export in ``format`` (`metamodal.export.UNSUPPORTED`), or whose encoder is
    pretrained (without ``features``), is a `ConfigError` naming it; ``modalities`` exports
    the others.

    Args:
        run: the run directory.
        settings: an `ExportSettings` (``out``, ``format``, ``modalities``, ``check``, ...);
            ``options`` (its field names) override it.

    Raises:
        RunError: the run directory is missing or broken, or the exporter failed.
        ConfigError: no ``out``, ``out`` exists (without ``overwrite``), an unknown
            modality, or a modality that does not export.
        MissingExtraError: ONNX without the ``export`` extra.

    Example:
        >>> export("runs/demo", out="model.onnx").table()  # doctest: +SKIP
    """
    from metamodal import export as exporting
    from metamodal.io import atomic_write, atomic_write_json, resolved
    from metamodal.model import EnsembleModel
    from metamodal.runs import load_run

    s = resolve(ExportSettings, settings, {"run": run, **options}, verb="export")
    if not s.out:
        raise ConfigError("export: no output file given", column="out",
                          fix="give OUT, e.g. metamodal export RUN --format onnx model.onnx")
    out = Path(s.out)
    side = out.with_suffix(".json")
    if side == out:
        raise ConfigError(f"export: {out} would be overwritten by its own sidecar",
                          file=out, fix="name the model file e.g. model.onnx or model.pt")
    if s.json and resolved(s.json, "json") == resolved(side, "out"):  # OUT: refused before
        raise ConfigError(f"export: --json {s.json} is the export's own file, which the "
                          "result would replace", column="json",
                          fix="write the result to a file of its own, e.g. export-result.json")
    run_dir = resolved(s.run, "run")
    for path in (out, side):
        if path.exists() and not s.overwrite:
            raise ConfigError(f"export: {path} exists", file=path,
                              fix="give another OUT, or --overwrite to replace it")
        if path.is_file() and run_dir in path.resolve().parents:
            raise ConfigError(f"export: {path} is a file of the run it would replace",
                              file=path, fix="write the export outside the run directory")
        check_output_file(path, "out")  # a dataset's file, another run's, a device
    if s.format == "onnx":
        _require(("onnx", "onnxruntime", "onnxscript"))
    loaded = load_run(s.run, device="cpu")
    model = loaded.model
    if isinstance(model, EnsembleModel):
        raise ConfigError(f"export: {s.run} is an ensemble; export writes one network",
                          column="run", fix="export each run the ensemble was made from")
    known = model.modalities
    chosen = list(s.modalities) if s.modalities else known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(f"export: the run has no modality {', '.join(unknown)}",
                          column="modalities", fix=f"choose among {', '.join(known)}")
    kinds = loaded.preprocessor.kinds()
    encoders = (model.spec or {}).get("encoders", {})
    for name in chosen:
        encoder = encoders.get(name, type(model.backbone.encoders[name]).__name__)
        others = [m for m in known if m != name]
        subset = (f"--modalities {','.join(others)} to export the others" if others else
                  "train the run with another encoder for it")
        why = exporting.UNSUPPORTED[s.format].get(encoder)
        if why:
            alternative = ("; --format torchscript exports it" if s.format == "onnx" and
                           encoder not in exporting.UNSUPPORTED["torchscript"] else "")
            raise ConfigError(
                f"export: modality {name!r} has encoder {encoder!r}, which does not export "
                f"to {s.format}: {why}", column=name, fix=subset + alternative)
        if "pretrained" in model.backbone.encoders[name].input_info and not s.features:
            raise ConfigError(
                f"export: modality {name!r} has the frozen pretrained encoder {encoder!r}, "
                "which the preprocessor runs outside the model; the graph would take its "
                "features, not the raw input", column=name,
                fix=f"--features to export its adapter over precomputed features, or {subset}")
    graph = exporting.EmbeddingGraph(model.backbone, {name: kinds[name] for name in chosen})
    try:
        if s.format == "onnx":
            atomic_write(out, lambda tmp: exporting.write_onnx(graph, tmp, s.opset))
        else:
            atomic_write(out, lambda tmp: exporting.write_torchscript(graph, tmp))
    except (RuntimeError, ValueError, TypeError) as error:  # the exporter's own failure
        raise RunError(f"export: the {s.format} exporter failed on modalities "
                       f"{', '.join(graph.modalities)}: {str(error)[:400]}", file=s.run,
                       fix="export fewer modalities with --modalities, or with --opset 17 "
                       "(the default), or in another --format"
                       ) from error
    info = exporting.sidecar(loaded, graph, format=s.format,
                             opset=s.opset if s.format == "onnx" else None, model_file=out.name)
    atomic_write_json(side, info)
    difference = exporting.check(graph, out, s.format, model.backbone) if s.check else None
    result = ExportResult(
        str(out), str(side), s.format,
        {name: "exported" if name in graph.modalities else "left out (absent for every sample)"
         for name in known},
        info["embedding_dim"], difference, exporting.TOLERANCE)
    write_json(s.json, result)
    return result

