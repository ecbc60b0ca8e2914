"""Class descriptions: read ``descriptions.toml`` (class -> text) and turn texts into
bag-of-words vectors that a linear map sends into the embedding space."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metamodal.data.paths import PathRefused, check_own_file
from metamodal.errors import DatasetError

DESCRIPTIONS_FILE = "descriptions.toml"
_TOKEN = re.compile(r"[^\W_]+")
"""A word: letters and digits of any script (``[a-z0-9]`` dropped every word of Cyrillic,
Greek or CJK and cut ``café`` to ``caf``)."""


def read_descriptions(path: str | Path, classes: Iterable[str] | None = None) -> dict[str, str]:
    """Read a ``descriptions.toml``: one ``"class" = "text"`` line per class.

    Args:
        path: the file, or a dataset directory holding ``descriptions.toml``.
        classes: the dataset's class labels; a description of any other class is an error.

    Returns:
        class label -> description text.

    Raises:
        DatasetError: the file is missing or not TOML, a value is not a string, a description
            is empty, or it describes a class the dataset does not have (each names the file
            and the class, and says how to fix it).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "descriptions.toml"
        >>> _ = p.write_text('cat = "a small furry animal"\\n')
        >>> read_descriptions(p, ["cat", "dog"])
        {'cat': 'a small furry animal'}
    """
    path = Path(path)
    if path.is_dir():  # the dataset's own file: not a link out of it
        try:
            check_own_file(path, DESCRIPTIONS_FILE)
        except PathRefused as refused:
            raise DatasetError(refused.message, file=path / DESCRIPTIONS_FILE,
                               fix=refused.fix) from None
        path = path / DESCRIPTIONS_FILE
    if not path.is_file():
        raise DatasetError("class descriptions not found", file=path,
                           fix=f"write a {DESCRIPTIONS_FILE} with one line per class: "
                           '"class label" = "description"')
    try:
        document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"not a valid TOML file ({error})", file=path,
                           fix='write one line per class: "class label" = "description"'
                           ) from None
    known = None if classes is None else {str(c) for c in classes}
    result: dict[str, str] = {}
    for label, text in document.items():
        if not isinstance(text, str):
            raise DatasetError(f"the description of class {label!r} is not a string",
                               file=path, column=label,
                               fix=f'write it as "{label}" = "some text"')
        if not _TOKEN.findall(text.lower()):
            raise DatasetError(f"the description of class {label!r} is empty", file=path,
                               column=label, fix="write some words naming the class's "
                               "attributes, or remove the line")
        if known is not None and label not in known:
            close = ", ".join(sorted(known)[:5])
            raise DatasetError(f"a description for class {label!r}, which the dataset does "
                               "not have", file=path, column=label,
                               fix=f"fix the class name or remove the line (classes: {close}, "
                               "...)")
        result[label] = text
    return result


def require_descriptions(descriptions: Mapping[str, str], classes: Sequence[str],
                         file: str | Path | None = None) -> None:
    """Raise `DatasetError` naming the first classes without a description (zero-shot mode
    needs one for every class it predicts)."""
    missing = [c for c in classes if c not in descriptions]
    if missing:
        raise DatasetError(
            f"{len(missing)} class(es) have no description: {', '.join(missing[:5])}"
            + (", ..." if len(missing) > 5 else ""), file=file, column=missing[0],
            fix=f'add a line "{missing[0]}" = "..." to {DESCRIPTIONS_FILE} for each, or leave '
            "those classes out")


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters and digits of any script) of ``text``.

    Example:
        >>> tokenize("A grey-blue Cat, café and кошка_2")
        ['a', 'grey', 'blue', 'cat', 'café', 'and', 'кошка', '2']
    """
    return _TOKEN.findall(text.lower())


class BagOfWords:
    """Binary bag-of-words vectors over a vocabulary fitted on training descriptions.

    Words never seen in fitting are ignored (they carry nothing the map has learned).

    Example:
        >>> bow = BagOfWords().fit(["a red fox", "a blue jay"])
        >>> bow.transform(["red jay", "green"]).tolist()
        [[0.0, 0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self) -> None:
        self.vocab_: list[str] = []

    def fit(self, texts: Iterable[str]) -> BagOfWords:
        """Learn the vocabulary (sorted words) of ``texts``."""
        self.vocab_ = sorted({word for text in texts for word in tokenize(text)})
        return self

    def transform(self, texts: Sequence[str]) -> Tensor:
        """float ``[N, V]``: 1 where text ``n`` has vocabulary word ``v``."""
        index = {word: i for i, word in enumerate(self.vocab_)}
        out = torch.zeros(len(texts), len(self.vocab_))
        for n, text in enumerate(texts):
            for word in tokenize(text):
                if word in index:
                    out[n, index[word]] = 1.0
        return out
