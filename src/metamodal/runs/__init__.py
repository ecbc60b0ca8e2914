"""The run directory: the format that training writes and that evaluation, prediction,
reports and serving read (strictly), below `metamodal.train` and `metamodal.evaluate`.

- `directory`: ``config.toml`` and ``preprocessor.json``, `load_run`, `load_run_data`,
  whether a run is finished (`training_status`, `check_finished`), and ensemble runs
  (`write_ensemble_files`);
- `weights`: ``model.safetensors``;
- `prepared`: a dataset decoded for training or evaluation (`prepare_data`).
"""

from metamodal.runs.directory import (
    CONFIG_FILE,
    MEMBERS_DIR,
    PREPROCESSOR_FILE,
    Run,
    check_finished,
    load_run,
    load_run_data,
    read_preprocessor,
    read_run_config,
    training_status,
    write_ensemble_files,
    write_run_files,
)
from metamodal.runs.prepared import CACHE_DIR, PreparedData, prepare_data
from metamodal.runs.weights import WEIGHTS_FILE, load_weights, save_weights

__all__ = [
    "CACHE_DIR",
    "CONFIG_FILE",
    "MEMBERS_DIR",
    "PREPROCESSOR_FILE",
    "WEIGHTS_FILE",
    "PreparedData",
    "Run",
    "check_finished",
    "load_run",
    "load_run_data",
    "load_weights",
    "prepare_data",
    "read_preprocessor",
    "read_run_config",
    "save_weights",
    "training_status",
    "write_ensemble_files",
    "write_run_files",
]
