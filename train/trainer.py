"""One training loop for both taggers (model-agnostic; see docs/DESIGN.md).

``run(cfg, resume, overwrite)`` trains, evaluates on the validation fold, keeps
the best export by validation entity F1, checkpoints for resume, and finally
scores the best export on valid and test.  It runs the same with or without
torchrun.  Everything is checked (data, tokenizer, model, config) before the
run folder is touched (``train.inputs``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time

import numpy as np
import torch

from common import distributed
from common.batching import collate_windows
from common.data import sentences_alone
from common.heartbeat import CollectiveTimeout, Heartbeat, is_timeout
from common.rundir import RunFolder
from taggers.dropout import training_dropout, use_fast_dropout
from taggers.export import load_tagger, make_windower, save_export
from taggers.precision import attention_of, resolve_precision, training_attention, use_attention

from .checkpoint import check_checkpoint, check_resume_config, latest_checkpoint, load_with_fallback, save_checkpoint
from .config import Config, ConfigError, to_dict
from .engine import make_engine
from .evaluate import score
from .inputs import build_model, encode_windows, load_data, make_sampler, plan_steps
from .state import PREEMPTED_EXIT_CODE, LogWindow, Preempted, StopFlag, TrainState, batch_seed
from .tracking import Tracker

log = logging.getLogger("train")


class Trainer:
    """Builds the model, engine and batches for ``cfg``, then ``train()`` runs the loop."""

    heartbeat: Heartbeat | None = None
    """Set by :func:`run` under torchrun: publishes the micro-batches started, names a stuck rank."""

    def __init__(self, cfg: Config, info: distributed.DistInfo, stop: StopFlag, resume: bool, overwrite: bool):
        self.cfg, self.info, self.stop = cfg, info, stop
        self.run_dir = RunFolder(cfg.train.output_dir)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        checkpoint = self._choose_checkpoint(resume)
        self.data = load_data(cfg)
        self.model = build_model(cfg, self.data)
        self._choose_kernels()
        self.windower = make_windower(cfg.model, self.data.labels, self.data.tokenizer, self.model)
        self.windows = encode_windows(cfg, self.windower, self.data)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.sampler = make_sampler(cfg, info, self.windows["train"])
        plan = plan_steps(cfg, len(self.sampler))
        self.total_steps, self.epochs = plan.total_steps, plan.epochs
        self.engine = make_engine(self.model, cfg, info, self.total_steps)
        self.precision = resolve_precision(cfg.train.precision, info.device, training=True)
        log.info("%s tagger, %.1fM parameters, %d process(es) on %s (engine %s, %s%s, %s dropout), %d steps "
                 "(%d per epoch)", cfg.model.type, self.num_parameters / 1e6, info.world_size, info.device,
                 self.engine.name, self.precision, f", {self.attention} attention" if self.attention else "",
                 self.dropout_kernel, self.total_steps, plan.steps_per_epoch)
        self.state = TrainState(world_size=info.world_size, grad_accum=cfg.optim.grad_accum)
        self._prepare_run_dir(resume, overwrite)
        resumed = self._resume(checkpoint)
        self.last_eval_step = self.state.step if resumed else -1
        self.last_save_s = time.monotonic()
        self.early_stop = False
        self.window = LogWindow(start_s=self.state.train_time_s)
        self.tracker = Tracker(cfg, info, self.num_parameters, resuming=resumed) if info.is_main else None

    def _choose_kernels(self) -> None:
        """The encoder's attention and the dropouts' mask kernel in training (``train.attention``,
        ``train.dropout_kernel``); the export is the same whichever runs."""
        use_attention(self.model, training_attention(self.cfg.train.attention))
        self.attention = attention_of(self.model)
        self.dropout_kernel = training_dropout(self.cfg.train.dropout_kernel, self.info.device)
        if self.dropout_kernel == "fast":
            use_fast_dropout(self.model)

    def _choose_checkpoint(self, resume: bool) -> str | None:
        """``--resume``: the checkpoint to load, chosen by rank 0 (on a slow shared file system ranks could list
        different ones) and refused here, before the data, model and engine, when this run cannot continue it."""
        out = self.run_dir.root
        if not resume:
            return None
        check_resume_config(self.cfg, out)
        checkpoint = distributed.broadcast_object(latest_checkpoint(out) if self.info.is_main else None, self.info)
        if checkpoint is None:
            log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
        else:
            check_checkpoint(checkpoint, self.cfg.train.engine, self.info, self.cfg.optim.grad_accum)
        return checkpoint

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder that holds another run, unless resuming or overwriting; rank 0 readies it."""
        out = self.run_dir.root
        if not resume and self.run_dir.holds_run() and not overwrite:
            raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or --overwrite to "
                              "delete it and start over")
        distributed.barrier()  # every rank has read the folder before rank 0 changes it
        if self.info.is_main:
            if overwrite and not resume:
                log.warning("--overwrite: deleting the run in %s", out)
                self.run_dir.clear()
            self.run_dir.clear_results()  # metrics.json always describes the export beside it
            os.makedirs(out, exist_ok=True)
            self.run_dir.write_config(to_dict(self.cfg))
        distributed.barrier()

    def _resume(self, checkpoint: str | None) -> bool:
        """Load ``checkpoint`` (an unreadable one: the newest older one) into the engine and the state; the
        training log is cut back to its step. False when there is none (a fresh start)."""
        if checkpoint is not None:
            checkpoint, saved = load_with_fallback(self.engine, checkpoint, self.info, self.cfg.optim.grad_accum)
            self.state = TrainState(**saved)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, self.state.step,
                     self.state.epoch, self.state.batch_in_epoch)
        if self.info.is_main:  # the log continues from the checkpoint (rows after it are rewritten)
            self.run_dir.truncate_train_log(self.state.step if checkpoint is not None else None)
        return checkpoint is not None

    # ---------------------------------------------------------------- the loop
    def train(self) -> dict | None:
        """Train to the end (or early stop, or a stop signal); returns the final metrics on rank 0."""
        state, cfg = self.state, self.cfg.train
        self.engine.train()
        progress = self._progress_bar()
        try:
            while state.epoch < self.epochs and state.step < self.total_steps and not self.early_stop:
                if not self.train_epoch(progress):
                    break
                state.epoch += 1
                state.batch_in_epoch = 0
                if not cfg.eval_every:
                    self.evaluate()
                self.save()
        finally:
            if progress is not None:
                progress.close()
        if self.last_eval_step != state.step:
            self.evaluate()
            self.save()
        if self.early_stop:
            log.info("early stopping after %d evaluations without improvement", cfg.patience)
        return self.finish()

    def train_epoch(self, progress) -> bool:
        """The rest of the current epoch; False when training ends inside it (last step, early stop)."""
        state = self.state
        self.sampler.set_epoch(state.epoch)
        self.sampler.skip(state.batch_in_epoch)
        batches_in_epoch = len(self.sampler)
        micro = 0
        for idx in self.sampler:
            micro += 1
            state.batch_in_epoch += 1
            if not self.train_step(idx, micro % self.cfg.optim.grad_accum == 0
                                   or state.batch_in_epoch == batches_in_epoch):
                continue
            self.after_step(progress)
            if self.early_stop or state.step >= self.total_steps:
                return False
        return True

    def after_step(self, progress) -> None:
        """Log, evaluate and checkpoint as their intervals say; a stop signal checkpoints and ends the run."""
        state, cfg = self.state, self.cfg.train
        if progress is not None:
            progress.update(1)
        if state.step % cfg.log_every == 0 or state.step == self.total_steps:
            self.log_step(progress)
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            self.evaluate()
            self.save()
        elif cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            self.save()
        elif self.checkpoint_due():
            self.save()
        self.stop_if_signalled()

    def train_step(self, idx: list[int], last_micro_step: bool) -> bool:
        """Forward and backward one micro-batch; the optimizer steps on the last of a step's micro-batches."""
        t_start = time.perf_counter()
        if self.heartbeat is not None:
            self.heartbeat.beat(self.state.step)
        # dropout masks drawn per global batch, not from each process's stream: the same at any world size
        torch.manual_seed(batch_seed(self.cfg.train.seed, self.state.epoch,
                                     (self.state.batch_in_epoch - 1) * self.info.world_size + self.info.rank))
        batch = collate_windows([self.windows["train"][i] for i in idx], self.windower.pad_id)
        self.window.tokens += int(batch["attention_mask"].sum())  # counted on the host, before the copy
        batch = {k: v.to(self.info.device, non_blocking=True) for k, v in batch.items()}
        with self.engine.micro_batch(last_micro_step):
            loss = self.engine.forward(batch)["loss"]
            self.engine.backward(loss, last_micro_step)
        self.window.loss = self.window.loss + loss.detach().double()
        self.window.micro_batches += 1
        if last_micro_step:
            self.engine.step()
            self.state.step += 1
        self.state.train_time_s += time.perf_counter() - t_start
        return last_micro_step

    def log_step(self, progress) -> None:
        """One ``step`` row: mean loss and tokens/s since the last row, summed over ranks."""
        state, window = self.state, self.window
        t_wait = time.perf_counter()
        loss = float(window.loss)  # waits for the device: its time counts as training time
        state.train_time_s += time.perf_counter() - t_wait
        loss_sum, count, tokens = distributed.all_reduce_sum([loss, window.micro_batches, window.tokens], self.info)
        row = {"event": "step", "step": state.step, "epoch": state.epoch, "loss": loss_sum / max(count, 1),
               "lr": self.engine.lr(), "tokens_per_s": tokens / (state.train_time_s - window.start_s),
               "elapsed_s": state.train_time_s}
        state.train_tokens += int(tokens)
        self._write_log(row)
        if self.tracker and not self.stop.signum:
            self.tracker.log_step(row)
        if progress is not None:
            progress.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        self.window = LogWindow(start_s=state.train_time_s)

    def evaluate(self) -> None:
        """Score the validation fold; a better F1 replaces the export; patience decides early stopping."""
        state, cfg = self.state, self.cfg.train
        scores, _ = self.score(self.engine.module, "valid")
        improved = scores["f1"] > state.best_f1
        row = {"event": "eval", "step": state.step, "epoch": state.epoch, "fold": "valid",
               **{k: scores[k] for k in ("token_accuracy", "word_accuracy", "precision", "recall", "f1",
                                         "per_type")},
               "strict": {k: scores["strict"][k] for k in ("precision", "recall", "f1")},
               "elapsed_s": state.train_time_s, "best": improved}
        if cfg.eval_test:  # watched only: model selection stays on valid
            row["test_f1"] = self.score(self.engine.module, "test")[0]["f1"]
        self._write_log(row)
        if self.tracker and not self.stop.signum:
            self.tracker.log_eval(row)
        log.info("step %d valid: entity F1 %.2f (P %.2f R %.2f), token acc %.2f%s", state.step,
                 100 * scores["f1"], 100 * scores["precision"], 100 * scores["recall"],
                 100 * scores["token_accuracy"], " (best)" if improved else "")
        if improved:
            state.best_f1, state.best_step, state.bad_evals = scores["f1"], state.step, 0
            if self.info.is_main:
                save_export(self.engine.module, self.cfg.model, self.data.tokenizer, self.run_dir.export_dir,
                            {"best_step": state.step, "valid_f1": scores["f1"]})
        else:
            state.bad_evals += 1
        distributed.barrier()
        self.early_stop = bool(cfg.patience and state.bad_evals >= cfg.patience)
        self.last_eval_step = state.step

    def score(self, model, fold: str) -> tuple[dict, list[list[str]]]:
        """Entity scores of ``model`` on ``fold`` and its predicted tags (every rank gets both)."""
        return score(model, self.windows[fold], self.data.folds[fold], self.data.labels, self.info.device,
                     self.precision, self.cfg.train.eval_max_tokens, self.windower.pad_id, self.info)

    def score_sentences_alone(self, model, fold: str) -> dict:
        """P/R/F1 on ``fold`` with every sentence a window of its own (no packing, no document context)."""
        sentences = self.data.folds[fold]
        scores, _ = score(model, self.windower.windows(sentences_alone(sentences)), sentences, self.data.labels,
                          self.info.device, self.precision, self.cfg.train.eval_max_tokens, self.windower.pad_id,
                          self.info)
        return {k: scores[k] for k in ("precision", "recall", "f1")} | {"strict_f1": scores["strict"]["f1"]}

    def save(self) -> None:
        save_checkpoint(self.engine, dataclasses.asdict(self.state), self.run_dir.root, self.info)
        self.last_save_s = time.monotonic()

    def checkpoint_due(self) -> bool:
        """``train.checkpoint_minutes``: rank 0's clock decides, at logged steps only, so that the ranks agree
        with one small collective per log interval rather than a host sync per step."""
        minutes, every = self.cfg.train.checkpoint_minutes, self.cfg.train.log_every
        if not minutes or self.state.step % every:
            return False
        due = self.info.is_main and time.monotonic() - self.last_save_s >= 60 * minutes
        return distributed.all_reduce_sum([due], self.info)[0] > 0

    def stop_if_signalled(self) -> None:
        """On SIGUSR1/SIGTERM (any rank): checkpoint on every rank, then raise :class:`Preempted`."""
        signum = self.stop.signum
        if self.info.distributed:
            if self.state.step % self.cfg.train.log_every:  # ranks agree at logged steps: no host sync per step
                return
            signum = distributed.all_reduce_sum([signum], self.info)[0]
        if not signum:
            return
        if self.tracker:  # a job-wide signal may have ended wandb's service process too
            self.tracker.abandon()
        self.save()
        log.warning("stop signal received: checkpoint written at step %d; exiting with code %d "
                    "(rerun with --resume to continue)", self.state.step, PREEMPTED_EXIT_CODE)
        raise Preempted()

    def finish(self) -> dict | None:
        """Score the best export on valid and test; write predictions and metrics.json (rank 0)."""
        state = self.state
        best_model, _ = load_tagger(self.run_dir.export_dir, self.info.device)
        result = {"model_type": self.cfg.model.type, "num_parameters": self.num_parameters,
                  "world_size": self.info.world_size, "engine": self.engine.name, "precision": self.precision,
                  "attention": self.attention, "dropout_kernel": self.dropout_kernel,
                  "train_wall_s": state.train_time_s,
                  "train_tokens_per_s": state.train_tokens / max(state.train_time_s, 1e-9),
                  "steps": state.step, "best_step": state.best_step, "labels": self.data.labels}
        for fold in ("valid", "test"):
            scores, pred_tags = self.score(best_model, fold)
            result[fold] = scores
            result[fold]["sentences_alone"] = self.score_sentences_alone(best_model, fold)
            if self.info.is_main:
                self.run_dir.write_predictions(fold, ({"index": s.index, "tokens": s.tokens, "gold": s.tags,
                                                       "pred": p} for s, p in zip(self.data.folds[fold], pred_tags)))
            log.info("best model (step %d) on %s: entity F1 %.2f (P %.2f R %.2f), strict F1 %.2f, token acc %.2f",
                     state.best_step, fold, 100 * scores["f1"], 100 * scores["precision"], 100 * scores["recall"],
                     100 * scores["strict"]["f1"], 100 * scores["token_accuracy"])
            log.info("best model on %s, every sentence alone (no document context): entity F1 %.2f", fold,
                     100 * scores["sentences_alone"]["f1"])
        if not self.info.is_main:
            return None
        self.run_dir.write_metrics(result)
        if self.tracker:
            self.tracker.finish(result, self.run_dir.predictions_path("test"))
        return result

    def _write_log(self, row: dict) -> None:
        if self.info.is_main:
            self.run_dir.append_train_log(row)

    def _progress_bar(self):
        if not (self.info.is_main and self.cfg.train.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.state.step, desc=f"train {self.cfg.model.type}",
                    unit="step", dynamic_ncols=True, mininterval=2.0)


def run(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Train per ``cfg``; returns the final metrics on rank 0 (None elsewhere).

    On any error the process group is torn down without a collective, so a
    failing rank never waits for its peers (torchrun then stops the job).
    """
    info = distributed.setup(cfg.train.device, timeout_s=cfg.train.pg_timeout_s)
    stop = StopFlag()
    completed = False
    heartbeat = None
    try:
        distributed.setup_logging(info.rank)  # records of rank 0 only
        heartbeat = Heartbeat.for_job(info.rank, info.world_size, cfg.train.pg_timeout_s)
        stop.install()
        trainer = Trainer(cfg, info, stop, resume, overwrite)
        trainer.heartbeat = heartbeat
        result = trainer.train()
        completed = True
        return result
    except RuntimeError as e:
        if info.distributed and is_timeout(e):  # a peer hung: name it rather than print gloo's/NCCL's message
            raise CollectiveTimeout(heartbeat.diagnose(cfg.train.pg_timeout_s) if heartbeat else
                                    f"a collective waited {cfg.train.pg_timeout_s} s (train.pg_timeout_s) for a "
                                    "peer") from e
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        stop.restore()
        distributed.teardown(completed)
