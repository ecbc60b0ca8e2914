"""Omniglot, images + pen strokes, whole alphabets held out: every configuration tried for the
real-data table (`docs/omniglot.md`), trained and evaluated in one run.

The shared Omniglot background sets (``images_background_small1/2``, ``strokes_background_small1/2``
archives: eight alphabets) are imported with ``metamodal import omniglot``: six alphabets train,
Tagalog validates (every setting was chosen on it), Sanskrit tests. Each configuration is
trained with `metamodal.train.trainer.Trainer` and measured on:

- **5-way 1-shot** (600 episodes, 15 queries per class) on the validation and the test alphabet,
  with the modalities it was trained on, and for fused models also with each modality alone;
- **20-way within-alphabet one-shot** on the test alphabet, Lake et al. (2015)-style runs (20
  characters of one alphabet, one drawer's drawing as support, another's as query), images
  only (strokes for a run on strokes alone), reported as the error over all query items with
  a 95% interval over runs;
- the same within the validation alphabet (17 ways: Tagalog has 17 characters), which chooses
  the test-time settings; and a proxy of Lake's official runs spread over **every** held-out
  test alphabet (20 runs within each, ``metamodal episodes --within '*'``);
- for fused models, the within-alphabet runs with both modalities in support and query, and
  with each alone, with the paired difference between the fused model and images alone.

``--split wide`` holds out three test alphabets (Sanskrit, Korean, Greek; four train) instead
of one, so that the proxy is spread over several alphabets. The configurations named ``recipe``
and ``fused-recipe`` are the shipped ``configs/omniglot.toml`` and ``configs/omniglot-fused.toml``
as they stand, and the ``recipe-...`` / ``fused-recipe-...`` ones the variants measured against
them; a configuration can start from another's finished run (`STARTS_FROM`) or combine others
into an ensemble (`ENSEMBLES`), and those are trained first where they are not yet. ``--run
NAME=DIR`` measures a run trained elsewhere instead of training one, and ``--test-time
plain,tta16+transduction10,reliability1`` measures each configuration with each test-time
setting (`metamodal.model.test_time`; parts ``ttaN``, ``transductionN``,
``confidenceX``, ``reliabilityX``, ``balance`` joined by ``+``; ``own`` keeps each run's, and
each ensemble member's, own settings), one row each. ``--baseline
NAME`` adds each configuration's paired difference against NAME's on the same within-alphabet
runs (images only, and with both modalities where the row is fused, against the baseline's
both modalities or its images), with the same test-time setting: a gain smaller than either
row's interval can show. ``--baseline 'NAME [SETTING]'`` pairs every row against that one row
instead (one run with and without a test-time setting), which may be a row of
``OUT/results.jsonl`` that this call does not measure.

Results go to ``OUT/results.jsonl`` (one line per configuration; a configuration already there
is not run again, so an interrupted benchmark resumes) and print as a table; the one-shot runs'
episode files go to ``OUT/episodes`` (a run given with ``--run`` is only read).

    python benchmarks/omniglot.py --source PATH/TO/omniglot --out omniglot-bench
    python benchmarks/omniglot.py --source ... --out ... --only images,fused-late --max-steps 200
    python benchmarks/omniglot.py --source ... --out wide --split wide \
        --run recipe=runs/omniglot --test-time plain,tta+transduction

The configuration with the best validation accuracy is ``configs/omniglot.toml`` (usable as
``metamodal train --config configs/omniglot.toml --data DIR``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from metamodal.api.ensemble import ensemble
from metamodal.config import TrainConfig, load_config
from metamodal.data.episode_files import protocol_episodes, read_episode_file, write_episode_file
from metamodal.datasets.omniglot import import_omniglot
from metamodal.evaluate.protocol import evaluate, evaluate_episodes
from metamodal.evaluate.stats import paired_difference, pooled_error
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.logger import read_metrics
from metamodal.train.trainer import Trainer

VAL, TEST = "Tagalog", "Sanskrit"
SPLITS = {"sanskrit": [TEST], "wide": [TEST, "Korean", "Greek"]}
"""Test alphabets of each ``--split`` (Tagalog validates in both)."""
TEST_TIME_KEYS = {"tta": ("tta", 8), "transduction": ("transduction", 1),
                  "balance": ("transduction_balance", 1),
                  "confidence": ("fusion_confidence", None),
                  "reliability": ("fusion_reliability", None)}
"""``--test-time`` parts: a name and its value (``tta16``), or the default (``tta`` is 8
copies, ``transduction`` 1 step, ``balance`` turns ``transduction_balance`` on);
`configs/omniglot.toml` has ``tta16+transduction10+balance``, and fusion's confidence 4 and
reliability 1 were chosen, like those, within the validation alphabet."""


def test_time_setting(name: str) -> dict[str, float] | None:
    """The test-time settings of a ``--test-time`` name: ``plain``, parts joined by ``+``
    (``tta16+transduction10+reliability1``), or ``own`` (None: each run keeps its own, each
    member of an ensemble its own); `ValueError` for an unknown one.

    Example:
        >>> test_time_setting("tta+reliability0.5")
        {'tta': 8, 'transduction': 0, 'transduction_balance': False, 'fusion_reliability': 0.5}
    """
    if name == "own":
        return None
    setting: dict[str, float] = {"tta": 0, "transduction": 0, "transduction_balance": False}
    for part in ([] if name == "plain" else name.split("+")):
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)?", part)
        if match is None or match[1] not in TEST_TIME_KEYS:
            raise ValueError(f"unknown test-time part {part!r} in {name!r}; use plain, own or "
                             f"{', '.join(TEST_TIME_KEYS)} with a number, joined by +")
        key, default = TEST_TIME_KEYS[match[1]]
        if match[2] is None and default is None:
            raise ValueError(f"{part!r} in {name!r} needs its weight, e.g. {part}1")
        number = float(match[2]) if match[2] is not None else default
        setting[key] = {"tta": int, "transduction": int,
                        "transduction_balance": bool}.get(key, float)(number)
    return setting


test_time_setting.__test__ = False  # a helper that pytest would take for a test


WITHIN_RUNS = 20
"""Runs within each held-out test alphabet in the all-alphabet proxy (``--within-runs``)."""
STROKES = {"coords": [0, 1], "follow": "image", "frame": [0, 0, 105, -105], "discrete": [3]}
"""Omniglot strokes are pixel coordinates of the 105 x 105 drawing, y pointing up."""
OWN_FRAME = {k: v for k, v in STROKES.items() if k != "follow"}
"""Strokes without an image to follow: their own affine maps, in the drawing's frame."""
AFFINE = {"rotate": 10, "shift": 0.1, "scale": 0.15, "shear": 10}
TRAJECTORY = {"strokes": "trajectory"}
TRAJECTORY_OPTIONS = {"strokes": {"pen": 3}}

REORDER = {"pen": 3, "shuffle_strokes": 0.5, "reverse_strokes": 0.5}
"""Strokes redrawn in a random order (half the drawings) and direction (half the strokes)."""
WIDE_VAL = {"val_ways": 17, "val_queries": 5}
"""20- and 60-way training validate within Tagalog's 17 characters."""
RESNET12_BF16: dict[str, Any] = {"modalities": ["image"], **WIDE_VAL,
                                 "encoders": {"image": "resnet12"}, "precision": "bf16",
                                 "augment": {"rotate_classes": True, "image": AFFINE}}
"""ResNet-12 on the images in bfloat16 with rotated classes and affine maps: the runs of
``configs/omniglot.toml``'s precision and ways, which name their ways, queries and steps."""


def _strokes_60way(encoder: dict[str, Any], redraw: dict[str, Any],
                   name: str = "trajectory") -> dict[str, Any]:
    """Strokes alone at 60 ways, 3 queries, in bfloat16, with rotated classes and affine maps:
    ``encoder`` options of encoder ``name`` beyond ``pen``, ``redraw`` options beyond the maps."""
    return {"modalities": ["strokes"], "ways": 60, "queries": 3, **WIDE_VAL, "precision": "bf16",
            "encoders": {"strokes": name}, "encoder_options": {"strokes": {"pen": 3, **encoder}},
            "augment": {"rotate_classes": True, "strokes": {**OWN_FRAME, **AFFINE, **redraw}}}


FUSED_60WAY: dict[str, Any] = {
    "ways": 60, "queries": 3, **WIDE_VAL, "precision": "bf16", "fusion": "late",
    "fusion_options": {"unimodal_loss": 1.0},
    "encoders": {**TRAJECTORY, "image": "resnet12"}, "encoder_options": TRAJECTORY_OPTIONS,
    "augment": {"rotate_classes": True, "image": AFFINE, "strokes": {**STROKES, **REORDER}}}
"""Images and redrawn strokes at 60 ways in bfloat16, late fusion with unimodal losses: the
runs of ``configs/omniglot-fused.toml``, which name their stroke encoder's options."""
BASE: dict[str, Any] = {"learner": "protonet", "ways": 5, "shots": 1, "queries": 15,
                        "val_every": 500, "val_episodes": 200, "checkpoint_every": 500}
CONFIGS: dict[str, dict[str, Any]] = {
    # 5-way 1-shot: each modality alone, then fused
    "images": {"modalities": ["image"]},
    "strokes-tcn": {"modalities": ["strokes"], "encoders": {"strokes": "tcn"}},
    "strokes-gru": {"modalities": ["strokes"], "encoders": {"strokes": "gru"}},
    "strokes-trajectory": {"modalities": ["strokes"], "encoders": TRAJECTORY,
                           "encoder_options": TRAJECTORY_OPTIONS},
    "fused-gated-tcn": {"encoders": {"strokes": "tcn"}},
    "fused-gated": {"encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS},
    "fused-late": {"fusion": "late", "encoders": TRAJECTORY,
                   "encoder_options": TRAJECTORY_OPTIONS},
    "fused-gated-dropout": {"encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS,
                            "augment": {"modality_dropout": 0.3}},
    "fused-late-dropout": {"fusion": "late", "encoders": TRAJECTORY,
                           "encoder_options": TRAJECTORY_OPTIONS,
                           "augment": {"modality_dropout": 0.3}},
    "fused-late-unimodal": {"fusion": "late", "fusion_options": {"unimodal_loss": 1.0},
                            "encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS},
    # the same three with class rotations and affine maps (strokes follow their image)
    "images-aug": {"modalities": ["image"],
                   "augment": {"rotate_classes": True, "image": AFFINE}},
    "strokes-aug": {"modalities": ["strokes"], "encoders": TRAJECTORY,
                    "encoder_options": TRAJECTORY_OPTIONS,
                    "augment": {"rotate_classes": True,
                                "strokes": {**OWN_FRAME, **AFFINE}}},
    "fused-late-unimodal-aug": {"fusion": "late", "fusion_options": {"unimodal_loss": 1.0},
                                "encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS,
                                "augment": {"rotate_classes": True, "image": AFFINE,
                                            "strokes": STROKES}},
    # 20-way within-alphabet one-shot (images at test time)
    "images-20way": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL},
    "images-20way-rot": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL,
                         "augment": {"rotate_classes": True}},
    "images-20way-rot-affine": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL,
                                "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-60way-rot-affine": {"modalities": ["image"], "ways": 60, "queries": 5, **WIDE_VAL,
                                "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-56px": {"modalities": ["image"], "ways": 20, "queries": 5,
                                     **WIDE_VAL, "preprocess": {"image": {"size": 56}},
                                     "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-resnet12": {"modalities": ["image"], "ways": 20, "queries": 5,
                                         **WIDE_VAL, "encoders": {"image": "resnet12"},
                                         "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-resnet12-4000": {"modalities": ["image"], "ways": 20, "queries": 5,
                                              **WIDE_VAL, "val_every": 1000,
                                              "encoders": {"image": "resnet12"},
                                              "augment": {"rotate_classes": True,
                                                          "image": AFFINE}},
    "images-20way-rot-affine-resnet12-8000": {"modalities": ["image"], "ways": 20, "queries": 5,
                                              **WIDE_VAL, "val_every": 1000,
                                              "encoders": {"image": "resnet12"},
                                              "augment": {"rotate_classes": True,
                                                          "image": AFFINE}},
    "images-20way-rot-affine-resnet12-8000-bf16": {**RESNET12_BF16, "ways": 20, "queries": 5,
                                                   "val_every": 1000},
    "images-20way-rot-affine-resnet12-5500-bf16": {**RESNET12_BF16, "ways": 20, "queries": 5,
                                                   "val_every": 1000},
    "images-60way-rot-affine-resnet12-6000-bf16": {**RESNET12_BF16, "ways": 60, "queries": 3,
                                                   "val_every": 1000},
    "images-60way-rot-affine-resnet12-3000-bf16": {**RESNET12_BF16, "ways": 60, "queries": 3,
                                                   "val_every": 500},
    "strokes-60way-rot-affine-3000-bf16": _strokes_60way({}, {}),
    "strokes-60way-rot-affine-reorder-3000-bf16": _strokes_60way({}, REORDER),
    "strokes-60way-rot-affine-reorder-all-3000-bf16": _strokes_60way(
        {}, {**REORDER, "shuffle_strokes": 1.0}),
    "strokes-60way-rot-affine-reorder-128ch-3000-bf16": _strokes_60way({"channels": 128},
                                                                       REORDER),
    "strokes-60way-rot-affine-reorder-128pt-3000-bf16": _strokes_60way({"points": 128}, REORDER),
    "strokes-60way-rot-affine-reorder-256pt-3000-bf16": _strokes_60way({"points": 256}, REORDER),
    "strokes-60way-rot-affine-reorder-128pt-128ch-3000-bf16": _strokes_60way(
        {"points": 128, "channels": 128}, REORDER),
    "strokes-60way-rot-affine-reorder-256pt-128ch-3000-bf16": _strokes_60way(
        {"points": 256, "channels": 128}, REORDER),
    "strokes-60way-rot-affine-reorder-256pt-9000-bf16": _strokes_60way({"points": 256}, REORDER),
    "strokes-60way-rot-affine-reorder-strokeset-3000-bf16": _strokes_60way({}, REORDER,
                                                                           "stroke-set"),
    "images-20way-rot-affine-5000": {"modalities": ["image"], "ways": 20, "queries": 5,
                                     **WIDE_VAL, "val_every": 1000,
                                     "augment": {"rotate_classes": True, "image": AFFINE}},
    "images+strokes-20way-rot-affine": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-20way-rot-affine-unimodal": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0},
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-20way-rot-affine-unimodal-resnet12-4000": {
        "ways": 20, "queries": 5, **WIDE_VAL, "val_every": 1000, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0},
        "encoders": {**TRAJECTORY, "image": "resnet12"}, "encoder_options": TRAJECTORY_OPTIONS,
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-60way-rot-affine-reorder-unimodal-resnet12-3000-bf16": FUSED_60WAY,
    "images+strokes-60way-rot-affine-reorder-256pt-unimodal-resnet12-3000-bf16": {
        **FUSED_60WAY, "encoder_options": {"strokes": {"pen": 3, "points": 256}}},
    "images+strokes-60way-rot-affine-reorder-256pt-128ch-unimodal-resnet12-3000-bf16": {
        **FUSED_60WAY, "encoder_options": {"strokes": {"pen": 3, "points": 256,
                                                       "channels": 128}}},
    "images+strokes-60way-rot-affine-reorder-256pt-unimodal-distill-resnet12-3000-bf16": {
        **FUSED_60WAY, "fusion_options": {"unimodal_loss": 1.0, "distill": 1.0},
        "encoder_options": {"strokes": {"pen": 3, "points": 256}}},
    "images+strokes-60way-rot-affine-reorder-256pt-unimodal-predict-resnet12-3000-bf16": {
        **FUSED_60WAY, "encoder_options": {"strokes": {"pen": 3, "points": 256}},
        "align_weight": 0.5, "align_objective": "regression",
        "align_options": {"direction": "image->strokes", "regression_loss": "cosine"}},
    "images+strokes-20way-rot-affine-align": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0}, "align_weight": 0.5,
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
}
STEPS = {"images-60way-rot-affine": 1000, "images-20way-rot-affine-56px": 1000,
         "images-20way-rot-affine-resnet12": 2000, "images-20way-rot-affine-5000": 5000,
         "images-20way-rot-affine-resnet12-4000": 4000,
         "images-20way-rot-affine-resnet12-8000": 8000,
         "images-20way-rot-affine-resnet12-8000-bf16": 8000,
         "images-20way-rot-affine-resnet12-5500-bf16": 5500,
         "images-60way-rot-affine-resnet12-6000-bf16": 6000,
         "images-60way-rot-affine-resnet12-3000-bf16": 3000,
         "strokes-60way-rot-affine-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-all-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-128ch-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-128pt-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-256pt-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-128pt-128ch-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-256pt-128ch-3000-bf16": 3000,
         "strokes-60way-rot-affine-reorder-256pt-9000-bf16": 9000,
         "strokes-60way-rot-affine-reorder-strokeset-3000-bf16": 3000,
         "images+strokes-60way-rot-affine-reorder-unimodal-resnet12-3000-bf16": 3000,
         "images+strokes-60way-rot-affine-reorder-256pt-unimodal-resnet12-3000-bf16": 3000,
         "images+strokes-60way-rot-affine-reorder-256pt-128ch-unimodal-resnet12-3000-bf16":
             3000,
         "images+strokes-60way-rot-affine-reorder-256pt-unimodal-distill-resnet12-3000-bf16":
             3000,
         "images+strokes-60way-rot-affine-reorder-256pt-unimodal-predict-resnet12-3000-bf16":
             3000,
         "images+strokes-20way-rot-affine-unimodal-resnet12-4000": 4000}
"""Steps of a configuration when not the default (``--steps``; ``--max-steps`` caps both)."""

REPO = Path(__file__).resolve().parent.parent
IMAGES_RECIPE = load_config(REPO / "configs" / "omniglot.toml")
FUSED_RECIPE = load_config(REPO / "configs" / "omniglot-fused.toml")
"""The shipped recipes, each file read once."""
W48 = {"widths": [48, 96, 192, 384]}
"""`configs/omniglot.toml`'s ResNet-12 widths."""


def recipe_row(recipe: TrainConfig, **changes: Any) -> dict[str, Any]:
    """A shipped recipe as a row of `CONFIGS`: every `TrainConfig` value but ``data`` (the
    benchmark's dataset), with ``changes`` replacing whole keys (a table such as
    ``encoder_options`` too).

    Example:
        >>> recipe_row(IMAGES_RECIPE, seed=1)["seed"], recipe_row(IMAGES_RECIPE)["ways"]
        (1, 60)
    """
    values = recipe.updated(changes).to_dict()
    del values["data"]
    return values


_FUSED_STROKES = FUSED_RECIPE.encoder_options["strokes"]
CONFIGS.update({
    # the shipped recipes as they stand, and the variants measured against them
    # (their validation in training uses the files' test-time settings)
    "recipe": recipe_row(IMAGES_RECIPE),
    "recipe-w32": recipe_row(IMAGES_RECIPE, encoder_options={}),
    "recipe-w32-seed1": recipe_row(IMAGES_RECIPE, encoder_options={}, seed=1),
    "recipe-w32-d256": recipe_row(IMAGES_RECIPE, encoder_options={}, dim=256),
    "recipe-w64": recipe_row(IMAGES_RECIPE,
                              encoder_options={"image": {"widths": [64, 128, 256, 512]}}),
    "fused-recipe": recipe_row(FUSED_RECIPE),
    "fused-recipe-seed1": recipe_row(FUSED_RECIPE, seed=1),
    "fused-recipe-w48": recipe_row(FUSED_RECIPE,
                                    encoder_options={"strokes": _FUSED_STROKES, "image": W48}),
    "fused-recipe-128ch": recipe_row(FUSED_RECIPE, encoder_options={
        "strokes": {**_FUSED_STROKES, "channels": 128}}),
    "fused-recipe-on-recipe": recipe_row(FUSED_RECIPE, freeze=["image"], encoder_options={
        "strokes": _FUSED_STROKES, "image": W48}),
    "fused-recipe-strokeimage": recipe_row(
        FUSED_RECIPE, encoders={**FUSED_RECIPE.encoders, "strokes": "stroke-image"},
        encoder_options={"strokes": {"pen": 3, "points": 256}}),
})
STARTS_FROM = {"fused-recipe-on-recipe": "recipe"}
"""Configurations trained from another one's finished run (``init_from``; here with the image
encoder held fixed): that one is trained first where it is not yet."""
ENSEMBLES: dict[str, dict[str, Any]] = {
    "recipe-w32-x2": {"runs": ["recipe-w32", "recipe-w32-seed1"], "method": "mean",
                      "ways": 17, "queries": 1},
    "fused-recipe-x2": {"runs": ["fused-recipe", "fused-recipe-seed1"], "method": "mean",
                        "ways": 17, "queries": 1},
    "recipe+strokes": {"runs": ["recipe", "strokes-60way-rot-affine-reorder-256pt-3000-bf16"],
                       "method": "stack", "ways": 17, "queries": 5, "episodes_count": 200,
                       "tta": 16, "transduction": 10, "transduction_balance": True},
    "recipe+fused-recipe": {"runs": ["recipe", "fused-recipe"], "method": "mean",
                            "ways": 17, "queries": 1},
    "recipe+fused-recipe-joint": {"runs": ["recipe", "fused-recipe"], "method": "mean",
                                  "ways": 17, "queries": 1, "joint_transduction": True},
}
"""Ensembles of configurations (`metamodal.api.ensemble`'s options: the member configurations,
trained first where they are not yet, then fitted within the validation alphabet)."""


def train_row(name: str, out: Path, data: Path, default_steps: int, max_steps: int | None,
              trained: dict[str, tuple[Path, float | None, float | None]],
              ) -> tuple[Path, float | None, float | None]:
    """Train configuration ``name`` (of `CONFIGS` or `ENSEMBLES`) into ``OUT/runs/NAME``, first
    the configurations it starts from or combines; a finished run is kept as it is (an
    interrupted one resumes). ``trained`` remembers what this call already saw. Returns the
    run directory, the training seconds (an ensemble's: its members' summed) and the best
    validation accuracy (None for an ensemble)."""
    if name in trained:
        return trained[name]
    run_dir = out / "runs" / name
    if name in ENSEMBLES:
        options = dict(ENSEMBLES[name])
        members = [train_row(member, out, data, default_steps, max_steps, trained)
                   for member in options.pop("runs")]
        if not (run_dir / "config.toml").exists():  # written whole, by a rename
            ensemble([str(member[0]) for member in members], out=str(run_dir), **options)
        seconds = [member[1] for member in members]
        trained[name] = (run_dir, None if None in seconds else round(sum(seconds), 1), None)
        return trained[name]
    config = TrainConfig(data=str(data), steps=STEPS.get(name, default_steps)).updated(
        {**BASE, **CONFIGS[name]})
    if max_steps is not None:
        config = config.updated({"steps": min(config.steps, max_steps)})
    if name in STARTS_FROM:
        source = train_row(STARTS_FROM[name], out, data, default_steps, max_steps, trained)
        config = config.updated({"init_from": str(source[0])})
    started = time.perf_counter()
    result = Trainer(config, run_dir, progress=False).fit(resume=True)
    print(f"{name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    trained[name] = (result.run_dir, round(result.seconds, 1), result.best_val_accuracy)
    return trained[name]


def alphabets_holding(classes: list[str], groups: list[str | None]) -> list[str]:
    """The groups (alphabets) among ``groups`` (each sample's, None where it has none) that
    hold some of ``classes`` (named ``ALPHABET/character``), sorted.

    Example:
        >>> alphabets_holding(["Greek/c1", "Korean/c2"], ["Greek", None, "Latin", "Korean"])
        ['Greek', 'Korean']
    """
    return sorted(g for g in set(groups) if g is not None
                  and any(c.startswith(g + "/") for c in classes))


def within_ways(classes: list[str], groups: list[str]) -> int:
    """The ways of a one-shot run within any one of ``groups``: 20, or fewer where a group
    holds fewer of ``classes``."""
    return min(20, min(len({c for c in classes if c.startswith(g + "/")}) for g in groups))


def _within(model: Any, store: Any, prepared: Any, classes: list[str], groups: list[str],
            runs: int, episode_dir: Path, tag: str,
            modalities: list[str] | None) -> tuple[Any, list[Any]]:
    """Lake-style one-shot runs within ``groups`` (20 ways, or all of a smaller alphabet's
    characters; run ``k`` in group ``k % len(groups)``), written to ``episode_dir/TAG.jsonl``
    (the folder exists) and read back: the result and the episodes."""
    lake = protocol_episodes(store.ids, store.labels, ways=within_ways(classes, groups),
                             shots=1, queries=1,
                             runs=runs, seed=0, classes=classes,
                             groups=prepared.dataset.groups, within=groups)
    path = write_episode_file(episode_dir / f"{tag}.jsonl", lake)
    result = evaluate_episodes(model, store, read_episode_file(path, store),
                               modalities=modalities)
    return result, lake


def _error(accuracies: list[float], episodes: list[Any]) -> dict[str, float]:
    """The pooled error over all query items of ``episodes`` and its 95% interval."""
    error, half = pooled_error(accuracies, [len(e.query_ids) for e in episodes])
    return {"error": error, "ci95": half}


def _rounded(accuracies: list[float]) -> list[float]:
    """Per-run accuracies as stored in ``results.jsonl`` (six decimals)."""
    return [round(float(a), 6) for a in accuracies]


def _row(name: str, run_dir: Path, seconds: float | None, best_val: float | None, *,
         episode_dir: Path, episodes: int, runs: int,
         test_time: dict[str, float] | None = None,
         within_runs: int = WITHIN_RUNS) -> dict[str, Any]:
    """Evaluate a trained run: 5-way 1-shot on val / test, Lake-style within-alphabet runs on
    the validation alphabet (``runs``), on Sanskrit and spread over every test alphabet
    (``within_runs`` in each; with test-time settings, each modality alone at 5 ways and the
    100 Sanskrit runs are left out). The runs' episode files go to ``episode_dir``; the run
    directory is only read."""
    run = load_run(run_dir, test_time=test_time)
    config = run.config  # an ensemble's: its first member's
    prepared = load_run_data(run)
    split, store, model = prepared.split, prepared.store, run.model
    modalities = list(run.model.modalities)
    end = next((r for r in reversed(read_metrics(run_dir)) if r.get("event") == "end"), {})
    row: dict[str, Any] = {"name": name, "train_seconds": seconds or end.get("train_seconds"),
                           # fewer than configured where max_minutes ended training
                           "steps": end.get("step", config.steps), "modalities": modalities,
                           "selection_val": best_val,
                           "selection_shape": f"{config.val_ways or config.ways}-way",
                           "test_time": {"own": True} if test_time is None else dict(test_time)}

    def five_way(classes: list[str], only: list[str] | None) -> dict[str, float]:
        result = evaluate(model, store, classes, ways=5, shots=1, queries=15, episodes=episodes,
                          seed=0, modalities=only)
        return {"accuracy": result.accuracy, "ci95": result.ci95}

    row["val_5way"] = five_way(split.val, None)
    row["test_5way"] = five_way(split.test, None)
    # only plain rows measure each modality alone at 5 ways, and Sanskrit's 100 runs
    full = test_time is not None and not any(test_time.values())
    if len(modalities) > 1 and full:
        row["test_5way_alone"] = {m: five_way(split.test, [m]) for m in modalities}
        row["val_5way_alone"] = {m: five_way(split.val, [m]) for m in modalities}
    primary = ["image"] if "image" in modalities else modalities[:1]  # in the within runs
    alphabets = alphabets_holding(split.test, prepared.dataset.groups)
    result, lake = _within(model, store, prepared, split.val, [VAL], runs, episode_dir,
                           "val-within", primary)
    row["val_within_error"] = _error(result.accuracies, lake)
    row["val_within_accuracies"] = _rounded(result.accuracies)  # per run: paired differences
    if TEST in alphabets and full:
        result, lake = _within(model, store, prepared, split.test, [TEST], runs, episode_dir,
                               "lake-20way", primary)
        row["test_20way_error"] = _error(result.accuracies, lake)
    result, lake = _within(model, store, prepared, split.test, alphabets,
                           within_runs * len(alphabets), episode_dir, "test-within-all",
                           primary)
    row["test_within_all_error"] = _error(result.accuracies, lake)
    row["test_within_accuracies"] = _rounded(result.accuracies)
    row["test_within_by_alphabet"] = {  # run k lies within alphabet k % len(alphabets)
        a: _error(result.accuracies[i::len(alphabets)], lake[i::len(alphabets)])
        for i, a in enumerate(alphabets)}
    if len(modalities) > 1:  # fusion: both modalities in support and query, and each alone
        fused = {}
        for tag, stage, classes, groups in (("val", "val", split.val, [VAL]),
                                            ("test", "test", split.test, alphabets)):
            count = runs if stage == "val" else within_runs * len(alphabets)
            results = {}
            for only in (None, *([m] for m in modalities)):
                key = "fused" if only is None else only[0]
                results[key], lake = _within(model, store, prepared, classes, groups, count,
                                             episode_dir, f"{tag}-within-all", only)
                fused[f"{tag}_{key}"] = _error(results[key].accuracies, lake)
            row.setdefault("fused_within_accuracies", {})[stage] = _rounded(
                results["fused"].accuracies)  # per run: paired differences between runs
            best = max(modalities, key=lambda m: -fused[f"val_{m}"]["error"])
            difference = paired_difference(results["fused"], results[best])
            fused[f"{tag}_fused_minus_{best}"] = {"points": 100 * difference.mean,
                                                 "ci95": 100 * difference.ci95}
        row["within_modalities"] = fused
    return row


def _cell(value: dict[str, float] | None, key: str = "accuracy") -> str:
    if not value:
        return "-"
    return f"{100 * value[key]:.1f} ± {100 * value['ci95']:.1f}"


def _minutes(row: dict[str, Any]) -> str:
    seconds = row.get("train_seconds")
    return f"{row['steps']} steps" + (f", {seconds / 60:.1f} min" if seconds else "")


def print_table(rows: list[dict[str, Any]], within_runs: int = WITHIN_RUNS) -> None:
    """The tables of `docs/omniglot.md`: accuracy / error with 95% intervals, training time;
    then, for rows with within-alphabet runs on the validation alphabet, the Lake-style
    errors (validation, Sanskrit, every test alphabet) and, for fused models, both
    modalities against each alone."""
    print("| configuration | validation in training | val 5-way 1-shot | test 5-way 1-shot | "
          "test, each modality alone | test 20-way within-alphabet error (images) | training |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        alone = row.get("test_5way_alone")
        alone_text = ", ".join(f"{m} {_cell(v)}" for m, v in alone.items()) if alone else "-"
        selection = ("-" if row["selection_val"] is None else
                     f"{100 * row['selection_val']:.1f} ({row['selection_shape']})")
        print(f"| {row['name']} | {selection} | {_cell(row['val_5way'])} | "
              f"{_cell(row['test_5way'])} | "
              f"{alone_text} | {_cell(row.get('test_20way_error'), 'error')} | "
              f"{_minutes(row)} |")
    within = [row for row in rows if "val_within_error" in row]
    if not within:
        return
    print("\nOne-shot within-alphabet error, images only, or strokes for a run on strokes "
          "alone (validation: 17-way within Tagalog; "
          f"test: {within_runs} 20-way runs within each test alphabet)\n")
    print("| configuration | test time | val within Tagalog | test, every test alphabet | "
          "by alphabet | test within Sanskrit (100 runs) |")
    print("|---|---|---|---|---|---|")
    for row in within:
        by = ", ".join(f"{a} {_cell(v, 'error')}"
                       for a, v in row.get("test_within_by_alphabet", {}).items())
        print(f"| {row['name']} | {_test_time(row)} | {_cell(row['val_within_error'], 'error')} "
              f"| {_cell(row.get('test_within_all_error'), 'error')} | {by or '-'} | "
              f"{_cell(row.get('test_20way_error'), 'error')} |")
    fused = [row for row in within if "within_modalities" in row]
    if not fused:
        return
    print("\nFusion, one-shot within-alphabet error with both modalities in support and query "
          "(the same runs), and the paired difference fused - better single modality "
          "(chosen on validation), in points (negative: fusion pays); on test also fused - "
          "image within each test alphabet\n")
    print("| configuration | test time | split | fused | image | strokes | fused - better | "
          "fused - image, by alphabet |")
    print("|---|---|---|---|---|---|---|---|")
    for row in fused:
        cells = row["within_modalities"]
        for stage in ("val", "test"):
            gap = next(v for k, v in cells.items() if k.startswith(f"{stage}_fused_minus_"))
            print(f"| {row['name']} | {_test_time(row)} | {stage} | "
                  f"{_cell(cells[f'{stage}_fused'], 'error')} | "
                  f"{_cell(cells.get(f'{stage}_image'), 'error')} | "
                  f"{_cell(cells.get(f'{stage}_strokes'), 'error')} | "
                  f"{_signed(-gap['points'])} ± {gap['ci95']:.1f} | "
                  f"{_fusion_by_alphabet(row) if stage == 'test' else '-'} |")


def _fusion_by_alphabet(row: dict[str, Any]) -> str:
    """Fused - image within each test alphabet, paired over its runs (run ``k`` lies within
    alphabet ``k % len(alphabets)``), from the per-run accuracies kept ("-" where they are
    not)."""
    alphabets = list(row.get("test_within_by_alphabet", {}))
    image = row.get("test_within_accuracies")
    fused = row.get("fused_within_accuracies", {}).get("test")
    if not alphabets or not image or not fused or len(image) != len(fused):
        return "-"
    count = len(alphabets)
    return ", ".join(f"{a} {_gap(fused[i::count], image[i::count])}"
                     for i, a in enumerate(alphabets))


def print_paired(rows: list[dict[str, Any]], baseline: str,
                 fixed: dict[str, Any] | None = None) -> None:
    """Each configuration against ``baseline`` measured with the same test-time setting (or,
    where ``baseline`` is a row's label, ``NAME [SETTING]``, against that row, ``fixed`` where
    it is not among ``rows``): the paired difference of the one-shot within-alphabet errors on
    the same runs, images only as in `print_table`'s second table, and for a fused row also
    with both modalities, against the baseline's both modalities, or its images where it has
    no others (row minus baseline, in points, with its 95% interval; negative: the row is
    better)."""
    def run_name(row: dict[str, Any]) -> str:
        return row["name"].split(" [", 1)[0]

    if fixed is None and " [" in baseline:  # a configuration's own name also labels its plain row
        fixed = next((row for row in rows if row["name"] == baseline), None)
    bases = {_test_time(row): row for row in rows if run_name(row) == baseline}
    print(f"\nPaired against {baseline}{'' if fixed else ' with the same test-time setting'}: "
          "one-shot within-alphabet error of the row minus the baseline's on the same runs, "
          "images only as in the table above, and, where the row is fused, with both "
          "modalities against the baseline's (its images where it has no strokes), in points "
          "(negative: the row is better)\n")
    print("| configuration | test time | val within Tagalog | test, every test alphabet | "
          "val, both modalities | test, both modalities |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if fixed is None and run_name(row) == baseline:
            continue
        base = fixed or bases.get(_test_time(row))
        if base is None or base is row or "val_within_error" not in row:
            continue
        fused = row.get("fused_within_accuracies", {})
        base_fused = base.get("fused_within_accuracies") or (
            {stage: base.get(f"{stage}_within_accuracies") for stage in ("val", "test")}
            if fused else {})
        cells = [_gap(row.get(f"{stage}_within_accuracies"),
                      base.get(f"{stage}_within_accuracies")) for stage in ("val", "test")]
        cells += [_gap(fused.get(stage), base_fused.get(stage)) for stage in ("val", "test")]
        print(f"| {row['name']} | {_test_time(row)} | {' | '.join(cells)} |")


def _gap(accuracies: list[float] | None, base: list[float] | None) -> str:
    """The error of the runs scored ``accuracies`` minus that of the same runs scored
    ``base``, paired ("-" where either is missing, as for rows measured before per-run
    accuracies were kept)."""
    if not accuracies or not base or len(accuracies) != len(base):
        return "-"
    difference = paired_difference(base, accuracies)  # accuracy lost = error gained
    return f"{_signed(100 * difference.mean)} ± {100 * difference.ci95:.1f}"


def _signed(points: float) -> str:
    """``points`` to one decimal with its sign, ``+0.0`` for a difference that rounds to
    zero (never ``-0.0``)."""
    return f"{round(points, 1) + 0.0:+.1f}"


def _test_time(row: dict[str, Any]) -> str:
    setting = row.get("test_time") or {}
    if setting.get("own"):
        return "each run's own"
    parts = [f"tta {setting['tta']}" if setting.get("tta") else "",
             f"transduction {setting['transduction']}" if setting.get("transduction") else "",
             "balanced" if setting.get("transduction_balance") else "",
             f"confidence {setting['fusion_confidence']:g}"
             if setting.get("fusion_confidence") else "",
             f"reliability {setting['fusion_reliability']:g}"
             if setting.get("fusion_reliability") else ""]
    return ", ".join(p for p in parts if p) or "plain"


def _label(name: str, setting: str) -> str:
    """A row's name: the configuration's, with its test-time setting unless plain."""
    return name if setting == "plain" else f"{name} [{setting}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder of the Omniglot archives")
    parser.add_argument("--out", required=True, help="work folder (dataset, runs, results)")
    parser.add_argument("--only", help="comma-separated configurations (default: all)")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps of a configuration without its own count in "
                        "STEPS (default 2000)")
    parser.add_argument("--max-steps", type=int,
                        help="cap every configuration's steps (a smoke run)")
    parser.add_argument("--episodes", type=int, default=600, help="5-way test episodes")
    parser.add_argument("--runs", type=int, default=100, help="20-way within-alphabet runs")
    parser.add_argument("--within-runs", type=int, default=WITHIN_RUNS,
                        help=f"runs within each test alphabet (default {WITHIN_RUNS})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="sanskrit",
                        help="held-out test alphabets: sanskrit (one) or wide (three)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="measure a run trained elsewhere under NAME (repeatable); with "
                        "--run, only the runs given are measured")
    parser.add_argument("--test-time", default="plain",
                        help="comma-separated test-time settings: plain, own (each run's, "
                        "each ensemble member's), or parts joined by + "
                        "(tta16+transduction10+reliability1; tta alone is 8 copies, "
                        "transduction alone 1 step)")
    parser.add_argument("--baseline", metavar="NAME",
                        help="also print each configuration's paired difference against "
                        "NAME's (a configuration or --run name) on the same runs, with the "
                        "same test-time setting; 'NAME [SETTING]': against that one row, "
                        "which may be one measured before, in OUT's results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = args.test_time.split(",")
    try:
        test_times = {setting: test_time_setting(setting) for setting in settings}
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    data = out / "omniglot"
    if not (data / "dataset.toml").exists() and not args.run:
        import_omniglot(args.source, data, val_groups=[VAL], test_groups=SPLITS[args.split],
                        progress=False)
    given = dict(item.split("=", 1) for item in args.run if "=" in item)
    if len(given) != len(args.run):
        parser.error("--run takes NAME=DIR")
    known = [*CONFIGS, *ENSEMBLES]
    names = list(given) if given else (args.only.split(",") if args.only else known)
    unknown = [n for n in names if n not in known and n not in given]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(known)}")
    labels = [_label(name, setting) for name in names for setting in settings]
    results_file = out / "results.jsonl"
    done = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[row["name"]] = row
    if args.baseline is not None and args.baseline not in names + labels + list(done):
        parser.error(f"--baseline {args.baseline} is neither among the measured configurations "
                     f"{', '.join(names)} nor a row of {results_file}")
    order, trained = [], {}
    for name in names:
        for setting in settings:
            label = _label(name, setting)
            order.append(label)
            if label in done:
                continue
            if name in given:
                run_dir, seconds, best_val = Path(given[name]), None, None
            else:
                run_dir, seconds, best_val = train_row(name, out, data, args.steps,
                                                       args.max_steps, trained)
            row = _row(label, run_dir, seconds, best_val,
                       episode_dir=out / "episodes", episodes=args.episodes,
                       runs=args.runs, test_time=test_times[setting],
                       within_runs=args.within_runs)
            done[label] = row
            with results_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    measured = [done[n] for n in order if n in done]
    print_table(measured, args.within_runs)
    if args.baseline is not None:
        print_paired(measured, args.baseline, None if args.baseline in names + labels
                     else done[args.baseline])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
