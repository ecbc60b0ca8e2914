"""Typed errors of metamodal: each names where the problem is and how to fix it."""

from __future__ import annotations

from pathlib import Path


class MetamodalError(Exception):
    """Base class of every error metamodal raises on purpose."""


class LocatedError(MetamodalError):
    """An error that points at a place: a file, a row (1-based data row) and a column.

    Args:
        message: what is wrong.
        file: the file at fault, if any.
        row: 1-based row of the sample table (the header is row 0), if any.
        column: the column at fault, if any.
        fix: one sentence saying how to fix it.

    Example:
        >>> str(DatasetError("empty id", file="samples.csv", row=3, column="id", fix="add one"))
        'samples.csv, row 3, column id: empty id (fix: add one)'
    """

    column_label = "column"

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        self.fix = fix
        super().__init__(self.__str__())

    def location(self) -> str:
        """The place as text: ``file, row R, column C`` (the parts that are known)."""
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"{self.column_label} {self.column}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.location()
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text


class DatasetError(LocatedError):
    """A dataset directory, its schema, its sample table or a media file is unusable."""


class InsufficientSamplesError(DatasetError):
    """Classes have too few samples for the asked ways / shots / queries."""


class ConfigError(LocatedError):
    """A configuration value (TOML file or flag) is invalid; ``column`` holds the key."""

    column_label = "key"


class OptionError(ConfigError):
    """A component's option (an encoder's, a fusion's) is out of range. The component does not
    know where its options came from: `metamodal.registry.Registry.create`, which builds it from
    a config table, names that table as the key where the component named none."""


class OutputError(ConfigError):
    """A file or directory cannot be written where it was asked to go: an existing directory
    in a file's place (or a file in a directory's), a parent that is a file, no permission, a
    full disk; ``file`` holds the path."""


class UnknownNameError(ConfigError, KeyError):
    """A registry has no entry of that name; the message lists the registered names."""


class RunError(LocatedError):
    """A run directory is missing, incomplete or corrupt."""


class ModalityError(LocatedError):
    """Input carries modalities a model cannot use (e.g. one it never saw in training)."""


class MissingExtraError(ConfigError):
    """A component needs an optional extra that is not installed; the fix names the
    ``pip install`` command.

    Example:
        >>> print(MissingExtraError("encoder 'minilm' needs sentence-transformers",
        ...                         fix="pip install 'metamodal[pretrained]'"))
        encoder 'minilm' needs sentence-transformers (fix: pip install 'metamodal[pretrained]')
    """


class DownloadError(LocatedError):
    """A download failed: the server is unreachable, refused the request or sent too little;
    ``file`` holds the URL or the local file."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 differs from the expected one."""
