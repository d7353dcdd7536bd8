"""One training loop for both taggers (model-agnostic; see docs/DESIGN.md).

``run(cfg, resume)`` trains, evaluates on the validation fold, keeps the best
export by validation entity F1, checkpoints for resume, and finally scores the
best export on valid and test.  It runs the same with or without torchrun.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import time

import numpy as np
import torch

from common import distributed as dist_utils
from common.batching import TokenBudgetBatchSampler, collate_windows, shard_for_eval
from common.data import DataError, assign_documents, label_list, load_folds
from common.encoding import IGNORE_INDEX, EncodedWindow
from common.metrics import score_words

from .config import Config, ConfigError, from_dict, resolve_encoder, save_config, to_dict
from .engine import autocast_context, make_engine
from .export import build_tagger, check_labels, load_tagger, load_tokenizer, make_encoder, save_export
from .tracking import Tracker

log = logging.getLogger("train")

PREEMPTED_EXIT_CODE = 3


class Preempted(Exception):
    """Raised after a checkpoint was written because a stop signal arrived."""


class _StopFlag:
    """Set by SIGUSR1/SIGTERM; the loop checkpoints at the next step boundary."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self):
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- prediction / evaluation
@torch.no_grad()
def predict_words(model, windows: list[EncodedWindow], sentence_lengths: list[int], info, max_tokens: int,
                  precision: str = "fp32", pad_id: int = 0) -> tuple[list[list[int]], list[list[float]], tuple]:
    """Word-level predicted label ids and probabilities for every sentence, across ranks.

    Each rank predicts a disjoint share of the windows; the per-word results
    are gathered, so every rank returns the full list.  Also returns piece-level
    token-accuracy counts ``(correct, total)`` summed over ranks.
    """
    was_training = model.training
    model.eval()
    autocast = autocast_context(info.device, precision)
    local: list[tuple[int, int, int, float]] = []
    correct = total = 0
    for idx in shard_for_eval([len(w) for w in windows], max_tokens, info.world_size, info.rank):
        batch = collate_windows([windows[i] for i in idx], pad_id)
        batch = {k: v.to(info.device) for k, v in batch.items()}
        with autocast():
            outputs = model(batch)
        pred, prob = model.decode(batch, outputs)
        mask = batch["labels"] != IGNORE_INDEX
        correct += int((pred[mask] == batch["labels"][mask]).sum())
        total += int(mask.sum())
        rows, cols = (batch["word_index"] >= 0).nonzero(as_tuple=True)
        sent = batch["sentence"][rows].tolist()
        words = batch["word_index"][rows, cols].tolist()
        local.extend(zip(sent, words, pred[rows, cols].tolist(), prob[rows, cols].float().tolist()))
    model.train(was_training)
    preds = [[-1] * n for n in sentence_lengths]
    probs = [[0.0] * n for n in sentence_lengths]
    for part in dist_utils.gather_objects(local, info):
        for s, w, p, q in part:
            preds[s][w], probs[s][w] = p, q
    missing = [(s, w) for s, row in enumerate(preds) for w, p in enumerate(row) if p < 0]
    if missing:
        raise AssertionError(f"{len(missing)} words got no prediction, first {missing[:5]}")
    correct, total = dist_utils.all_reduce_sum([correct, total], info)
    return preds, probs, (int(correct), int(total))


def evaluate(model, windows, sentences, labels, info, cfg: Config, pad_id: int) -> tuple[dict, list[list[str]]]:
    preds, _, (correct, total) = predict_words(model, windows, [len(s) for s in sentences], info,
                                               cfg.train.eval_max_tokens, cfg.train.precision, pad_id)
    pred_tags = [[labels[i] for i in row] for row in preds]
    scores = score_words([s.tags for s in sentences], pred_tags)
    scores["token_accuracy"] = correct / total if total else 0.0
    scores["num_sentences"] = len(sentences)
    return scores, pred_tags


# ---------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str) -> str | None:
    pointer = os.path.join(output_dir, "checkpoints", "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, "checkpoints", name)
    return path if os.path.isdir(path) else None


def save_checkpoint(engine, trainer_state: dict, output_dir: str, info, keep: int = 2) -> str:
    """Write ``checkpoints/step_N`` atomically (a temp folder renamed when complete), then move ``latest``."""
    root = os.path.join(output_dir, "checkpoints")
    name = f"step_{trainer_state['step']:08d}"
    final = os.path.join(root, name)
    tmp = final + ".tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    dist_utils.barrier()
    engine.save(tmp)
    rng_states = dist_utils.gather_objects(_rng_state(), info)
    if info.is_main:
        torch.save({**trainer_state, "rng": rng_states}, os.path.join(tmp, "trainer_state.pt"))
    dist_utils.barrier()
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, "latest.tmp"), "w") as f:
            f.write(name)
        os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
        old = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
        for d in old[:-keep]:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    dist_utils.barrier()
    return final


def _comparable(cfg_dict: dict) -> dict:
    """The parts of a config that must match for a resume to make sense."""
    keep = {"data": ("path", "scheme", "labels", "max_sentences"),
            "model": None, "optim": None,
            "train": ("epochs", "max_steps", "max_tokens", "seed", "engine")}
    out = {}
    for section, fields in keep.items():
        values = cfg_dict.get(section, {})
        out[section] = {k: v for k, v in values.items() if fields is None or k in fields}
    return out


def check_resume_config(cfg: Config, output_dir: str) -> None:
    import tomllib

    path = os.path.join(output_dir, "config.toml")
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        saved = from_dict(tomllib.load(f))
    a, b = _comparable(to_dict(saved)), _comparable(to_dict(cfg))
    diffs = [f"{s}.{k}: saved {a[s].get(k)!r}, now {b[s].get(k)!r}"
             for s in a for k in sorted(set(a[s]) | set(b[s])) if a[s].get(k) != b[s].get(k)]
    if diffs:
        raise ConfigError(f"{output_dir} was made by another model or config; cannot resume it: "
                          + "; ".join(diffs) + ". Use another train.output_dir or drop --resume.")


# ---------------------------------------------------------------- the run
def _write_jsonl(path: str, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


class JsonlLog:
    """Training log as JSON lines (rank 0); on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: str, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and os.path.exists(path):
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            _write_jsonl(path, [r for r in rows if r.get("step", 0) <= resume_step])
        elif enabled and resume_step is None and os.path.exists(path):
            os.remove(path)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def run(cfg: Config, resume: bool = False) -> dict | None:
    """Train per ``cfg``; returns the final metrics on rank 0 (None elsewhere)."""
    info = dist_utils.setup(cfg.train.device)
    stop = _StopFlag()
    try:
        dist_utils.setup_logging(info.rank, all_ranks=cfg.train.log_all_ranks)
        stop.install()
        return _run(cfg, resume, info, stop)
    finally:
        stop.restore()
        dist_utils.teardown()


def _run(cfg: Config, resume: bool, info, stop: _StopFlag) -> dict | None:
    out = cfg.train.output_dir
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ckpt = latest_checkpoint(out) if resume else None
    if resume:
        check_resume_config(cfg, out)
        if ckpt is None:
            log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
    elif info.is_main and os.path.exists(os.path.join(out, "checkpoints")):
        log.warning("%s already holds a run; starting over (pass --resume to continue it)", out)
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    if info.is_main:
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.toml"))
    dist_utils.barrier()

    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    # ---- data and encoding
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
    for fold, sentences in folds.items():
        check_labels(labels, label_list(sentences), f"{cfg.data.path}: fold {fold!r}")

    # ---- model and engine
    if cfg.model.init_from:
        model, init_encoder = load_tagger(cfg.model.init_from)
        check_labels(init_encoder.labels, labels, f"model.init_from {cfg.model.init_from}")
        if init_encoder.labels != labels:
            raise ConfigError(f"model.init_from {cfg.model.init_from}: its tag set {init_encoder.labels} "
                              f"differs from the data's {labels}")
        model.train()
    else:
        model = build_tagger(cfg.model, labels, encoder_path, tokenizer)
    encoder = make_encoder(cfg.model, labels, tokenizer, model)
    t0 = time.perf_counter()
    windows = {fold: encoder.encode(s) for fold, s in folds.items()}
    log.info("encoded %s windows in %.1f s; labels %s", {k: len(v) for k, v in windows.items()},
             time.perf_counter() - t0, labels)
    pad_id = encoder.pad_id
    num_parameters = sum(p.numel() for p in model.parameters())
    sampler = TokenBudgetBatchSampler([len(w) for w in windows["train"]], cfg.train.max_tokens, shuffle=True,
                                      seed=cfg.train.seed, num_replicas=info.world_size, rank=info.rank)
    accum = cfg.optim.grad_accum
    steps_per_epoch = math.ceil(len(sampler) / accum)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps) if cfg.train.epochs else cfg.train.max_steps
    epochs = math.ceil(total_steps / steps_per_epoch)
    engine = make_engine(model, cfg, info, total_steps)
    log.info("%s tagger, %.1fM parameters, %d process(es) on %s (engine %s), %d steps (%d per epoch)",
             cfg.model.type, num_parameters / 1e6, info.world_size, info.device, engine.name, total_steps,
             steps_per_epoch)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_f1": -1.0, "best_step": -1, "bad_evals": 0,
             "train_time_s": 0.0, "train_tokens": 0}
    if ckpt is not None:
        engine.load(ckpt)
        saved = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
        rng = saved.pop("rng")
        _set_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
        state.update(saved)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt, state["step"], state["epoch"],
                 state["batch_in_epoch"])
    train_log = JsonlLog(os.path.join(out, "train_log.jsonl"), info.is_main,
                         state["step"] if ckpt is not None else None)
    tracker = Tracker(cfg, info, num_parameters) if info.is_main else None

    def run_eval():
        scores, _ = evaluate(engine.module, windows["valid"], folds["valid"], labels, info, cfg, pad_id)
        improved = scores["f1"] > state["best_f1"]
        row = {"event": "eval", "step": state["step"], "epoch": state["epoch"], "fold": "valid",
               "token_accuracy": scores["token_accuracy"], "word_accuracy": scores["word_accuracy"],
               "precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
               "per_type": scores["per_type"], "strict": {k: scores["strict"][k] for k in ("precision", "recall", "f1")},
               "elapsed_s": state["train_time_s"], "best": improved}
        if cfg.train.eval_test:  # watched only: model selection stays on valid
            test_scores, _ = evaluate(engine.module, windows["test"], folds["test"], labels, info, cfg, pad_id)
            row["test_f1"] = test_scores["f1"]
        train_log.write(row)
        if tracker and not stop.signum:
            tracker.log_eval(row)
        log.info("step %d valid: entity F1 %.2f (P %.2f R %.2f), token acc %.2f%s", state["step"],
                 100 * scores["f1"], 100 * scores["precision"], 100 * scores["recall"],
                 100 * scores["token_accuracy"], " (best)" if improved else "")
        if improved:
            state["best_f1"], state["best_step"], state["bad_evals"] = scores["f1"], state["step"], 0
            if info.is_main:
                save_export(engine.module, cfg.model, tokenizer, os.path.join(out, "export"),
                            {"best_step": state["step"], "valid_f1": scores["f1"]})
        else:
            state["bad_evals"] += 1
        dist_utils.barrier()
        return cfg.train.patience and state["bad_evals"] >= cfg.train.patience

    progress = None
    if info.is_main and cfg.train.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], desc=f"train {cfg.model.type}", unit="step",
                        dynamic_ncols=True, mininterval=2.0)
    engine.train()
    window_loss = window_count = 0.0
    window_tokens = 0
    window_start = state["train_time_s"]
    early_stop = False
    last_eval_step = state["step"] if ckpt is not None else -1
    try:
        while state["epoch"] < epochs and state["step"] < total_steps and not early_stop:
            sampler.set_epoch(state["epoch"])
            sampler.skip(state["batch_in_epoch"])
            micro = 0
            n_batches = len(sampler)
            for idx in sampler:
                t_start = time.perf_counter()
                batch = collate_windows([windows["train"][i] for i in idx], pad_id)
                batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
                outputs = engine.forward(batch)
                loss = outputs["loss"]
                state["batch_in_epoch"] += 1
                micro += 1
                last = micro % accum == 0 or state["batch_in_epoch"] == n_batches
                engine.backward(loss, last)
                window_loss += float(loss.detach())
                window_count += 1
                window_tokens += int(batch["attention_mask"].sum())
                if not last:
                    state["train_time_s"] += time.perf_counter() - t_start
                    continue
                engine.step()
                state["train_time_s"] += time.perf_counter() - t_start
                state["step"] += 1
                if progress:
                    progress.update(1)
                if state["step"] % cfg.train.log_every == 0 or state["step"] == total_steps:
                    loss_sum, count, tokens = dist_utils.all_reduce_sum([window_loss, window_count, window_tokens], info)
                    elapsed = state["train_time_s"] - window_start
                    row = {"event": "step", "step": state["step"], "epoch": state["epoch"],
                           "loss": loss_sum / max(count, 1), "lr": engine.lr(), "tokens_per_s": tokens / elapsed,
                           "elapsed_s": state["train_time_s"]}
                    state["train_tokens"] += int(tokens)
                    train_log.write(row)
                    if tracker and not stop.signum:
                        tracker.log_step(row)
                    if progress:
                        progress.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    window_loss = window_count = 0.0
                    window_tokens = 0
                    window_start = state["train_time_s"]
                if cfg.train.eval_every and state["step"] % cfg.train.eval_every == 0:
                    early_stop = run_eval()
                    last_eval_step = state["step"]
                    save_checkpoint(engine, state, out, info)
                elif cfg.train.checkpoint_every and state["step"] % cfg.train.checkpoint_every == 0:
                    save_checkpoint(engine, state, out, info)
                stop_now = dist_utils.all_reduce_sum([stop.signum], info)[0] if info.distributed else stop.signum
                if stop_now:
                    if tracker:  # a job-wide signal may have ended wandb's service process too
                        tracker.abandon()
                    save_checkpoint(engine, state, out, info)
                    log.warning("stop signal received: checkpoint written at step %d; exiting with code %d "
                                "(rerun with --resume to continue)", state["step"], PREEMPTED_EXIT_CODE)
                    raise Preempted()
                if early_stop or state["step"] >= total_steps:
                    break
            else:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                if not cfg.train.eval_every:
                    early_stop = run_eval()
                    last_eval_step = state["step"]
                save_checkpoint(engine, state, out, info)
                continue
            break
    finally:
        if progress:
            progress.close()
    if last_eval_step != state["step"]:
        run_eval()
        save_checkpoint(engine, state, out, info)
    if early_stop:
        log.info("early stopping after %d evaluations without improvement", cfg.train.patience)

    # ---- final scores of the best export
    best_model, _ = load_tagger(os.path.join(out, "export"), info.device)
    result = {"model_type": cfg.model.type, "num_parameters": num_parameters, "world_size": info.world_size,
              "engine": engine.name, "train_wall_s": state["train_time_s"],
              "train_tokens_per_s": state["train_tokens"] / max(state["train_time_s"], 1e-9),
              "steps": state["step"], "best_step": state["best_step"], "labels": labels}
    for fold in ("valid", "test"):
        scores, pred_tags = evaluate(best_model, windows[fold], folds[fold], labels, info, cfg, pad_id)
        result[fold] = scores
        if info.is_main:
            os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
            _write_jsonl(os.path.join(out, "predictions", f"{fold}.jsonl"),
                         ({"index": s.index, "tokens": s.tokens, "gold": s.tags, "pred": p}
                          for s, p in zip(folds[fold], pred_tags)))
        log.info("best model (step %d) on %s: entity F1 %.2f (P %.2f R %.2f), strict F1 %.2f, token acc %.2f",
                 state["best_step"], fold, 100 * scores["f1"], 100 * scores["precision"], 100 * scores["recall"],
                 100 * scores["strict"]["f1"], 100 * scores["token_accuracy"])
    if info.is_main:
        with open(os.path.join(out, "metrics.json.tmp"), "w") as f:
            json.dump(result, f, indent=2)
        os.replace(os.path.join(out, "metrics.json.tmp"), os.path.join(out, "metrics.json"))
        if tracker:
            tracker.finish(result, folds["test"], result_preds_path=os.path.join(out, "predictions", "test.jsonl"))
        return result
    return None
