"""A fast, stratified sample of the hostile-input corpus of ``benchmarks/fuzz.py``: only
typed errors that say where (or harmless inputs accepted), no hang, no input file changed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("metamodal_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["metamodal_fuzz"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("metamodal_fuzz", None)


def test_the_corpus_covers_every_input_with_at_least_1000_cases(fuzz) -> None:
    cases = fuzz.build_corpus()
    assert len(cases) >= 1000
    assert len({case.name for case in cases}) == len(cases)
    families = {case.family for case in cases}
    for needed in ("dataset.toml text", "loader options", "cells csv", "cells jsonl",
                   "cells parquet", "splits.toml", "media image", "media sound", "media track",
                   "run directory", "saved classifier", "checkpoint", "query table",
                   "train flags", "command flags"):
        assert needed in families


def test_a_sample_of_the_corpus_gets_only_typed_located_errors(fuzz) -> None:
    cases = fuzz.sample_cases(fuzz.build_corpus(), 60)
    counts, records = fuzz.run_corpus(cases, timeout=30.0, echo=lambda line: None)
    failures = [r for r in records if r[1] in fuzz.OUTCOMES_BAD]
    assert failures == []
    assert sum(counts.values()) == len(cases) and counts["typed error"] > 0


def test_the_per_case_time_limit_stops_a_hang(fuzz) -> None:
    import time

    with pytest.raises(fuzz._Timeout), fuzz._time_limit(0.2):
        time.sleep(5)
