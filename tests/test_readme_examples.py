"""The code examples of the README and of the documentation pages run as written.

Each example is found by the text that introduces it, in the file that holds it; a test fails
when the text or the block is gone, so an example cannot move without its test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from metamodal.learners import learners
from metamodal.model import FewShotModel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def block_after(path: Path, heading: str, language: str = "python") -> str:
    """The first ```language block after ``heading`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    assert heading in text, f"{path.name} no longer says {heading!r}"
    section = text[text.index(heading):]
    found = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert found, f"no {language} block after {heading!r} in {path.name}"
    return found.group(1)


def test_the_new_learner_example_registers_and_learns() -> None:
    code = block_after(DOCS / "learners.md", "A new learner is one file.")
    namespace: dict = {}
    try:
        exec(compile(code, "docs/learners.md", "exec"), namespace)  # the page's own example
        assert "cosine-proto" in learners.names()
        model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
                                   dim=8, fusion="mean", learner="cosine-proto")
        from metamodal.data.batch import ModalityBatch

        batch = {"m": ModalityBatch(torch.eye(3), torch.ones(3, dtype=torch.bool))}
        logits = model.adapt_predict(batch, torch.tensor([0, 1, 2]), batch, 3)
        assert logits.shape == (3, 3)
        logits.sum().backward()
        assert model.learner.scale.grad is not None
    finally:
        learners._entries.pop("cosine-proto", None)


def test_the_training_config_example_loads(tmp_path: Path) -> None:
    from metamodal.config import load_config

    block = block_after(DOCS / "cli.md", "A training config is a TOML file", "toml")
    path = tmp_path / "train.toml"
    path.write_text(block, encoding="utf-8")
    config = load_config(path)
    config.validate()
    assert config.learner_options == {"inner_steps": 1, "eval_steps": 1, "inner_lr": 5.0}
    assert config.meta_batch == 1 and config.preprocess == {"image": {"size": 16}}


def test_the_augmentation_example_is_a_valid_augment_table(tmp_path: Path) -> None:
    import tomllib

    from metamodal.data.augment import Augmentation

    block = block_after(DOCS / "cli.md", "## Augmentation", "toml")
    options = tomllib.loads(block)["augment"]
    kinds = {"image": "image", "strokes": "sequence", "sound": "audio", "caption": "text",
             "fields": "tabular"}
    with_text = Augmentation({**options, "rotate_classes": False}, kinds,
                             widths={"strokes": 4})
    assert with_text.active and set(with_text.modalities) == set(kinds)
    image_and_strokes = {k: options[k] for k in ("rotate_classes", "image", "strokes")}
    assert Augmentation(image_and_strokes, {k: kinds[k] for k in ("image", "strokes")},
                        widths={"strokes": 4}).rotate_classes


def test_the_api_guide_shows_the_readme_example() -> None:
    """The API guide's first example is the README's, which the next test runs."""
    guide = block_after(DOCS / "python-api.md", "## Train, then classify new classes")
    assert guide == block_after(README, "## Python API")


def test_the_python_api_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = block_after(README, "## Python API")
    # the same code at a size a test can afford: fewer classes and steps, shorter validation
    smaller = {"classes=100, per_class=20": "classes=15, per_class=16", "steps=600": "steps=2",
               "episodes_count=600": "episodes_count=3"}
    for old, new in smaller.items():
        assert old in code
        code = code.replace(old, new)
    code = code.replace('steps=2)', 'steps=2, val_episodes=5, dim=16)')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own example
    assert len(namespace["labels"]) == len(namespace["query"]) == 5 * 15
    assert namespace["proba"].shape == (75, 5)
    assert (tmp_path / "my-classifier" / "support.safetensors").is_file()


def test_the_lower_level_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metamodal

    code = block_after(DOCS / "python-api.md", "## Lower-level pieces")
    assert "episodes=600" in code
    code = code.replace("episodes=600", "episodes=3")  # a size a test can afford
    monkeypatch.chdir(tmp_path)
    metamodal.make_synthetic("data", classes=15, per_class=16)
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)  # the page's own example
    assert namespace["logits"].shape == (5 * 15, 5)
    assert torch.isfinite(namespace["loss"])
    assert 0.0 <= namespace["score"].accuracy <= 1.0 and namespace["score"].episodes == 3
