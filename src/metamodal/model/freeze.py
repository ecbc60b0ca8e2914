"""Freezing parts of a `FewShotModel` (``--freeze``): which weights a name covers, switching
their gradients off, and keeping their modules in evaluation mode.

A freeze name is ``encoders`` (every modality's encoder), ``backbone`` (the encoders and the
fusion) or a modality name (that modality's encoder). A frozen parameter keeps
``requires_grad=False``: the trainer leaves it out of the optimiser, and the inner loop of the
optimisation-based learners (`metamodal.learners.gradient.GradientLearner`) does not adapt it
either, in training and in evaluation alike. The learner's own tensors that stand for a frozen
weight (Meta-SGD's per-weight and MAML++'s per-step learning rates, MAML++'s per-step
BatchNorm weights) are frozen with it. Frozen modules stay in evaluation mode while the rest
trains (`train_mode`): their BatchNorm statistics do not move and their dropout is off.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metamodal.errors import ConfigError

FREEZE_GROUPS = ("encoders", "backbone")
"""The freeze names besides the model's modality names."""


def freeze_choices(modalities: Sequence[str]) -> list[str]:
    """The valid freeze names of a model with ``modalities``.

    Example:
        >>> freeze_choices(["image", "sound"])
        ['encoders', 'backbone', 'image', 'sound']
    """
    return [*FREEZE_GROUPS, *modalities]


def frozen_prefixes(model: nn.Module, names: Sequence[str], *,
                    source: str | None = None) -> list[str]:
    """The state-dict prefixes (``backbone.encoders.image.``, ...) that ``names`` freeze in
    ``model`` (a `FewShotModel`).

    Raises:
        ConfigError: a name is neither ``encoders``, ``backbone`` nor one of the model's
            modalities (key ``freeze``; the fix lists the valid names).
    """
    valid = freeze_choices(model.modalities)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"cannot freeze {', '.join(map(repr, unknown))}: not a part of this "
                          "model", file=source, column="freeze",
                          fix=f"freeze some of: {', '.join(valid)}")
    prefixes = []
    for name in dict.fromkeys(names):
        prefixes.append({"backbone": "backbone.", "encoders": "backbone.encoders."}.get(
            name, f"backbone.encoders.{name}."))
    return prefixes


def frozen_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules of ``model`` that ``names`` freeze (checked as in `frozen_prefixes`)."""
    frozen_prefixes(model, names)
    modules = []
    for name in dict.fromkeys(names):
        if name == "backbone":
            modules.append(model.backbone)
        elif name == "encoders":
            modules.append(model.backbone.encoders)
        else:
            modules.append(model.backbone.encoders[name])
    return modules


def freeze(model: nn.Module, names: Sequence[str], *, source: str | None = None) -> list[str]:
    """Switch the gradients of the parameters ``names`` cover off (in place); returns the
    frozen parameters' names (state-dict names, learner tensors included).

    Raises:
        ConfigError: an unknown name (`frozen_prefixes`).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=4, fusion="mean", learner="protonet")
        >>> [n.split(".")[-1] for n in freeze(model, ["m"])][:2]
        ['weight', 'bias']
        >>> any(p.requires_grad for p in model.backbone.parameters())
        False
    """
    prefixes = tuple(frozen_prefixes(model, names, source=source))
    if not prefixes:
        return []
    frozen = []
    backbone_names = set()
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            frozen.append(name)
            backbone_names.add(name.removeprefix("backbone."))
    # learner tensors keyed by a backbone weight's name (dots as "__"): Meta-SGD, MAML++
    for name, param in model.learner.named_parameters():
        if name.rpartition(".")[2].replace("__", ".") in backbone_names:
            param.requires_grad_(False)
            frozen.append(f"learner.{name}")
    return frozen


def train_mode(model: nn.Module, names: Sequence[str]) -> None:
    """``model.train()``, then the modules ``names`` freeze back to evaluation mode."""
    model.train()
    for module in frozen_modules(model, names):
        module.eval()
