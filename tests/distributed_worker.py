"""A training process for tests/test_distributed.py, started alone or by torchrun.

``python distributed_worker.py SPEC.json`` trains each run of the spec in turn:

```json
{"runs": [{"config": {...TrainConfig...}, "out": "RUN", "float64": false, "resume": false,
           "evaluate": {"episodes_count": 24, "json": "EVAL.json"}}],
 "kill": {"rank": 1, "step": 5, "mark": "KILLED_AT"},
 "vary": {"lr": [0.001, 0.002]}}
```

``float64`` runs the model and the data in float64. ``evaluate``: then evaluate the run with
`metamodal.api.evaluate` (these settings; every process takes part, rank 0 writes the JSON).
``kill``: the process of that rank kills itself (SIGKILL, as the kernel's out-of-memory
killer would) after that step, in the first attempt of a job only (not after a ``torchrun
--max-restarts`` restart), having written the time (``time.time()``) to the file ``mark``.
``vary``: each rank trains with its own value of a setting (a job started with mismatched
flags). A typed error is printed and exits with status 2, as the ``metamodal`` command does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

import metamodal.train.trainer as trainer_module
from metamodal.config import TrainConfig
from metamodal.data.batch import ModalityBatch
from metamodal.errors import MetamodalError
from metamodal.train.trainer import Trainer

PREPARE = trainer_module.prepare_data


def prepare_float64(*args, **kwargs):
    """`prepare_data` with every floating-point modality in float64."""
    data = PREPARE(*args, **kwargs)
    for name, batch in list(data.store.modalities.items()):
        if batch.values.is_floating_point():
            data.store.modalities[name] = ModalityBatch(batch.values.double(), batch.present,
                                                        batch.lengths)
    return data


def main(spec_path: str) -> int:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    kill = spec.get("kill")

    def die(step: int, values: dict) -> None:
        if kill and first_attempt and rank == kill["rank"] and step == kill["step"]:
            Path(kill["mark"]).write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    for run in spec["runs"]:
        values = dict(run["config"])
        for key, choices in spec.get("vary", {}).items():
            values[key] = choices[rank]
        float64 = run.get("float64", False)
        torch.set_default_dtype(torch.float64 if float64 else torch.float32)
        trainer_module.prepare_data = prepare_float64 if float64 else PREPARE
        try:
            Trainer(TrainConfig(**values), run["out"], progress=False,
                    callbacks=[die]).fit(resume=run.get("resume", False))
            if run.get("evaluate"):
                from metamodal.api import evaluate

                evaluate(run["out"], baseline=False, progress=False, **run["evaluate"])
        except MetamodalError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
