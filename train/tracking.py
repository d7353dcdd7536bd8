"""Weights & Biases logging (rank 0 only; a no-op when disabled).

Mode comes from ``wandb.mode`` or ``WANDB_MODE`` (default ``disabled``);
``online`` without an API key falls back to ``offline`` and says so, so a
run never fails for lack of a login.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    mode = (mode or os.environ.get("WANDB_MODE", "") or "disabled").lower()
    if mode in ("dryrun",):
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb.mode must be online, offline or disabled, got {mode!r}")
    if mode == "online" and not _has_api_key():
        log.warning("wandb: mode 'online' but no API key (WANDB_API_KEY or ~/.netrc); logging offline instead. "
                    "Sync later with `wandb sync <run folder>/wandb/offline-run-*`")
        mode = "offline"
    return mode


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


class Tracker:
    def __init__(self, cfg, info, num_parameters: int):
        self.run = None
        self.cfg = cfg
        mode = resolve_mode(cfg.wandb.mode)
        if mode == "disabled":
            return
        import dataclasses

        import wandb

        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity or None,
            name=cfg.wandb.name or os.path.basename(os.path.abspath(cfg.train.output_dir)),
            tags=list(cfg.wandb.tags) or None, mode=mode, dir=cfg.train.output_dir,
            config={**dataclasses.asdict(cfg), "num_parameters": num_parameters, "world_size": info.world_size},
            reinit="finish_previous")
        log.info("wandb: logging %s run to %s", mode, self.run.dir)

    def log_step(self, row: dict) -> None:
        if self.run:
            self.run.log({"train/loss": row["loss"], "train/lr": row["lr"],
                          "train/tokens_per_s": row["tokens_per_s"]}, step=row["step"])

    def log_eval(self, row: dict) -> None:
        if self.run:
            data = {f"valid/{k}": row[k] for k in ("f1", "precision", "recall", "token_accuracy")}
            for etype, s in row["per_type"].items():
                for k in ("precision", "recall", "f1"):
                    data[f"valid/{etype}/{k}"] = s[k]
            self.run.log(data, step=row["step"])

    def finish(self, result: dict, test_sentences, result_preds_path: str | None = None) -> None:
        if not self.run:
            return
        import wandb

        for fold in ("valid", "test"):
            for k in ("f1", "precision", "recall", "token_accuracy"):
                self.run.summary[f"{fold}/{k}"] = result[fold][k]
            for etype, s in result[fold]["per_type"].items():
                self.run.summary[f"{fold}/{etype}/f1"] = s["f1"]
        self.run.summary["train_wall_s"] = result["train_wall_s"]
        if result_preds_path and os.path.exists(result_preds_path):
            table = wandb.Table(columns=["index", "sentence", "gold", "pred"])
            n = 0
            with open(result_preds_path) as f:
                for line in f:
                    r = json.loads(line)
                    if r["gold"] != r["pred"]:
                        table.add_data(r["index"], " ".join(r["tokens"]), " ".join(r["gold"]), " ".join(r["pred"]))
                        n += 1
                        if n >= self.cfg.wandb.num_error_samples:
                            break
            self.run.log({"test/errors": table})
        self.run.finish()
