"""The run folder written by ``ner-train``: every file it holds is named here, and read or written here.

::

    RUN/
      config.toml                     resolved config (every option, defaults filled in)
      train_log.jsonl                 {"event": "step", ...} and {"event": "eval", ...} rows
      metrics.json                    final scores of the best model (valid, test) and training costs
      predictions/{fold}.jsonl        one row per sentence: {"index", "tokens", "gold", "pred"}
      export/                         the inference export of the best model (see taggers.export)
      checkpoints/                    resume state (see train.checkpoint)
      wandb_run_id                    the wandb run continued by --resume

The trainer, the report, the main job and ``ner-tag`` use this module rather
than file names of their own.
"""

from __future__ import annotations

import os
import shutil

from .io import atomic_write, read_jsonl, read_toml, write_json, write_jsonl

CONFIG = "config.toml"
TRAIN_LOG = "train_log.jsonl"
METRICS = "metrics.json"
PREDICTIONS = "predictions"
EXPORT = "export"
CHECKPOINTS = "checkpoints"
WANDB_RUN_ID = "wandb_run_id"


class RunFolder:
    """Paths and readers/writers of one run folder."""

    def __init__(self, root: str):
        self.root = root

    # ---- paths
    @property
    def config_path(self) -> str:
        return os.path.join(self.root, CONFIG)

    @property
    def train_log_path(self) -> str:
        return os.path.join(self.root, TRAIN_LOG)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.root, METRICS)

    @property
    def export_dir(self) -> str:
        return os.path.join(self.root, EXPORT)

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.root, CHECKPOINTS)

    @property
    def wandb_id_path(self) -> str:
        return os.path.join(self.root, WANDB_RUN_ID)

    def predictions_path(self, fold: str) -> str:
        return os.path.join(self.root, PREDICTIONS, f"{fold}.jsonl")

    def holds_run(self) -> bool:
        """True when the folder has anything a training run writes."""
        return any(os.path.exists(os.path.join(self.root, name))
                   for name in (CONFIG, TRAIN_LOG, METRICS, PREDICTIONS, EXPORT, CHECKPOINTS))

    def has_export(self) -> bool:
        return os.path.isdir(self.export_dir)

    # ---- config
    def read_config(self) -> dict:
        """The saved resolved config as a dict ({} when there is none)."""
        return read_toml(self.config_path) if os.path.exists(self.config_path) else {}

    def write_config(self, config: dict) -> None:
        import tomli_w

        with atomic_write(self.config_path, "wb") as f:
            tomli_w.dump(config, f)

    def data_path(self) -> str | None:
        """The labelled data the run was trained on (``data.path`` of its config), if recorded."""
        return self.read_config().get("data", {}).get("path") or None

    # ---- metrics
    def read_metrics(self) -> dict:
        import json

        if not os.path.exists(self.metrics_path):
            return {}
        with open(self.metrics_path, encoding="utf-8") as f:
            return json.load(f)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_path, metrics)

    # ---- training log
    def read_train_log(self) -> list[dict]:
        return read_jsonl(self.train_log_path) if os.path.exists(self.train_log_path) else []

    def append_train_log(self, row: dict) -> None:
        import json

        with open(self.train_log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_train_log(self, last_step: int | None) -> None:
        """Keep the rows up to ``last_step`` (a resumed run rewrites what came after); None: drop the log."""
        if not os.path.exists(self.train_log_path):
            return
        if last_step is None:
            os.remove(self.train_log_path)
            return
        write_jsonl(self.train_log_path, [r for r in self.read_train_log() if r.get("step", 0) <= last_step])

    # ---- predictions
    def read_predictions(self, fold: str) -> list[dict]:
        return read_jsonl(self.predictions_path(fold))

    def write_predictions(self, fold: str, rows) -> None:
        os.makedirs(os.path.join(self.root, PREDICTIONS), exist_ok=True)
        write_jsonl(self.predictions_path(fold), rows)

    def clear(self) -> None:
        """Delete everything this schema names (``--overwrite``); other files in the folder stay."""
        for name in (CONFIG, TRAIN_LOG, METRICS, WANDB_RUN_ID):
            path = os.path.join(self.root, name)
            if os.path.exists(path):
                os.remove(path)
        for name in (PREDICTIONS, EXPORT, CHECKPOINTS):
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def clear_results(self) -> None:
        """Delete the final scores and predictions: training is about to change the export they describe."""
        if os.path.exists(self.metrics_path):
            os.remove(self.metrics_path)
        shutil.rmtree(os.path.join(self.root, PREDICTIONS), ignore_errors=True)
