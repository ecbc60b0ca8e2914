"""The record of the settings a demo directory was made with: `metamodal.api.demo` reuses the
data and the finished runs of ``OUT``, which is only right for the same settings."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from metamodal.api.settings import DemoSettings
from metamodal.data.paths import PathRefused, read_small_text
from metamodal.errors import ConfigError, RunError
from metamodal.io import atomic_write_json, make_directory

SETTINGS_RECORD = "demo-settings.json"
"""The settings a demo directory's data and runs were made with (`check_demo_settings`)."""
EVALUATION_ONLY = frozenset({"episodes", "robustness_episodes", "mapping"})
"""Demo settings that change what is measured, not the data or the trained runs."""


def check_demo_paths(out: str | Path, data: str | Path | None) -> None:
    """`ConfigError` for an empty ``out`` or ``data`` (it meant the working directory)."""
    for name, path in (("out", out), ("data", data)):
        if path is not None and str(path) == "":
            raise ConfigError(f"demo: {name} is empty", column=name,
                              fix=f"give {name} a directory, or leave it out")


def check_demo_settings(out: Path, settings: DemoSettings, data: str | Path | None) -> None:
    """Refuse to go on in a demo directory made with other settings; record them in a new one.

    The data (``OUT/data``) and the finished runs (``OUT/runs``) of a demo are reused, so a
    second demo in ``out`` with other sizes would report on the first one's data and models.
    ``OUT/demo-settings.json`` keeps the settings they were made with (all but
    `EVALUATION_ONLY`, and ``data``); it is written before any work.

    Raises:
        ConfigError: a setting differs from the recorded one (named, with both values).
        RunError: the record is damaged.
    """
    wanted = {key: value for key, value in asdict(settings).items()
              if key not in EVALUATION_ONLY}
    wanted["data"] = None if data is None else str(data)
    record = out / SETTINGS_RECORD
    if not record.exists():
        make_directory(out)
        atomic_write_json(record, wanted)
        return
    try:
        kept = json.loads(read_small_text(record, "demo settings record", 1 << 16))
    except (PathRefused, OSError, ValueError, RecursionError) as error:
        raise RunError(f"the demo's settings record cannot be read ({error})", file=record,
                       fix="delete the demo directory (or give another --out)") from None
    if not isinstance(kept, dict):
        raise RunError("the demo's settings record is not a JSON object", file=record,
                       fix="delete the demo directory (or give another --out)")
    for key, value in wanted.items():
        if kept.get(key) != value:
            raise ConfigError(
                f"{out} holds a demo made with {key} = {kept.get(key)!r}, not {value!r}: its "
                "data and runs would be reused", column=key,
                fix=f"give another --out, or delete {out} to start again")

