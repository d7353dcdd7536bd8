"""Loading the runs of a report: saved predictions, training log, metrics and config of each run folder.

Every file is read through the run-folder schema (:class:`common.rundir.RunFolder`).  When a run has no
saved predictions for the fold, its export tags the fold; when it has both, the export is timed on the
fold (tagging words/s).  Either way the tags come from the project's one prediction function,
:func:`taggers.predict.predict_windows`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

from common.data import Sentence
from common.rundir import RunFolder

log = logging.getLogger(__name__)


class ReportError(RuntimeError):
    """A run or input the report cannot use; the message says which and why."""


@dataclass
class RunData:
    name: str
    path: str
    metrics: dict
    config: dict
    train_log: dict  # {"step": [(step, elapsed_s, loss)], "eval": [(step, elapsed_s, f1)]}
    indices: list[int]
    tokens: list[list[str]]
    gold: list[list[str]]
    pred: list[list[str]]
    source: str  # "predictions" or "export"
    fold: str = "test"
    tagging: dict | None = None  # words_per_s etc.
    notes: list[str] = field(default_factory=list)


# --- reading run files ---------------------------------------------------------------------------------

def _read(path: str, reader):
    """``reader()``; a malformed file (ValueError, e.g. a bad JSON line) becomes a ReportError naming it."""
    try:
        return reader()
    except ValueError as e:
        msg = str(e)
        raise ReportError(msg if msg.startswith(path) else f"{path}: {msg}") from None


def read_predictions(run: RunFolder, fold: str
                     ) -> tuple[list[int], list[list[str]], list[list[str]], list[list[str]]]:
    """``(indices, tokens, gold, pred)`` of ``predictions/{fold}.jsonl``, sorted by sentence index."""
    path = run.predictions_path(fold)
    recs = _read(path, lambda: run.read_predictions(fold))
    for k, r in enumerate(recs):
        missing = [f for f in ("tokens", "gold", "pred") if f not in r]
        if missing:
            raise ReportError(f"{path}: record {k}: missing {missing}")
        if not (len(r["tokens"]) == len(r["gold"]) == len(r["pred"])):
            raise ReportError(f"{path}: sentence {r.get('index', k)}: {len(r['tokens'])} tokens, "
                              f"{len(r['gold'])} gold tags, {len(r['pred'])} predicted tags")
    recs.sort(key=lambda r: r.get("index", 0))
    idx = [r.get("index", k) for k, r in enumerate(recs)]
    if len(set(idx)) != len(idx):
        raise ReportError(f"{path}: duplicate sentence indices")
    return idx, [r["tokens"] for r in recs], [r["gold"] for r in recs], [r["pred"] for r in recs]


def read_train_log(run: RunFolder, fold: str = "valid") -> dict:
    """Loss per step and F1 per evaluation on ``fold``: ``{"step": [(step, elapsed_s, loss)], "eval": [...]}``."""
    out = {"step": [], "eval": []}
    for r in _read(run.train_log_path, run.read_train_log):
        ev = r.get("event")
        if ev == "step" and r.get("loss") is not None:
            out["step"].append((r.get("step", 0), r.get("elapsed_s", 0.0), float(r["loss"])))
        elif ev == "eval" and r.get("fold", fold) == fold and r.get("f1") is not None:
            out["eval"].append((r.get("step", 0), r.get("elapsed_s", 0.0), float(r["f1"])))
    return out


def data_path_of_runs(paths: Sequence[str]) -> str | None:
    """The data path (``data.path`` of the saved config) of the first run that records an existing one."""
    for path in paths:
        run = RunFolder(path)
        data = _read(run.config_path, run.data_path)
        if data and os.path.exists(data):
            log.info("data from %s: %s", run.config_path, data)
            return data
    return None


def unique_names(paths: Sequence[str]) -> list[str]:
    names = []
    for p in paths:
        base = os.path.basename(os.path.normpath(p)) or p
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


# --- tagging with an export ----------------------------------------------------------------------------

def load_export(export_dir: str, device: str):
    """``(model, windower)`` via :func:`taggers.export.load_tagger`; ReportError when it cannot be loaded."""
    from taggers.export import load_tagger

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        return load_tagger(export_dir, device)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported with the path
        raise ReportError(f"cannot load {export_dir}: {type(e).__name__}: {e}") from None


def tag_sentences(model, windower, sentences: Sequence[Sentence], device: str, max_tokens: int = 4096,
                  warmup: bool = True, min_seconds: float = 3.0, max_repeats: int = 5
                  ) -> tuple[list[list[str]], float, int]:
    """Word-level tags, the seconds one pass takes (encoding + model + decoding), and the number of passes.

    After a warm-up batch, the fold is tagged once; when that takes less than ``min_seconds`` it is tagged
    again (up to ``max_repeats`` passes in all) and the fastest pass counts, which steadies the
    figure on a busy machine.
    """
    import torch

    from taggers.predict import predict_windows

    labels = list(model.labels)
    torch_device = torch.device(device)

    def run(sents):
        windows = windower.windows(list(sents), with_labels=False)
        preds = predict_windows(model, windows, [len(s) for s in sents], device=torch_device, precision="fp32",
                                max_tokens=max_tokens, pad_id=windower.pad_id)
        return preds.tags(labels)

    def timed():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = run(sentences)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    if warmup and sentences:
        run(sentences[: min(8, len(sentences))])
    tags, secs = timed()
    runs = 1
    while secs * runs < min_seconds and runs < max_repeats:  # short folds: best of a few passes
        secs = min(secs, timed()[1])
        runs += 1
    return tags, secs, runs


def precision_check(export_dir: str, sentences: Sequence[Sentence], device: str, max_tokens: int) -> dict:
    """The export scored in fp32 and in bf16 (weights cast as the batch tagger casts them): F1 of each, and
    how alike the two taggings are (:func:`common.metrics.span_agreement`)."""
    import torch

    from common.metrics import score_words, span_agreement
    from taggers.precision import cast_for_inference
    from taggers.predict import predict_windows

    out, tags = {}, {}
    gold = [s.tags for s in sentences]
    for precision in ("fp32", "bf16"):
        model, windower = load_export(export_dir, device)  # afresh: casting changes the weights in place
        cast_for_inference(model, precision, device)
        preds = predict_windows(model, windower.windows(list(sentences), with_labels=False),
                                [len(s) for s in sentences], torch.device(device), precision, max_tokens,
                                windower.pad_id)
        tags[precision] = preds.tags(model.labels)
        out[f"{precision}_f1"] = score_words(gold, tags[precision])["f1"]
    return {**out, **span_agreement(tags["fp32"], tags["bf16"])}


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def time_export(export_dir: str, sentences: list[Sentence], args) -> tuple[dict, list[list[str]]]:
    """Tag ``sentences`` with the export (timed as :func:`tag_sentences` says): ``(timing info, tags)``."""
    import torch

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model, windower = load_export(export_dir, device)
    load_s = time.perf_counter() - t0
    bare = [Sentence(list(s.tokens), None, s.doc, s.index) for s in sentences]
    log.info("timing %s on %d sentences (%s)", export_dir, len(bare), device)
    try:
        tags, secs, passes = tag_sentences(model, windower, bare, device, args.max_tokens)
    except Exception as e:  # noqa: BLE001
        raise ReportError(f"tagging with {export_dir} failed: {type(e).__name__}: {e}") from None
    words = sum(len(s.tokens) for s in bare)
    info = {"words_per_s": words / secs if secs > 0 else None, "sentences_per_s": len(bare) / secs if secs else None,
            "words": words, "sentences": len(bare), "seconds": secs, "load_seconds": load_s, "device": device,
            "threads": torch.get_num_threads(), "max_tokens": args.max_tokens,
            "passes": passes}
    return info, tags


# --- loading a run ------------------------------------------------------------------------------------

def load_run(path: str, name: str, fold: str, data_fold: list[Sentence] | None, args, saved: bool = True
             ) -> RunData:
    """Read a run folder; tag ``data_fold`` with its export when it has no saved predictions for ``fold``
    (or when ``saved`` is false: the predictions were made on another data set)."""
    if not os.path.isdir(path):
        raise ReportError(f"{path}: not a run folder")
    run = RunFolder(path)
    metrics = _read(run.metrics_path, run.read_metrics)
    config = _read(run.config_path, run.read_config)
    train_log = read_train_log(run)
    predictions = os.path.relpath(run.predictions_path(fold), path)  # "predictions/{fold}.jsonl", for messages
    notes: list[str] = []
    tagging = None
    if saved and os.path.exists(run.predictions_path(fold)):
        indices, tokens, gold, pred = read_predictions(run, fold)
        source = "predictions"
        if run.has_export() and not args.no_speed:
            sents = _timing_sentences(indices, tokens, data_fold, args.speed_sentences)
            try:
                tagging, _ = time_export(run.export_dir, sents, args)
            except ReportError as e:
                notes.append(f"tagging speed not measured: {e}")
                log.warning("%s: %s", name, notes[-1])
    elif run.has_export():
        if data_fold is None:
            raise ReportError(f"{path}: no {predictions}, and no --data to tag the {fold!r} fold "
                              f"with the export")
        sents = list(data_fold)
        tagging, pred = time_export(run.export_dir, sents, args)
        indices = [s.index for s in sents]
        tokens = [list(s.tokens) for s in sents]
        gold = [list(s.tags) for s in sents]
        source = "export"
    else:
        raise ReportError(f"{path}: neither {predictions} nor an {os.path.basename(run.export_dir)}/ folder")
    return RunData(name, path, metrics, config, train_log, indices, tokens, gold, pred, source, fold, tagging, notes)


def _timing_sentences(indices, tokens, data_fold, limit) -> list[Sentence]:
    if data_fold is not None and len(data_fold) == len(indices):
        sents = list(data_fold)
    else:
        sents = [Sentence(list(t), None, 0, ix) for ix, t in zip(indices, tokens)]
    return sents[:limit] if limit and limit > 0 else sents


def check_against_data(run: RunData, data_fold: list[Sentence] | None) -> None:
    """Note (not fail) when saved predictions disagree with --data on tokens or gold tags."""
    if data_fold is None or run.source != "predictions":
        return
    by_index = {s.index: s for s in data_fold}
    bad = sum(1 for ix, t, g in zip(run.indices, run.tokens, run.gold)
              if ix not in by_index or by_index[ix].tokens != t or by_index[ix].tags != g)
    if len(data_fold) != len(run.indices) or bad:
        run.notes.append(f"saved predictions cover {len(run.indices)} sentences, --data fold has "
                         f"{len(data_fold)}; {bad} sentences differ in tokens or gold tags (scored as saved)")
        log.warning("%s: %s", run.name, run.notes[-1])
