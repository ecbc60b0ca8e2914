"""`demo`: the whole pipeline on the embedded dataset, with honest comparisons, put together
from the other verbs of `metamodal.api` alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.data import make_synthetic
from metamodal.api.demo_record import check_demo_paths, check_demo_settings
from metamodal.api.evaluation import (
    Comparison,
    EvalReport,
    compare,
    evaluate,
    report_results,
    run_info,
)
from metamodal.api.fields import make, typed_arguments
from metamodal.api.mapping import project, retrieve, zero_shot
from metamodal.api.prediction import worked_episode
from metamodal.api.settings import QUICK_DEMO, DemoSettings
from metamodal.api.training import train
from metamodal.config import TrainConfig
from metamodal.evaluate.protocol import EvalResult
from metamodal.evaluate.report import MappingResults
from metamodal.evaluate.retrieval import ALIGNED, CEILING, RANDOM, RetrievalReport
from metamodal.evaluate.zeroshot import AM3_NAME, ZERO_SHOT, ZeroShotReport

FUSED = "protonet+gated"
MAML = "maml+gated"
ALIGN = "align:all-modalities"
JOINT = "protonet+gated+align"
QUERY, TARGET = "caption", "image"
Echo = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo measured: results per method and shot count, and the verdicts."""

    results: dict[str, dict[str, EvalResult]] = field(default_factory=dict)
    fused_beats_best_single: bool = False
    fused_beats_baselines: bool = False
    maml_beats_baselines: bool = False
    retrieval: RetrievalReport | None = None
    zero_shot: ZeroShotReport | None = None
    imputation: dict | None = None
    retrieval_beats_random: bool = False
    retrieval_beats_linear: bool = False
    zero_shot_above_chance: bool = False
    am3_beats_prototypes: bool = False
    imputation_beats_masking: dict[str, bool] = field(default_factory=dict)
    training_seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The results per shot count and method, the verdicts and the report's place."""
        return {
            "results": {key: {name: r.to_dict() for name, r in rows.items()}
                        for key, rows in self.results.items()},
            "fused_beats_best_single": self.fused_beats_best_single,
            "fused_beats_baselines": self.fused_beats_baselines,
            "maml_beats_baselines": self.maml_beats_baselines,
            "retrieval": None if self.retrieval is None else self.retrieval.to_dict(),
            "zero_shot": None if self.zero_shot is None else self.zero_shot.to_dict(),
            "retrieval_beats_random": self.retrieval_beats_random,
            "retrieval_beats_linear": self.retrieval_beats_linear,
            "zero_shot_above_chance": self.zero_shot_above_chance,
            "am3_beats_prototypes": self.am3_beats_prototypes,
            "imputation_beats_masking": dict(self.imputation_beats_masking),
            "training_seconds": dict(self.training_seconds),
            "report": None if self.report is None else str(self.report),
        }

    def table(self) -> str:
        """The verdicts, in words."""
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        lines = ["\nVerdict: fused model beats the best single modality at 5-way 1-shot beyond "
                 f"the 95% intervals: {yes(self.fused_beats_best_single)}; beats both "
                 f"baselines: {yes(self.fused_beats_baselines)}; MAML beats both baselines: "
                 f"{yes(self.maml_beats_baselines)}."]
        if self.retrieval is not None:
            imputed = [m for m, ok in self.imputation_beats_masking.items() if ok]
            lines.append(
                "Retrieval (class-level Recall@1, both directions) above random: "
                f"{yes(self.retrieval_beats_random)}, above the linear maps: "
                f"{yes(self.retrieval_beats_linear)}; zero-shot above chance: "
                f"{yes(self.zero_shot_above_chance)}; AM3 beats the prototypes at 1 shot: "
                f"{yes(self.am3_beats_prototypes)}; imputation beats masking at 50% and 75% "
                f"for {len(imputed)} of {len(self.imputation_beats_masking)} modalities"
                + (f" ({', '.join(imputed)})" if imputed else "") + ".")
        return "\n".join(lines)


def _beats(a: EvalResult, b: EvalResult) -> bool:
    """Whether ``a``'s 95% interval lies above ``b``'s."""
    return a.accuracy - a.ci95 > b.accuracy + b.ci95


@typed_arguments("demo")
def demo(
    out: str | Path = "metamodal-demo",
    *,
    data: str | Path | None = None,
    settings: DemoSettings | None = None,
    quick: bool = False,
    progress: bool = True,
    echo: Echo = lambda text: None,
    **sizes: Any,
) -> DemoResult:
    """Generate the embedded dataset, meta-train, evaluate, compare, report, predict
    (``metamodal demo``).

    Trains ProtoNet with gated fusion on all five modalities, MAML with the same backbone, one
    ProtoNet per single modality and a supervised-pretrained backbone for the two baselines
    (nearest centroid, fine-tuned linear head); evaluates all at 5-way 1-shot and 5-shot on the
    same test episodes; reports each one's training time; checks that the fused models beat
    the best single modality and the baselines by more than the 95% intervals; measures
    robustness to a missing modality; writes ``OUT/report``; shows one worked prediction.
    Finished runs in ``OUT/runs`` are reused, so a second call is fast.

    Args:
        out: the demo directory (``data/``, ``runs/``, ``report/``).
        data: use this dataset instead of generating ``OUT/data``.
        settings: sizes (default `DemoSettings()`, or `QUICK_DEMO`'s with ``quick``);
            ``sizes`` (its field names) override them.
        quick: a small, fast version (a smoke run).
        progress: show progress bars.
        echo: where to print lines of the demo's story (the command passes ``print``).

    Example:
        >>> result = demo("metamodal-demo", echo=print)  # doctest: +SKIP
    """
    check_demo_paths(out, data)
    base_sizes = asdict(settings) if settings is not None else dict(QUICK_DEMO if quick else {})
    settings = make(DemoSettings, {**base_sizes, **sizes}, verb="demo")
    out = Path(out)
    check_demo_settings(out, settings, data)
    shared = None
    if data is None:
        from metamodal.datasets.synthetic import shared_attributes

        shared = shared_attributes(QUERY, TARGET, settings.classes, seed=settings.seed)
        data = out / "data"
        if not (data / "dataset.toml").exists():
            echo(f"Generating the embedded dataset ({settings.classes} classes x "
                 f"{settings.per_class} samples) in {data} ...")
            make_synthetic(data, classes=settings.classes, per_class=settings.per_class,
                           seed=settings.seed, image_size=settings.image_size,
                           track_length=settings.track_length)
    base = TrainConfig(data=str(Path(data)), steps=settings.steps, seed=settings.seed,
                       dim=settings.dim, val_every=max(1, settings.steps // 6), val_episodes=200,
                       checkpoint_every=max(1, settings.steps // 6),
                       precision=settings.precision)
    result = DemoResult()

    def trained(name: str, config: TrainConfig) -> Path:
        run_dir = out / "runs" / name
        echo(f"Training {name} ...")
        # a run begun earlier continues (or is reused when finished); a new one starts
        done = train(run_dir, config=config, resume=run_dir.exists(), progress=progress)
        result.training_seconds[name] = done.seconds
        echo(f"  best validation accuracy {done.best_val_accuracy:.3f} at step "
             f"{done.best_step} ({done.seconds:.0f} s of training)")
        return run_dir

    fused_dir = trained(FUSED, base.updated({"learner": "protonet", "fusion": "gated"}))
    runs: dict[str, tuple[Path, str | None]] = {FUSED: (fused_dir, None)}
    runs[MAML] = (trained(MAML, base.updated({
        "learner": "maml", "fusion": "gated", "steps": settings.maml_steps,
        # each validation episode adapts anew (no embedding cache): validate less often
        "val_every": max(1, settings.maml_steps // 3), "val_episodes": 100,
        "learner_options": {"inner_steps": settings.maml_inner_steps,
                            "eval_steps": settings.maml_eval_steps,
                            "inner_lr": settings.maml_lr}})), None)
    fused_run = run_info(fused_dir)
    for name in fused_run.modalities:
        runs[f"protonet, only {name}"] = (trained(f"protonet+only-{name}", base.updated(
            {"learner": "protonet", "fusion": "mean", "modalities": [name]})), None)
    baseline_dir = trained("baseline-pretrained", base.updated(
        {"learner": "nearest-centroid", "fusion": "gated", "steps": settings.baseline_steps}))
    runs["baseline: nearest-centroid"] = (baseline_dir, None)
    runs["baseline: finetune"] = (baseline_dir, "finetune")
    result.training_seconds["baseline: finetune"] = result.training_seconds[
        "baseline-pretrained"]

    episodes = dict(ways=5, queries=15, seed=settings.seed, baseline=False, progress=progress)
    comparisons: dict[str, Comparison] = {}
    for shots in (1, 5):
        key = f"5-way {shots}-shot"
        comparisons[key] = compare({
            name: evaluate(run_dir, learner=learner, shots=shots,
                           episodes_count=settings.episodes, **episodes)
            for name, (run_dir, learner) in runs.items()})
        result.results[key] = comparisons[key].results
        echo(f"\n{key}, {settings.episodes} test episodes on {len(fused_run.split.test)} "
             "unseen classes (mean accuracy with 95% interval):")
        echo(comparisons[key].table())
    _verdicts(result, comparisons["5-way 1-shot"], echo)

    echo("\nRobustness: each modality dropped for a fraction of the test samples (1-shot):")
    fused = evaluate(fused_dir, shots=1, episodes_count=settings.robustness_episodes,
                     robustness=True, ablation=True, **{**episodes, "progress": False})
    for name, curve in (fused.robustness or {}).items():
        points = "  ".join(f"{100 * r:.0f}%: {100 * res.accuracy:.1f}" for r, res in
                           zip((0.0, 0.25, 0.5, 0.75), curve, strict=False))
        echo(f"  without {name:<14} {points}")
    comparison = {f"{name} ({key})": res for key, rows in result.results.items()
                  for name, res in rows.items()}
    mapping = None
    if settings.mapping:
        mapping = _cross_modal(out, base, settings, trained, fused_dir, shared, result, echo)
    result.report = report_results(
        out / "report", comparison, ablation=fused.ablation, robustness=fused.robustness,
        learning_curve_of=fused_dir, training_seconds=result.training_seconds,
        title="metamodal demo: embedded dataset", mapping=mapping).path
    echo(f"\nReport with plots: {result.report / 'index.html'}")
    echo("\nA worked prediction (5-way 1-shot, classes never seen in training):")
    echo(worked_episode(fused_dir, seed=settings.seed + 7).table(queries=1))
    return result


def _verdicts(result: DemoResult, one_shot: Comparison, echo: Echo) -> None:
    """Decide and print whether the fused models beat the best single modality and the
    baselines beyond the intervals, with the paired differences."""
    scores = one_shot.results
    fused = scores[FUSED]
    singles = {k: v for k, v in scores.items() if k.startswith("protonet, only")}
    best_name, best = max(singles.items(), key=lambda item: item[1].accuracy)
    baselines = [k for k in scores if k.startswith("baseline")]
    result.fused_beats_best_single = _beats(fused, best)
    result.fused_beats_baselines = all(_beats(fused, scores[b]) for b in baselines)
    result.maml_beats_baselines = all(_beats(scores[MAML], scores[b]) for b in baselines)
    diff = one_shot.difference(FUSED, best_name)
    echo(f"\nFused vs best single modality ({best_name}) at 5-way 1-shot: "
         f"{100 * diff.mean:+.1f} points (paired 95% interval ±{100 * diff.ci95:.1f}); "
         f"intervals {'do not overlap' if result.fused_beats_best_single else 'overlap'}.")
    for method in (FUSED, MAML):
        for name in baselines:
            d = one_shot.difference(method, name)
            echo(f"{method} vs {name}: {100 * d.mean:+.1f} points (paired "
                 f"±{100 * d.ci95:.1f}).")
    echo("\nTraining time on this machine (seconds): " + ", ".join(
        f"{name} {seconds:.0f}" for name, seconds in result.training_seconds.items()))


def _cross_modal(out: Path, base: TrainConfig, settings: DemoSettings,
                 trained: Callable[[str, TrainConfig], Path], fused_dir: Path,
                 shared: dict[str, tuple[int, ...]] | None, result: DemoResult,
                 echo: Echo) -> MappingResults:
    """Align all five encoders, train ProtoNet on top with the alignment as an auxiliary loss,
    then measure retrieval (with the ceiling of ``shared``, what the two retrieval modalities
    of each generated class share), zero-shot, few+zero-shot (AM3) and imputation."""
    echo("\nCross-modal mapping: contrastive alignment of the five encoders (InfoNCE, "
         "class-level positives) ...")
    class_level = {"positives": "class"}
    align_steps = settings.align_steps or max(1, settings.steps // 2)
    am3_steps = settings.am3_steps or min(settings.steps, 500)
    align_dir = trained(ALIGN, base.updated({
        "align_only": True, "fusion": "mean", "steps": align_steps,
        "batch_size": 128, "align_options": class_level,
        "val_every": max(1, align_steps // 3), "checkpoint_every": max(1, align_steps // 3)}))
    joint_dir = trained(JOINT, base.updated({
        "learner": "protonet", "fusion": "gated", "init_from": str(align_dir),
        "align_weight": settings.align_weight, "align_options": class_level}))

    report = retrieve(align_dir, QUERY, TARGET, seed=settings.seed,
                      baseline_runs={f"{FUSED} (not aligned)": str(fused_dir)}, shared=shared)
    result.retrieval = report
    echo("")
    echo(report.table())
    directions = (f"{QUERY}->{TARGET}", f"{TARGET}->{QUERY}")
    linear = sorted({r.method for r in report.rows if r.method.startswith("baseline: ")
                     and r.method != RANDOM})

    def r1(method: str, direction: str) -> tuple[float, float]:
        return report.row(method, direction, "class").recall[1]

    result.retrieval_beats_random = all(
        r1(ALIGNED, d)[0] - r1(ALIGNED, d)[1] > sum(r1(RANDOM, d)) for d in directions)
    result.retrieval_beats_linear = all(
        r1(ALIGNED, d)[0] - r1(ALIGNED, d)[1] > sum(r1(m, d)) for d in directions
        for m in linear)
    echo(f"Class-level Recall@1 above random in both directions beyond the intervals: "
         f"{'yes' if result.retrieval_beats_random else 'no'}; above every linear-map "
         f"baseline: {'yes' if result.retrieval_beats_linear else 'no'}. (The synthetic "
         "modalities share no per-sample detail, only class attributes, so instance-level "
         "retrieval stays near the class level divided by the samples per class.)")
    if shared is not None:
        echo(f"Class-level Recall@1 of the {CEILING!r} row, which knows the attribute "
             f"{QUERY} and {TARGET} share (no map can do better on this data): "
             + ", ".join(f"{d} {100 * r1(CEILING, d)[0]:.1f}%" for d in directions) + ".")

    zs = zero_shot(joint_dir, seed=settings.seed, episodes_count=settings.episodes,
                   am3_steps=am3_steps)
    result.zero_shot = zs
    echo("\n" + zs.table())
    zero = zs.results["0-shot"][ZERO_SHOT]
    result.zero_shot_above_chance = zero.accuracy - zero.ci95 > 1 / zs.ways
    gain, ci = zs.gains["1-shot"]
    result.am3_beats_prototypes = gain > ci
    echo(f"AM3 beats the prototypes alone at 1 shot beyond the paired interval: "
         f"{'yes' if result.am3_beats_prototypes else 'no'} (the {AM3_NAME} and prototype rows "
         f"use the {JOINT} embeddings).")

    joint: EvalReport = evaluate(joint_dir, shots=1, ways=5, queries=15,
                                 episodes_count=settings.robustness_episodes, seed=settings.seed,
                                 imputation=True, baseline=False, progress=False)
    result.imputation = joint.imputation
    echo("\nImputing a missing modality through the learned maps vs masking it (1-shot, "
         f"{JOINT}; paired difference in points):")
    for modality, rows in joint.imputation_gains().items():
        result.imputation_beats_masking[modality] = all(
            mean > ci for rate, mean, ci in rows if rate in (0.5, 0.75))
        echo(f"  {modality:<14} " + "  ".join(
            f"{100 * rate:.0f}%: {100 * mean:+.1f} ± {100 * ci:.1f}" for rate, mean, ci in rows))
    return MappingResults(retrieval=report, zero_shot=zs, imputation=joint.imputation,
                          projection=project(align_dir))
