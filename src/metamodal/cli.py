"""The ``metamodal`` command: every verb is a thin shell over the library API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metamodal.errors import ConfigError, MetamodalError


def _modalities(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects MODALITY=NAME, got {item!r}", column=flag,
                              fix=f"e.g. {flag} image=conv4")
        key, value = item.split("=", 1)
        result[key.strip()] = value.strip()
    return result


def _augment_flags(items: Sequence[str], base: dict[str, Any]) -> dict[str, Any]:
    """``--augment KEY=VALUE`` flags merged into a config's ``augment`` table: ``KEY`` is an
    option (``rotate_classes``) or ``MODALITY.OPTION`` (``image.rotate``); ``VALUE`` is read as
    a TOML value (``10``, ``true``, ``[0, 1]``), else kept as a string (``horizontal``)."""
    from metamodal.io import ParseError, loads_toml

    result = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for item in items:
        key, sep, text = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path) or len(path) > 2:
            raise ConfigError(f"--augment expects KEY=VALUE or MODALITY.OPTION=VALUE, got "
                              f"{item!r}", column="--augment",
                              fix="e.g. --augment image.rotate=10 --augment rotate_classes=true")
        try:
            value: Any = loads_toml(f"v = {text.strip()}")["v"]
        except ParseError:
            value = text.strip()
        if len(path) == 1:
            result[path[0]] = value
        else:
            table = result.setdefault(path[0], {})
            if not isinstance(table, dict):
                raise ConfigError(f"--augment {item!r}: {path[0]!r} is not a modality table",
                                  column="--augment", fix="e.g. --augment image.rotate=10")
            table[path[1]] = value
    return result


def _write_json(path: str | None, data: Any) -> None:
    if path:
        from metamodal.io import atomic_write_json

        atomic_write_json(path, data)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from metamodal.datasets.synthetic import make_synthetic

    out = make_synthetic(args.out, classes=args.classes, per_class=args.per_class,
                         seed=args.seed, missing_rate=args.missing_rate, noise=args.noise,
                         attribute_values=args.attribute_values, image_size=args.image_size,
                         overwrite=args.overwrite)
    print(f"wrote {args.classes} classes x {args.per_class} samples to {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from metamodal.data.inspect import format_inspection, inspect_dataset

    report = inspect_dataset(args.dir)
    print(format_inspection(report))
    _write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def _train_config(args: argparse.Namespace):
    from metamodal.config import TrainConfig, load_config

    config = load_config(args.config) if args.config else TrainConfig()
    flags: dict[str, Any] = {}
    for key in ("learner", "fusion", "ways", "shots", "queries", "steps", "seed", "lr", "dim",
                "val_every", "val_episodes", "patience", "device", "batch_size",
                "checkpoint_every", "meta_batch", "task_batching", "vmap_chunk", "val_ways",
                "val_shots", "val_queries"):
        value = getattr(args, key)
        if value is not None:
            flags[key] = value
    if args.data:
        flags["data"] = str(args.data)
    if args.modalities:
        flags["modalities"] = _modalities(args.modalities)
    if args.encoder:
        flags["encoders"] = {**config.encoders, **_pairs(args.encoder, "--encoder")}
    if args.no_cache:
        flags["cache"] = False
    if args.augment:
        flags["augment"] = _augment_flags(args.augment, config.augment)
    flags.update(_align_flags(args, config))
    options: dict[str, Any] = {}
    for key in ("inner_steps", "inner_lr", "eval_steps", "eval_lr"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.first_order:
        options["first_order"] = True
    if args.adapt:
        adapt = _modalities(args.adapt)
        options["adapt"] = adapt[0] if len(adapt) == 1 and adapt[0] in (
            "all", "head", "fusion") else adapt
    if options:
        flags["learner_options"] = {**config.learner_options, **options}
    config = config.updated(flags)
    if not config.data:
        raise ConfigError("no dataset given", column="data",
                          fix="pass --data DIR or set data in the config file")
    return config


def _align_flags(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The alignment keys of `TrainConfig` given by flags (shared by ``train`` and ``align``)."""
    flags: dict[str, Any] = {}
    if getattr(args, "init_from", None):
        flags["init_from"] = str(args.init_from)
    if getattr(args, "align_weight", None) is not None:
        flags["align_weight"] = args.align_weight
    if getattr(args, "align_modalities", None):
        flags["align_modalities"] = _modalities(args.align_modalities)
    if getattr(args, "objective", None):
        flags["align_objective"] = args.objective
    options = {}
    for key in ("temperature", "margin", "regression_loss", "direction", "positives"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if options:
        flags["align_options"] = {**config.align_options, **options}
    return flags


def _add_align_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=("infonce", "margin", "regression"),
                   help="alignment objective (default infonce: symmetric InfoNCE, CLIP-style)")
    p.add_argument("--positives", choices=("instance", "class"),
                   help="InfoNCE positives: the same sample (default) or any sample of its class")
    p.add_argument("--temperature", type=float, help="initial InfoNCE temperature (0.07)")
    p.add_argument("--margin", type=float, help="margin of the margin objective (1.0)")
    p.add_argument("--regression-loss", choices=("mse", "cosine"),
                   help="loss of the regression maps and objective (mse)")
    p.add_argument("--direction", help="regression objective: SOURCE->TARGET, e.g. "
                   "caption->image")


def cmd_align(args: argparse.Namespace) -> int:
    from metamodal.config import TrainConfig, load_config
    from metamodal.train.trainer import Trainer

    config = load_config(args.config) if args.config else TrainConfig()
    names = _modalities(args.modalities)
    if len(names) < 2:
        raise ConfigError("align needs two or more modalities", column="--modalities",
                          fix="e.g. --modalities image,caption")
    flags: dict[str, Any] = {"data": str(args.data), "modalities": names,
                             "align_modalities": names, "align_only": True,
                             "fusion": args.fusion, "learner": "protonet"}
    for key in ("steps", "seed", "lr", "dim", "batch_size", "val_every", "device"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    if args.encoder:
        flags["encoders"] = _pairs(args.encoder, "--encoder")
    flags.update(_align_flags(args, config))
    config = config.updated(flags)
    result = Trainer(config, args.out, progress=not args.no_progress).fit(resume=args.resume)
    print(f"run: {result.run_dir}  steps: {result.steps}  best validation Recall@1 "
          f"({config.align_options.get('positives', 'instance')} level): "
          f"{result.best_val_accuracy:.4f} (step {result.best_step})")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from metamodal.api import retrieve
    from metamodal.evaluate.retrieval import format_retrieval_table

    baselines = _pairs(args.baseline_run, "--baseline-run")
    report = retrieve(args.run, args.query_modality, args.target_modality, data=args.data,
                      split=args.split, baseline_runs=baselines, seed=args.seed)
    for level in ("class", "instance"):
        print(format_retrieval_table(report, level))
    _write_json(args.json, report.to_dict())
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from metamodal.api import zero_shot
    from metamodal.evaluate.zeroshot import format_zero_shot

    report = zero_shot(args.run, descriptions=args.descriptions,
                       description_modality=args.descriptions_from, data=args.data, ways=args.ways,
                       shots=tuple(int(s) for s in _modalities(args.shots)),
                       queries=args.queries, episodes=args.episodes_count, seed=args.seed,
                       am3_steps=args.am3_steps)
    print(format_zero_shot(report))
    _write_json(args.json, report.to_dict())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metamodal.train.trainer import Trainer

    config = _train_config(args)
    result = Trainer(config, args.out, progress=not args.no_progress).fit(
        resume=args.resume, overwrite=args.overwrite)
    print(f"run: {result.run_dir}  steps: {result.steps}  best validation accuracy: "
          f"{result.best_val_accuracy:.4f} (step {result.best_step})"
          + ("  [stopped early]" if result.stopped_early else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from metamodal.data.episodes import read_episode_file
    from metamodal.evaluate.ablation import modality_ablation
    from metamodal.evaluate.baseline import UNTRAINED, untrained_baseline
    from metamodal.evaluate.protocol import evaluate, evaluate_episodes
    from metamodal.evaluate.report import format_results_table
    from metamodal.evaluate.robustness import missing_modality_curve
    from metamodal.runs.directory import load_run, load_run_data

    run = load_run(args.run)
    prepared = load_run_data(run, args.data)
    split = prepared.split
    classes = {"train": split.train, "val": split.val, "test": split.test,
               "all": split.train + split.val + split.test}[args.split]
    modalities = _modalities(args.modalities) if args.modalities else None
    common = dict(ways=args.ways, shots=args.shots, queries=args.queries,
                  episodes=args.episodes_count, seed=args.seed, modalities=modalities)
    baseline_model = untrained_baseline(run.model, seed=args.seed)
    if args.episodes:
        episodes = read_episode_file(args.episodes, prepared.store)
        result, baseline = (evaluate_episodes(m, prepared.store, episodes, modalities=modalities)
                            for m in (run.model, baseline_model))
    else:
        result, baseline = (evaluate(m, prepared.store, classes, progress=True, **common)
                            for m in (run.model, baseline_model))
    name = f"{run.config.learner}+{run.config.fusion}"
    print(format_results_table({name: result, UNTRAINED: baseline}))
    chance = 1 / result.ways if result.ways else None
    if chance:
        print(f"chance: {100 * chance:.1f}%")
    output: dict[str, Any] = {**result.to_dict(), "run": str(args.run), "split": args.split,
                              "baseline": {UNTRAINED: baseline.to_dict()}, "chance": chance}
    if args.episodes:
        output.update(_pooled_error(result, [len(e.query_ids) for e in episodes]))
    if args.ablation and not args.episodes:
        rows = modality_ablation(run.model, prepared.store, classes, **common)
        print(format_results_table({r.name: r for r in rows}))
        output["ablation"] = [r.to_dict() for r in rows]
    if args.robustness and not args.episodes:
        curves = missing_modality_curve(run.model, prepared.store, classes, **common)
        output["robustness"] = {m: [r.to_dict() for r in rs] for m, rs in curves.items()}
        for modality, rows in curves.items():
            print(f"without {modality}: " + "  ".join(
                f"{100 * r.accuracy:.1f}±{100 * r.ci95:.1f}" for r in rows))
        imputation = _imputation(args.run, run, prepared.store, classes, common)
        if imputation:
            output["imputation"] = imputation
    _write_json(args.json, output)
    return 0


def _imputation(run_dir: str, run: Any, store: Any, classes: list[str],
                common: dict[str, Any]) -> dict[str, Any] | None:
    """Imputation-vs-masking curves of a run that trained an alignment (printed), else None."""
    from metamodal.evaluate.robustness import imputation_curves, imputation_gains
    from metamodal.runs.directory import read_run_config
    from metamodal.train.alignment import load_alignment

    if ("alignment" not in read_run_config(run_dir) or run.model.late
            or not run.model.capabilities().embeds_once):
        return None  # imputation fills embeddings: metric learners with early fusion only
    common = {k: v for k, v in common.items() if k != "modalities"}
    curves = imputation_curves(run.model, load_alignment(run_dir), store, classes, **common)
    gains = imputation_gains(curves)
    for modality, rows in curves.items():
        print(f"without {modality}, imputed vs masked: " + "  ".join(
            f"{100 * (m.drop or {}).get(modality, 0):.0f}%: {100 * i.accuracy:.1f} vs "
            f"{100 * m.accuracy:.1f} ({100 * g[1]:+.1f}±{100 * g[2]:.1f})"
            for m, i, g in zip(rows["masking"], rows["imputation"], gains[modality],
                               strict=True)))
    return {m: {k: [r.to_dict() for r in v] for k, v in rows.items()}
            for m, rows in curves.items()}


def _pooled_error(result: Any, counts: list[int]) -> dict[str, Any]:
    """Print and return the error over all query items of fixed runs, with a CI over runs."""
    from metamodal.evaluate.stats import pooled_error

    error, half = pooled_error(result.accuracies, counts)
    interval = f" ± {100 * half:.2f}" if half == half else ""
    print(f"error over all {sum(counts)} query items of {len(counts)} runs: "
          f"{100 * error:.2f}%{interval} (95% interval over runs)")
    return {"error": error, "error_ci95": half if half == half else None,
            "query_items": sum(counts), "runs": len(counts)}


def _names(values: Sequence[str] | None) -> list[str]:
    """Comma-separated and/or repeated flag values as one list."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def cmd_import(args: argparse.Namespace) -> int:
    from metamodal.datasets.importers import import_dataset

    options: dict[str, Any] = dict(name=args.name, overwrite=args.overwrite,
                                   val_groups=_names(args.val_groups),
                                   test_groups=_names(args.test_groups),
                                   progress=not args.no_progress)
    if args.layout in ("imagefolder", "audiofolder"):
        options.update(group_level={"auto": None, "yes": True, "no": False}[args.group_level],
                       skip_other=args.skip_other_files)
        if args.layout == "imagefolder":
            options.update(image_size=args.image_size, channels=args.channels)
    elif args.layout == "table":
        options.update(label=args.label, id_column=args.id, group=args.group,
                       text=_names(args.text), numeric=_names(args.numeric),
                       image=_names(args.image), audio=_names(args.audio),
                       sequence=_names(args.sequence), root=args.root,
                       allow_missing_files=args.allow_missing_files)
    else:
        options.update(image_size=args.image_size, strokes=not args.no_strokes,
                       allow_unmatched=args.allow_unmatched, stroke_length=args.stroke_length)
        if options["name"] is None:
            options.pop("name")
    result = import_dataset(args.layout, args.source, args.out, **options)
    print(result.summary())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from metamodal.datasets.download import download_omniglot

    checksums = _pairs(args.sha256, "--sha256")
    result = download_omniglot(
        args.dir, sets=_names(args.sets) or ["background-small"],
        **({"base_url": args.url} if args.url else {}), sha256=checksums,
        import_data=not args.no_import, overwrite=args.overwrite,
        progress=not args.no_progress, timeout=args.timeout,
        val_groups=_names(args.val_groups), test_groups=_names(args.test_groups),
        image_size=args.image_size)
    for path in result.archives:
        note = " (checksum recorded on first download)" if path.name in result.recorded else ""
        print(f"archive: {path}{note}")
    if result.summary:
        print(result.summary)
    return 0


def cmd_episodes(args: argparse.Namespace) -> int:
    from metamodal.data.dataset import load_dataset
    from metamodal.data.episodes import protocol_episodes, write_episode_file
    from metamodal.data.splits import load_split

    dataset = load_dataset(args.data)
    labels = [str(label) for label in dataset.labels]
    classes = None
    if args.split != "all":
        split = load_split(dataset.root, labels, dataset.groups, seed=args.split_seed)
        classes = split.of(args.split)
    within: list[str] | str | None = None
    if args.within is not None:
        within = "*" if args.within.strip() in ("*", "all") else _names([args.within])
    runs = protocol_episodes(dataset.ids, labels, ways=args.ways, shots=args.shots,
                             queries=args.queries, runs=args.runs, seed=args.seed,
                             classes=classes, groups=dataset.groups, within=within)
    path = write_episode_file(args.out, runs)
    shape = (f"{args.ways}-way {args.shots}-shot, {args.queries} "
             f"quer{'y' if args.queries == 1 else 'ies'} per class")
    where = ""
    if within is not None:
        used: dict[str, int] = {}
        for run in runs:
            used[str(run.group)] = used.get(str(run.group), 0) + 1
        where = "; within one group each: " + ", ".join(f"{g} x{n}" for g, n in used.items())
    print(f"wrote {len(runs)} runs ({shape}{where}) to {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from metamodal.classifier import FewShotClassifier

    classifier = FewShotClassifier(args.run).fit(args.support)
    query = classifier.load_samples(args.query)
    probabilities = classifier.predict_proba(query)
    rows = []
    for sample_id, p in zip(query.ids, probabilities, strict=True):
        best = int(p.argmax())
        rows.append({"id": sample_id, "prediction": classifier.classes_[best],
                     "probability": float(p[best]),
                     "probabilities": dict(zip(classifier.classes_, map(float, p), strict=True))})
    width = max(len(str(r["id"])) for r in rows) if rows else 2
    print(f"{'id':<{width}}  prediction  probability")
    for r in rows:
        print(f"{r['id']:<{width}}  {r['prediction']}  {r['probability']:.3f}")
    _write_json(args.json, {"classes": classifier.classes_, "predictions": rows})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metamodal.evaluate.ablation import modality_ablation
    from metamodal.evaluate.baseline import UNTRAINED, untrained_baseline
    from metamodal.evaluate.protocol import evaluate
    from metamodal.evaluate.report import write_report
    from metamodal.evaluate.robustness import missing_modality_curve
    from metamodal.runs.directory import load_run, load_run_data
    from metamodal.train.logger import read_metrics

    run = load_run(args.run)
    prepared = load_run_data(run)
    test = prepared.split.test
    common = dict(ways=args.ways, shots=args.shots, queries=args.queries,
                  episodes=args.episodes_count, seed=args.seed)
    name = f"{run.config.learner}+{run.config.fusion}"
    results = {
        name: evaluate(run.model, prepared.store, test, progress=True, **common),
        UNTRAINED: evaluate(untrained_baseline(run.model, seed=args.seed), prepared.store,
                            test, **common),
    }
    path = write_report(
        Path(args.run) / "report", results=results,
        ablation=modality_ablation(run.model, prepared.store, test, **common),
        robustness=missing_modality_curve(run.model, prepared.store, test, **common),
        learning_curve=read_metrics(args.run), title=f"metamodal run {Path(args.run).name}",
        mapping=_mapping_results(args, run, prepared, common))
    print(f"report: {path / 'index.html'}")
    return 0


def _mapping_results(args: argparse.Namespace, run: Any, prepared: Any,
                     common: dict[str, Any]) -> Any:
    """The report's mapping sections for a run that trained an alignment: retrieval between
    its first two aligned modalities, imputation vs masking, the joint space, and zero-shot
    when the dataset has a descriptions.toml (or ``--descriptions-from`` names a modality);
    None for other runs."""
    from metamodal.api import retrieve, zero_shot
    from metamodal.evaluate.mapping_report import MappingResults
    from metamodal.evaluate.projection import joint_projection
    from metamodal.evaluate.robustness import imputation_curves
    from metamodal.mapping.descriptions import DESCRIPTIONS_FILE
    from metamodal.runs.directory import read_run_config
    from metamodal.train.alignment import load_alignment

    if "alignment" not in read_run_config(args.run):
        return None
    aligner = load_alignment(args.run)
    test = prepared.split.test
    results = MappingResults(
        retrieval=retrieve(args.run, aligner.modalities[0], aligner.modalities[1],
                           seed=args.seed),
        projection=joint_projection(run.model, prepared.store, test,
                                    modalities=aligner.modalities))
    if not run.model.late and run.model.capabilities().embeds_once:
        results.imputation = imputation_curves(run.model, aligner, prepared.store, test,
                                               **common)
    described = args.descriptions_from or (prepared.dataset.root / DESCRIPTIONS_FILE).is_file()
    if described and not run.model.late:
        results.zero_shot = zero_shot(args.run, description_modality=args.descriptions_from,
                                      ways=args.ways, queries=args.queries,
                                      episodes=args.episodes_count, seed=args.seed)
    return results


def cmd_demo(args: argparse.Namespace) -> int:
    from metamodal.demo import DemoSettings, run_demo

    settings = DemoSettings()
    if args.quick:
        settings = DemoSettings(classes=40, per_class=20, steps=60, baseline_steps=60,
                                maml_steps=60, episodes=600, robustness_episodes=100,
                                align_steps=60, am3_steps=100)
    if args.seed is not None:
        settings.seed = args.seed
    result = run_demo(args.out, data=args.data, settings=settings,
                      progress=not args.no_progress, echo=print)
    print("\nVerdict: fused model beats the best single modality at 5-way 1-shot beyond the "
          f"95% intervals: {'yes' if result.fused_beats_best_single else 'no'}; "
          f"beats both baselines: {'yes' if result.fused_beats_baselines else 'no'}; "
          f"MAML beats both baselines: {'yes' if result.maml_beats_baselines else 'no'}.")
    if result.retrieval is not None:
        imputed = [m for m, ok in result.imputation_beats_masking.items() if ok]
        print(f"Retrieval (class-level Recall@1, both directions) above random: "
              f"{'yes' if result.retrieval_beats_random else 'no'}, above the linear maps: "
              f"{'yes' if result.retrieval_beats_linear else 'no'}; zero-shot above chance: "
              f"{'yes' if result.zero_shot_above_chance else 'no'}; AM3 beats the prototypes "
              f"at 1 shot: {'yes' if result.am3_beats_prototypes else 'no'}; imputation beats "
              f"masking at 50% and 75% for {len(imputed)} of "
              f"{len(result.imputation_beats_masking)} modalities"
              + (f" ({', '.join(imputed)})" if imputed else "") + ".")
    return 0


# -- metamodal cache: the on-disk feature cache of pretrained encoders ----------------------


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def cmd_cache(args: argparse.Namespace) -> int:
    from metamodal.encoders.cache import FeatureCache

    cache = FeatureCache(args.dir, limit=getattr(args, "limit", None))
    if args.action == "clear":
        freed = cache.clear(encoder=args.encoder)
        print(f"cleared {_human(freed)} from {cache.root}"
              + (f" (encoder {args.encoder})" if args.encoder else ""))
        return 0
    info = cache.info()
    print(f"feature cache: {info.root}")
    limit = _human(info.limit) if info.limit else "none"
    print(f"size: {_human(info.bytes)} of {limit}, {info.entries} entries in {info.shards} shards")
    if info.namespaces:
        print("encoder             entries  shards  size        version / options")
        for n in info.namespaces:
            print(f"{n.encoder:<18}  {n.entries:>7}  {n.shards:>6}  {_human(n.bytes):>10}  "
                  f"{n.version} {n.options}")
    _write_json(args.json, info.to_dict())
    return 0


def _add_cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="show or empty the feature cache of pretrained encoders")
    p.add_argument("action", choices=("info", "clear"), help="info: location, size, entries; "
                   "clear: delete the cached features")
    p.add_argument("--dir", help="cache directory (default $METAMODAL_CACHE or "
                   "~/.cache/metamodal/features)")
    p.add_argument("--encoder", help="clear: only this encoder's features (e.g. minilm)")
    p.add_argument("--limit", help="info: size limit to report (default $METAMODAL_CACHE_LIMIT "
                   "or 2GiB)")
    p.add_argument("--json", help="info: also write it as JSON")
    p.set_defaults(func=cmd_cache)


def _add_episode_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ways", type=int, default=5, help="classes per episode (default 5)")
    parser.add_argument("--shots", type=int, default=1, help="support samples per class")
    parser.add_argument("--queries", type=int, default=15, help="query samples per class")
    parser.add_argument("--episodes-count", type=int, default=600,
                        help="test episodes (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes")


def _add_import_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="import data in a common layout as a dataset directory")
    layouts = p.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    helps = {
        "imagefolder": "one folder of images per class (SOURCE/[GROUP/]CLASS/FILE)",
        "audiofolder": "one folder of audio files per class (SOURCE/[GROUP/]CLASS/FILE)",
        "table": "a CSV / JSON-lines / Parquet table; name the columns by role",
        "omniglot": "the official Omniglot archives or folders (images + strokes, all_runs)",
    }
    for layout, text in helps.items():
        q = layouts.add_parser(layout, help=text, description=text)
        q.add_argument("source", help="the folder, archive or table to import")
        q.add_argument("out", help="the dataset directory to write")
        q.add_argument("--name", help="the dataset's name")
        q.add_argument("--overwrite", action="store_true",
                       help="replace OUT when it already holds a dataset")
        q.add_argument("--val-groups", action="append", metavar="GROUPS",
                       help="groups (or classes, without groups) held out for validation, "
                       "written to splits.toml (comma-separated)")
        q.add_argument("--test-groups", action="append", metavar="GROUPS",
                       help="groups (or classes) held out for testing (comma-separated)")
        q.add_argument("--no-progress", action="store_true")
        if layout in ("imagefolder", "audiofolder"):
            q.add_argument("--group-level", choices=("auto", "yes", "no"), default="auto",
                           help="folders above the class folders are groups (default: detect)")
            q.add_argument("--skip-other-files", action="store_true",
                           help="leave out files of other types instead of failing")
        if layout == "imagefolder":
            q.add_argument("--image-size", type=int, help="decoded image size (loader option)")
            q.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB")
        if layout == "table":
            q.add_argument("--label", required=True, help="the column of class labels")
            q.add_argument("--id", help="the column of unique sample ids (default: id, or row "
                           "numbers)")
            q.add_argument("--group", help="a column grouping classes (splits by group)")
            for role, what in (("text", "text"), ("numeric", "numbers (one tabular modality)"),
                               ("image", "image file paths"), ("audio", "audio file paths"),
                               ("sequence", ".npy / .csv sequence file paths")):
                q.add_argument(f"--{role}", action="append", metavar="COLUMNS",
                               help=f"columns holding {what} (comma-separated, repeatable)")
            q.add_argument("--root", help="folder the file paths are relative to (default: the "
                           "table's folder); paths out of it are refused")
            q.add_argument("--allow-missing-files", action="store_true",
                           help="a path to a missing file becomes an empty cell")
        if layout == "omniglot":
            q.add_argument("--image-size", type=int, default=28,
                           help="decoded image size (default 28; files keep 105x105)")
            q.add_argument("--stroke-length", type=int, default=256,
                           help="points of a stroke sequence kept when decoded (default 256)")
            q.add_argument("--no-strokes", action="store_true", help="import the images only")
            q.add_argument("--allow-unmatched", action="store_true",
                           help="import a drawing lacking its image or strokes with that "
                           "modality missing")
        q.set_defaults(func=cmd_import)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metamodal`` command."""
    parser = argparse.ArgumentParser(
        prog="metamodal",
        description="Few-shot learning on multimodal data: meta-train, evaluate, predict.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on the embedded dataset")
    p.add_argument("--out", default="metamodal-demo", help="demo directory")
    p.add_argument("--data", help="use this dataset instead of generating one")
    p.add_argument("--quick", action="store_true", help="a small, fast version (a smoke run)")
    p.add_argument("--seed", type=int, help="seed of data, training and episodes")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="validate a dataset directory and describe it")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--json", help="also write the findings as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("make-synthetic", help="write the embedded five-modality dataset")
    p.add_argument("out", help="output directory")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--missing-rate", type=float, default=0.1,
                   help="probability that a modality is missing in a sample")
    p.add_argument("--noise", type=float, default=0.5,
                   help="nuisance strength in every modality (0 clean, 1-2 hard)")
    p.add_argument("--attribute-values", type=int, default=3,
                   help="values per latent attribute (2-5); fewer = weaker single modalities")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_synthetic)

    _add_import_parser(sub)

    p = sub.add_parser("download", help="download a public dataset, verify, unpack, import")
    p.add_argument("dataset", choices=("omniglot",), help="the dataset")
    p.add_argument("dir", help="folder for archives/, unpacked/ and the imported dataset/")
    p.add_argument("--sets", action="append", metavar="SETS",
                   help="background-small (default), background, evaluation, or archive names "
                   "(comma-separated, repeatable)")
    p.add_argument("--url", default=None, help="base URL the archive names are appended to "
                   "(default: the authors' repository)")
    p.add_argument("--sha256", action="append", metavar="NAME=HEX",
                   help="expected SHA-256 of an archive (repeatable)")
    p.add_argument("--no-import", action="store_true", help="only download and unpack")
    p.add_argument("--overwrite", action="store_true", help="import again over DIR/dataset")
    p.add_argument("--val-groups", action="append", metavar="GROUPS",
                   help="alphabets held out for validation (comma-separated)")
    p.add_argument("--test-groups", action="append", metavar="GROUPS",
                   help="alphabets held out for testing (comma-separated)")
    p.add_argument("--image-size", type=int, default=28, help="decoded image size (default 28)")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("episodes", help="write an episode file of a published protocol")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--out", required=True, help="the episodes.jsonl to write")
    p.add_argument("--within", metavar="GROUPS",
                   help="every run within one group: group names (comma-separated, used in "
                   "turn) or '*' for every group that can supply a run (Lake et al. 2015)")
    p.add_argument("--split", default="all", choices=("all", "train", "val", "test"),
                   help="draw classes from this split (default all)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the split when the dataset has no splits.toml (use the "
                   "training seed)")
    p.add_argument("--ways", type=int, default=5, help="classes per run (default 5)")
    p.add_argument("--shots", type=int, default=1, help="support samples per class (default 1)")
    p.add_argument("--queries", type=int, default=15, help="query samples per class (default 15)")
    p.add_argument("--runs", type=int, default=600, help="number of runs / episodes (default 600)")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs (default 0)")
    p.set_defaults(func=cmd_episodes)

    p = sub.add_parser("train", help="meta-train a model; writes a run directory")
    p.add_argument("--data", help="dataset directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--config", help="TOML config (flags override it)")
    p.add_argument("--learner", help="e.g. protonet, matchingnet, relationnet, siamese, "
                   "nearest-centroid, finetune, maml, fomaml, anil, metasgd, maml++, reptile, "
                   "lstm-optimizer")
    p.add_argument("--fusion", help="e.g. gated, concat, mean, attention, tensor, lowrank, late")
    p.add_argument("--modalities", help="comma-separated modalities to use")
    p.add_argument("--encoder", action="append", metavar="MODALITY=NAME",
                   help="encoder of a modality, e.g. image=resnet12 (repeatable)")
    for flag, kind, text in (
        ("--ways", int, "classes per training episode (default 5)"),
        ("--shots", int, "support samples per class (default 1)"),
        ("--queries", int, "query samples per class (default 15)"),
        ("--steps", int, "optimisation steps (default 1000)"),
        ("--seed", int, "seed of split, episodes, initialisation (default 0)"),
        ("--lr", float, "learning rate (default 1e-3)"),
        ("--dim", int, "shared embedding size (default 64)"),
        ("--val-every", int, "validate every N steps (default 100; 0 = at the end)"),
        ("--val-episodes", int, "episodes per validation (default 100)"),
        ("--patience", int, "early stopping after N validations without gain (0 = off)"),
        ("--batch-size", int, "batch of supervised pre-training for baselines (default 64)"),
        ("--checkpoint-every", int, "resumable checkpoint every N steps (default 100)"),
        ("--meta-batch", int, "episodes (tasks) per meta-update (default 1)"),
        ("--vmap-chunk", int, "with --task-batching vmap: tasks per vmap call (default 8)"),
        ("--inner-steps", int, "optimisation-based learners: inner steps in training"),
        ("--inner-lr", float, "optimisation-based learners: inner learning rate in training"),
        ("--eval-steps", int, "optimisation-based learners: inner steps at evaluation"),
        ("--eval-lr", float, "optimisation-based learners: inner learning rate at evaluation"),
        ("--val-ways", int, "classes per validation episode (default: as training, lowered to "
                            "what the validation split has)"),
        ("--val-shots", int, "support samples per class in validation (default: as training)"),
        ("--val-queries", int, "query samples per class in validation (default: as training)"),
    ):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--first-order", action="store_true",
                   help="optimisation-based learners: first-order meta-gradients")
    p.add_argument("--adapt", help="optimisation-based learners: what the inner loop adapts: "
                   "all, head, fusion, or comma-separated modalities")
    p.add_argument("--augment", action="append", metavar="KEY=VALUE",
                   help="training augmentation, e.g. rotate_classes=true, image.rotate=10, "
                   "strokes.jitter=0.01, modality_dropout=0.2 (repeatable; see the README)")
    p.add_argument("--task-batching", choices=("auto", "loop", "vmap"),
                   help="tasks of a meta-batch one after the other (loop) or at once with "
                   "torch.func.vmap (MAML family); auto: loop on CPU, vmap on CUDA")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out (once the new run is complete)")
    p.add_argument("--no-cache", action="store_true", help="do not cache decoded tensors")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--init-from", metavar="RUN", help="initialise the encoders from a run "
                   "(e.g. of `metamodal align`): pre-training for any learner")
    p.add_argument("--align-weight", type=float, metavar="W", help="add W times the "
                   "cross-modal alignment loss to the learner's loss (default 0: off)")
    p.add_argument("--align-modalities", help="modalities to align (default: all used)")
    _add_align_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("align", help="align the encoders of two or more modalities "
                       "(contrastive or regression); writes a run directory")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. image,caption")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--config", help="TOML config (flags override it)")
    p.add_argument("--encoder", action="append", metavar="MODALITY=NAME",
                   help="encoder of a modality, e.g. image=resnet12 (repeatable)")
    p.add_argument("--fusion", default="mean", help="fusion of the run's few-shot model "
                   "(default mean; alignment itself trains only the encoders)")
    for flag, kind, text in (
        ("--steps", int, "optimisation steps (default 1000)"),
        ("--seed", int, "seed"), ("--lr", float, "learning rate (default 1e-3)"),
        ("--dim", int, "embedding size (default 64)"),
        ("--batch-size", int, "samples per step (default 64)"),
        ("--val-every", int, "validate (Recall@1 on meta-val samples) every N steps"),
    ):
        p.add_argument(flag, type=kind, help=text)
    _add_align_flags(p)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("retrieve", help="cross-modal retrieval of an aligned run: Recall@K and "
                       "median rank both ways, with random and linear-map baselines")
    p.add_argument("run", help="run directory (of `align` or `train --align-weight`)")
    p.add_argument("--query-modality", required=True)
    p.add_argument("--target-modality", required=True)
    p.add_argument("--data", help="another dataset (default: the run's own)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--baseline-run", action="append", metavar="NAME=RUN",
                   help="also fit ridge / CCA maps on this run's encoders (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results (and top matches) as JSON")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("zero-shot", help="zero-shot (from class descriptions) and few+zero-shot "
                       "(AM3) accuracy on the run's test classes")
    p.add_argument("run", help="run directory")
    p.add_argument("--descriptions", help="descriptions.toml (default: the dataset's own)")
    p.add_argument("--descriptions-from", metavar="MODALITY",
                   help="describe each class by this modality of its samples (e.g. a caption "
                   "column) instead of descriptions.toml; queries are embedded without it")
    p.add_argument("--data", help="another dataset (default: the run's own)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", default="1,5", help="shot counts of few+zero-shot (default 1,5)")
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes-count", type=int, default=600)
    p.add_argument("--am3-steps", type=int, default=500,
                   help="meta-training episodes of the AM3 head (backbone frozen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results as JSON")
    p.set_defaults(func=cmd_zero_shot)

    p = sub.add_parser("eval", help="evaluate a run on test episodes")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="another dataset (default: the run's own)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--episodes", help="fixed episode file (episodes.jsonl)")
    p.add_argument("--modalities", help="evaluate with only these modalities")
    p.add_argument("--ablation", action="store_true", help="also each modality alone / left out")
    p.add_argument("--robustness", action="store_true", help="also missing-modality curves")
    p.add_argument("--json", help="write the results as JSON")
    _add_episode_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify query samples from a labelled support set")
    p.add_argument("run", help="run directory")
    p.add_argument("--support", required=True, help="labelled support samples (csv/jsonl/parquet)")
    p.add_argument("--query", required=True, help="query samples (csv/jsonl/parquet)")
    p.add_argument("--json", help="write the predictions as JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="write a run's report (plots, tables, index.html)")
    p.add_argument("run", help="run directory")
    _add_episode_flags(p)
    p.add_argument("--descriptions-from", metavar="MODALITY",
                   help="for a run with an alignment: zero-shot with classes described by this "
                   "modality of their samples (default: the dataset's descriptions.toml)")
    p.set_defaults(func=cmd_report)

    _add_cache_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metamodal`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MetamodalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
