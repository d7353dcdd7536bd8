"""What a run trains on, built before the run folder is touched: the labelled folds and teacher rows, the
model, the encoded windows, their batches and the number of optimizer steps they make."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from common.batching import TokenBudgetBatchSampler
from common.data import DataError, Sentence, assign_documents, load_folds, some_alone
from common.distributed import DistInfo
from common.labels import check_fold_labels, label_list
from common.teacher import load_teacher
from taggers.export import load_tagger, load_tokenizer
from taggers.models import build_tagger

from .config import Config, ConfigError, resolve_encoder

log = logging.getLogger("train")


@dataclass
class Data:
    folds: dict[str, list[Sentence]]
    labels: list[str]
    encoder_path: str
    tokenizer: object
    taught: list[Sentence]
    """Distillation: unlabelled sentences with their teacher's word probabilities, trained beside ``train``."""


def load_data(cfg: Config) -> Data:
    """The labelled folds, their tag set and the tokenizer; every problem is reported before training starts."""
    if not cfg.data.path:
        raise DataError("data.path is empty: pass --data PATH (your CoNLL-style JSON or a folder of CoNLL files)")
    folds = load_folds(cfg.data.path, scheme=cfg.data.scheme, labels=cfg.data.labels or None)
    if cfg.data.max_sentences:
        folds = {k: v[:cfg.data.max_sentences] for k, v in folds.items()}
    for sentences in folds.values():
        assign_documents(sentences)
    encoder_path = resolve_encoder(cfg.model.encoder)
    tokenizer = load_tokenizer(encoder_path)
    labels = list(cfg.data.labels) or label_list(folds["train"])
    check_fold_labels(folds, labels, cfg.data.path)
    taught = load_teacher(cfg.data.teacher, labels, cfg.data.teacher_max_rows) if cfg.data.teacher else []
    return Data(folds, labels, encoder_path, tokenizer, taught)


def build_model(cfg: Config, data: Data):
    """A new tagger for the data's tag set, or ``model.init_from``'s export when it was trained on the same."""
    if not cfg.model.init_from:
        return build_tagger(cfg.model, data.labels, data.encoder_path, data.tokenizer)
    model, windower = load_tagger(cfg.model.init_from)
    if windower.labels != data.labels:
        raise ConfigError(f"model.init_from {cfg.model.init_from}: the model was trained on another tag set "
                          f"{windower.labels} than the data's {data.labels}")
    return model.train()


def encode_windows(cfg: Config, windower, data: Data) -> dict[str, list]:
    """Every fold as windows; the training fold with ``data.alone_fraction`` of its sentences alone, then the
    teacher's rows."""
    t0 = time.perf_counter()
    windows = {fold: windower.windows(some_alone(s, cfg.data.alone_fraction, cfg.train.seed)
                                      if fold == "train" else s)
               for fold, s in data.folds.items()}
    windows["train"] += windower.windows(data.taught)
    log.info("encoded %s windows in %.1f s; labels %s", {k: len(v) for k, v in windows.items()},
             time.perf_counter() - t0, data.labels)
    return windows


def make_sampler(cfg: Config, info: DistInfo, train_windows: list) -> TokenBudgetBatchSampler:
    """This rank's token-budget micro-batches, padded so that every rank has as many per optimizer step."""
    return TokenBudgetBatchSampler([len(w) for w in train_windows], cfg.train.max_tokens, shuffle=True,
                                   seed=cfg.train.seed, num_replicas=info.world_size, rank=info.rank,
                                   pad_to=info.world_size * cfg.optim.grad_accum)


@dataclass
class StepPlan:
    steps_per_epoch: int
    total_steps: int
    """``train.epochs`` of steps, cut to ``train.max_steps`` when set (which alone decides with epochs 0)."""
    epochs: int
    """Epochs begun to reach ``total_steps`` (the last one may end early)."""


def plan_steps(cfg: Config, micro_batches_per_epoch: int) -> StepPlan:
    """Optimizer steps per epoch and in all, from this rank's micro-batches per epoch."""
    steps_per_epoch = math.ceil(micro_batches_per_epoch / cfg.optim.grad_accum)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps) if cfg.train.epochs else cfg.train.max_steps
    return StepPlan(steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch))
