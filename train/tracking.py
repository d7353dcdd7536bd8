"""Weights & Biases logging (rank 0 only; a no-op when disabled).

What a run logs:

* config: the resolved run config (every section, defaults filled in), plus
  ``num_parameters``, ``world_size`` and, with the DeepSpeed engine, the
  DeepSpeed JSON;
* per logged step: ``train/loss``, ``train/lr``, ``train/tokens_per_s``;
* per evaluation: ``valid/{f1,precision,recall,token_accuracy,word_accuracy,strict_f1}``
  and ``valid/<TYPE>/{precision,recall,f1}`` per entity type;
* at the end, in the run summary: the best export's ``valid/...`` and ``test/...``
  scores (overall and per type), ``best_step``, ``train_wall_s``,
  ``train_tokens_per_s``; and a table ``test/errors`` of test sentences whose
  predicted tags differ from the gold ones (``wandb.num_error_samples`` rows).

Mode: ``wandb.mode`` (``online``, ``offline``, ``disabled``); empty means the
``WANDB_MODE`` environment variable, else ``disabled``.  ``online`` without an
API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry made by ``wandb login``)
falls back to ``offline`` with a warning, and so does an online start that
fails, so a run never fails for lack of a login or a network.  Offline runs
are written to ``RUN/wandb/offline-run-*``; upload them with ``wandb sync``.
Project, entity, run name (default: the run folder's name) and tags come from
the ``[wandb]`` section.  A resumed run (``--resume`` from a checkpoint)
continues the same W&B run: its id is kept in ``RUN/wandb_run_id``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import netrc
import os
from urllib.parse import urlparse

from common.rundir import RunFolder

from .config import ConfigError

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")


def resolve_mode(mode: str) -> str:
    """The mode to use: config, else ``WANDB_MODE``, else disabled; online needs an API key."""
    source = "wandb.mode" if mode else "WANDB_MODE"
    mode = (mode or os.environ.get("WANDB_MODE", "") or "disabled").strip().lower()
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise ConfigError(f"{source} must be online, offline or disabled, got {mode!r}")
    if mode == "online" and not has_api_key():
        log.warning("wandb: mode 'online' but no API key (WANDB_API_KEY or `wandb login`); logging offline "
                    "instead. Upload later with `wandb sync RUN/wandb/offline-run-*`")
        mode = "offline"
    return mode


def has_api_key() -> bool:
    """An API key in the environment or in the netrc file ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _guarded(method):
    """wandb must never break training: on any error, log it once and stop tracking."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.run:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a logging backend failing is not a training failure
            log.warning("wandb: %s failed (%s: %s); tracking switched off for this run",
                        method.__name__, type(e).__name__, e)
            self.run = None
            return None

    return wrapper


class Tracker:
    """The training loop's callback for wandb: ``log_step``, ``log_eval``, ``finish``, ``abandon``.

    Created on rank 0 only (the trainer does not make one elsewhere).  ``resuming``: the run continues
    from a checkpoint, so the wandb run recorded in the run folder is continued too.
    """

    def __init__(self, cfg, info, num_parameters: int, resuming: bool):
        self.run = None
        self.cfg = cfg
        self.mode = resolve_mode(cfg.wandb.mode)
        if self.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"wandb mode {self.mode!r} but wandb is not installed: `pip install wandb`, or "
                              "set wandb.mode=disabled") from None
        out = cfg.train.output_dir
        os.makedirs(out, exist_ok=True)
        config = {**dataclasses.asdict(cfg), "num_parameters": num_parameters, "world_size": info.world_size}
        if cfg.train.engine == "deepspeed" and cfg.train.deepspeed_config:
            try:
                with open(cfg.train.deepspeed_config) as f:
                    config["deepspeed"] = json.load(f)
            except (OSError, ValueError):
                pass
        id_path = RunFolder(out).wandb_id_path
        run_id = _read(id_path) if resuming else None
        kwargs = {"project": cfg.wandb.project, "entity": cfg.wandb.entity or None,
                  "name": cfg.wandb.name or os.path.basename(os.path.abspath(out)),
                  "tags": list(cfg.wandb.tags) or None, "dir": out, "config": config,
                  "reinit": "finish_previous"}  # wandb 0.19.10 or later (setup.cfg pins the floor)
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception as e:  # a tracking problem must not stop the training
            if self.mode != "online":
                raise
            log.warning("wandb: online start failed (%s); logging offline instead", e)
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        with open(id_path, "w") as f:
            f.write(self.run.id)
        log.info("wandb: %s run %s (%s) in %s", self.mode, self.run.name, self.run.id, self.run.dir)

    def abandon(self) -> None:
        """Stop tracking without talking to wandb again (after a stop signal its service may be gone)."""
        self.run = None

    @_guarded
    def log_step(self, row: dict) -> None:
        if self.run:
            self.run.log({"train/loss": row["loss"], "train/lr": row["lr"],
                          "train/tokens_per_s": row["tokens_per_s"]}, step=row["step"])

    @_guarded
    def log_eval(self, row: dict) -> None:
        if self.run:
            data = {f"valid/{k}": row[k] for k in ("f1", "precision", "recall", "token_accuracy", "word_accuracy")
                    if k in row}
            if "strict" in row:
                data["valid/strict_f1"] = row["strict"]["f1"]
            for etype, s in row["per_type"].items():
                for k in ("precision", "recall", "f1"):
                    data[f"valid/{etype}/{k}"] = s[k]
            self.run.log(data, step=row["step"])

    @_guarded
    def finish(self, result: dict, result_preds_path: str | None = None) -> None:
        if not self.run:
            return
        import wandb

        summary = {}
        for fold in ("valid", "test"):
            scores = result[fold]
            for k in ("f1", "precision", "recall", "token_accuracy", "word_accuracy"):
                if k in scores:
                    summary[f"{fold}/{k}"] = scores[k]
            if "strict" in scores:
                summary[f"{fold}/strict_f1"] = scores["strict"]["f1"]
            if "sentences_alone" in scores:
                summary[f"{fold}/sentences_alone_f1"] = scores["sentences_alone"]["f1"]
            for etype, s in scores["per_type"].items():
                for k in ("precision", "recall", "f1", "support"):
                    if k in s:
                        summary[f"{fold}/{etype}/{k}"] = s[k]
        for k in ("best_step", "steps", "train_wall_s", "train_tokens_per_s"):
            if k in result:
                summary[k] = result[k]
        self.run.summary.update(summary)
        if result_preds_path and os.path.exists(result_preds_path):
            self.run.log({"test/errors": error_table(wandb, result_preds_path, self.cfg.wandb.num_error_samples)})
        self.run.finish()
        self.run = None


def error_table(wandb, preds_path: str, limit: int):
    """Test sentences with at least one wrong tag: the sentence, gold and predicted tags, the wrong words."""
    table = wandb.Table(columns=["index", "sentence", "gold", "pred", "errors"])
    n = 0
    with open(preds_path) as f:
        for line in f:
            if n >= limit:
                break
            r = json.loads(line)
            if r["gold"] == r["pred"]:
                continue
            wrong = "; ".join(f"{t}: {g}->{p}" for t, g, p in zip(r["tokens"], r["gold"], r["pred"]) if g != p)
            table.add_data(r["index"], " ".join(r["tokens"]), " ".join(r["gold"]), " ".join(r["pred"]), wrong)
            n += 1
    return table
