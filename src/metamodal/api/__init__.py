"""metamodal's public API: one function per verb of the ``metamodal`` command.

Each verb takes plain arguments, or its settings dataclass (`metamodal.api.settings`) with
keyword overrides, and returns a typed result: a dataclass with ``to_dict()`` (what
``--json`` writes) and ``table()`` (what the command prints).

| verb | function | result |
|---|---|---|
| ``make-synthetic`` | `make_synthetic` | `SyntheticResult` |
| ``import`` | `import_dataset` | ``ImportResult`` |
| ``download`` | `download` | ``DownloadResult`` |
| ``inspect`` | `inspect` | ``InspectionReport`` |
| ``episodes`` | `episodes` | `EpisodesResult` |
| ``train`` | `train` | `TrainReport` |
| ``align`` | `align` | `TrainReport` |
| ``eval`` | `evaluate` | `EvalReport` |
| ``report`` | `report` | `ReportResult` |
| ``predict`` | `predict` | `PredictResult` |
| ``serve`` | `serve` | `ServeResult` |
| ``search`` | `search` | `SearchResult` |
| ``retrieve`` | `retrieve` | ``RetrievalReport`` |
| ``zero-shot`` | `zero_shot` | ``ZeroShotReport`` |
| ``cache info`` / ``cache clear`` | `cache_info` / `clear_cache` | ``CacheInfo`` / `ClearedCache` |
| ``demo`` | `demo` | `DemoResult` |
| ``export`` | `export` | `ExportResult` |
| ``ensemble`` | `ensemble` | `EnsembleResult` |

Beside them: `compare` (results side by side, paired differences), `report_results` (a report
of several methods), `run_info` (what a run is), `worked_episode` (one episode predicted),
`project` (a picture of the joint space), and `FewShotClassifier` (scikit-learn style).

Example:
    >>> from metamodal import api
    >>> api.EvalSettings(shots=5).shots
    5
"""

from metamodal.api.data import (
    ClearedCache,
    EpisodesResult,
    SyntheticResult,
    cache_info,
    clear_cache,
    download,
    episodes,
    import_dataset,
    inspect,
    make_synthetic,
)
from metamodal.api.demo import DemoResult, demo
from metamodal.api.ensemble import EnsembleResult, ensemble
from metamodal.api.evaluation import (
    Comparison,
    EvalReport,
    ReportResult,
    RunInfo,
    compare,
    evaluate,
    report,
    report_results,
    run_info,
)
from metamodal.api.export import ExportResult, export
from metamodal.api.fields import write_json
from metamodal.api.mapping import project, retrieve, zero_shot
from metamodal.api.prediction import PredictResult, WorkedEpisode, predict, worked_episode
from metamodal.api.search import SearchResult, search
from metamodal.api.serve import ServeResult, serve
from metamodal.api.settings import (
    IMPORT_LAYOUTS,
    QUICK_DEMO,
    AlignFlags,
    CacheSettings,
    DemoRunSettings,
    DemoSettings,
    DownloadSettings,
    EnsembleSettings,
    EpisodeShape,
    EpisodesSettings,
    EvalSettings,
    ExportSettings,
    FolderImportSettings,
    FusionFlags,
    ImageFolderSettings,
    ImportSettings,
    LearnerFlags,
    OmniglotImportSettings,
    PredictSettings,
    ReportSettings,
    RetrieveSettings,
    RunSettings,
    SearchSettings,
    ServeSettings,
    SyntheticSettings,
    TableImportSettings,
    TestTimeOptions,
    VideoFolderSettings,
    ZeroShotSettings,
)
from metamodal.api.training import TrainReport, align, train
from metamodal.classifier import FewShotClassifier
from metamodal.evaluate.report import MappingResults

__all__ = [
    "IMPORT_LAYOUTS", "QUICK_DEMO", "AlignFlags", "CacheSettings", "ClearedCache", "Comparison",
    "DemoResult", "DemoRunSettings", "DemoSettings", "DownloadSettings", "EnsembleResult",
    "EnsembleSettings", "EpisodeShape", "EpisodesResult", "EpisodesSettings", "EvalReport",
    "EvalSettings", "ExportResult", "ExportSettings", "FewShotClassifier", "FolderImportSettings",
    "FusionFlags", "ImageFolderSettings", "ImportSettings", "LearnerFlags", "MappingResults",
    "OmniglotImportSettings", "PredictResult", "PredictSettings", "ReportResult", "ReportSettings",
    "RetrieveSettings", "RunInfo", "RunSettings", "SearchResult", "SearchSettings", "ServeResult",
    "ServeSettings", "SyntheticResult", "SyntheticSettings", "TableImportSettings",
    "TestTimeOptions", "TrainReport", "VideoFolderSettings", "WorkedEpisode", "ZeroShotSettings",
    "align", "cache_info", "clear_cache", "compare", "demo", "download", "ensemble", "episodes",
    "evaluate", "export", "import_dataset", "inspect", "make_synthetic", "predict", "project",
    "report", "report_results", "retrieve", "run_info", "search", "serve", "train",
    "worked_episode", "write_json", "zero_shot",
]
