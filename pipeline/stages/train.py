"""train stage: `earthloc train`, the training loop of `earthloc.trainer` on the fetched database.

The loop is a library (benchmarks and tests drive it directly with their own configs);
this module is what the dvc.yaml stage runs: the configs built from params.yaml, the
paths the command line names, and the process-wide set-up a command owns (logging).
"""

from __future__ import annotations

import logging

from earthloc.trainer import TrainingConfig, TrainPaths, TrainSummary, train


def run(config: TrainingConfig, paths: TrainPaths = TrainPaths()) -> TrainSummary:
    """Entry point of `earthloc train`: every objective of `config.astroloc.losses` in one loop."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return train(config, paths)
