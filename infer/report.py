"""``ner-report``: an evaluation report comparing trained NER runs on one fold.

    ner-report runs/bilstm_conll03 runs/bert_conll03 --data data/conll03.json --fold test --out report/

For each run folder it reads ``RUN/predictions/{fold}.jsonl`` (written by
``ner-train``); when that file is missing it tags the fold with the run's best
export (``RUN/export``, loaded with ``train.export.load_tagger``).  When an
export exists it is also timed on the fold (tagging words/s; ``--no-speed``
skips this).  The report folder gets ``report.md``, a self-contained
``report.html`` (figures embedded), ``figures/*.png`` and ``report.json``
with every number shown.

Sections: headline scores and costs, per-type scores, learning curves, entity
error classes (defined in :mod:`infer.report_analysis`) with a type confusion
matrix and examples, disagreements between models, breakdowns (sentence
length, entity length, entities seen/unseen in training, all-caps sentences)
and improvement hints computed from those numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from common.data import DataError, Sentence, load_folds
from common.metrics import score_words
from common.spans import tags_to_spans

from . import report_analysis as ra
from . import report_figures as rf
from .report_render import Document, context_window, highlight, md_escape

log = logging.getLogger("ner-report")


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


# --- reading runs --------------------------------------------------------------------------------

def read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}: line {lineno}: not valid JSON: {e}") from None
    return out


def read_predictions(path: str) -> tuple[list[int], list[list[str]], list[list[str]], list[list[str]]]:
    """``(indices, tokens, gold, pred)`` sorted by sentence index."""
    recs = read_jsonl(path)
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


def read_train_log(path: str, fold: str = "valid") -> dict:
    out = {"step": [], "eval": []}
    if not os.path.exists(path):
        return out
    for r in read_jsonl(path):
        ev = r.get("event")
        if ev == "step" and r.get("loss") is not None:
            out["step"].append((r.get("step", 0), r.get("elapsed_s", 0.0), float(r["loss"])))
        elif ev == "eval" and r.get("fold", fold) == fold and r.get("f1") is not None:
            out["eval"].append((r.get("step", 0), r.get("elapsed_s", 0.0), float(r["f1"])))
    return out


def read_toml(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def data_from_config(config: dict) -> str | None:
    """The data path recorded in a run's resolved config, if any."""
    d = config.get("data")
    candidates = [d] if isinstance(d, str) else []
    if isinstance(d, dict):
        candidates += [d.get(k) for k in ("path", "file", "data", "dir")]
    candidates += [config.get(k) for k in ("data_path", "data_file")]
    for c in candidates:
        if isinstance(c, str) and os.path.exists(c):
            return c
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


# --- tagging with an export ----------------------------------------------------------------------

def load_export(export_dir: str, device: str):
    """``(model, encoder)`` via ``train.export.load_tagger``; ReportError when it is not available."""
    try:
        from train.export import load_tagger
    except ImportError as e:
        raise ReportError(f"cannot load {export_dir}: train.export.load_tagger is not available ({e})") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        return load_tagger(export_dir, device)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported with the path
        raise ReportError(f"cannot load {export_dir}: {type(e).__name__}: {e}") from None


def tag_sentences(model, encoder, sentences: Sequence[Sentence], device: str, max_tokens: int = 4096,
                  warmup: bool = True, min_seconds: float = 3.0, max_repeats: int = 5
                  ) -> tuple[list[list[str]], float, int]:
    """Word-level tags, the seconds one pass takes (encoding + model + decoding), and the number of passes.

    After a warm-up batch, the fold is tagged once; when that takes less than ``min_seconds`` it is tagged
    again (up to ``max_repeats`` passes in all) and the fastest pass counts, which steadies the
    figure on a busy machine.
    """
    import torch

    from common.batching import collate_windows, token_budget_batches
    from common.encoding import words_from_pieces

    model.eval()
    labels = list(encoder.labels)

    def run(sents):
        windows = encoder.encode(list(sents), with_labels=False)
        piece_preds: list = [None] * len(windows)
        batches = token_budget_batches([len(w.input_ids) for w in windows], max_tokens, shuffle=False)
        with torch.inference_mode():
            for b in batches:
                batch = collate_windows([windows[i] for i in b], encoder.pad_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                outputs = model(batch)
                pred_ids, _ = model.decode(batch, outputs)
                pred_ids = pred_ids.cpu().tolist()
                for r, i in enumerate(b):
                    piece_preds[i] = pred_ids[r][:len(windows[i].input_ids)]
        word_ids = words_from_pieces(windows, piece_preds, [len(s.tokens) for s in sents])
        return [[labels[int(t)] for t in row] for row in word_ids]

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


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- loading everything ---------------------------------------------------------------------------

def load_run(path: str, name: str, fold: str, data_fold: list[Sentence] | None, args) -> RunData:
    if not os.path.isdir(path):
        raise ReportError(f"{path}: not a run folder")
    metrics_path = os.path.join(path, "metrics.json")
    metrics = {}
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
    config = read_toml(os.path.join(path, "config.toml"))
    train_log = read_train_log(os.path.join(path, "train_log.jsonl"))
    pred_path = os.path.join(path, "predictions", f"{fold}.jsonl")
    export_dir = os.path.join(path, "export")
    has_export = os.path.exists(os.path.join(export_dir, "ner_config.json")) or os.path.isdir(export_dir)
    notes: list[str] = []
    tagging = None
    if os.path.exists(pred_path):
        indices, tokens, gold, pred = read_predictions(pred_path)
        source = "predictions"
        if has_export and not args.no_speed:
            sents = _timing_sentences(indices, tokens, data_fold, args.speed_sentences)
            try:
                tagging, export_pred = _time_export(export_dir, sents, args)
                pos = {ix: k for k, ix in enumerate(indices)}
                same = sum(export_pred[j] == pred[pos[s.index]] for j, s in enumerate(sents) if s.index in pos)
                tagging["agreement_with_saved_predictions"] = same / len(sents) if sents else None
            except ReportError as e:
                notes.append(f"tagging speed not measured: {e}")
                log.warning("%s: %s", name, notes[-1])
    elif has_export:
        if data_fold is None:
            raise ReportError(f"{path}: no predictions/{fold}.jsonl, and no --data to tag the {fold!r} fold "
                              f"with the export")
        sents = list(data_fold)
        tagging, pred = _time_export(export_dir, sents, args)
        indices = [s.index for s in sents]
        tokens = [list(s.tokens) for s in sents]
        gold = [list(s.tags) for s in sents]
        source = "export"
    else:
        raise ReportError(f"{path}: neither predictions/{fold}.jsonl nor an export/ folder")
    return RunData(name, path, metrics, config, train_log, indices, tokens, gold, pred, source, fold, tagging, notes)


def _timing_sentences(indices, tokens, data_fold, limit) -> list[Sentence]:
    if data_fold is not None and len(data_fold) == len(indices):
        sents = list(data_fold)
    else:
        sents = [Sentence(list(t), None, 0, ix) for ix, t in zip(indices, tokens)]
    return sents[:limit] if limit and limit > 0 else sents


def _time_export(export_dir: str, sentences: list[Sentence], args) -> tuple[dict, list[list[str]]]:
    import torch

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model, encoder = load_export(export_dir, device)
    load_s = time.perf_counter() - t0
    bare = [Sentence(list(s.tokens), None, s.doc, s.index) for s in sentences]
    log.info("timing %s on %d sentences (%s)", export_dir, len(bare), device)
    try:
        tags, secs, passes = tag_sentences(model, encoder, bare, device, args.max_tokens)
    except Exception as e:  # noqa: BLE001
        raise ReportError(f"tagging with {export_dir} failed: {type(e).__name__}: {e}") from None
    words = sum(len(s.tokens) for s in bare)
    info = {"words_per_s": words / secs if secs > 0 else None, "sentences_per_s": len(bare) / secs if secs else None,
            "words": words, "sentences": len(bare), "seconds": secs, "load_seconds": load_s, "device": device,
            "threads": torch.get_num_threads(), "max_tokens": args.max_tokens,
            "passes": passes}
    return info, tags


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


# --- analysis --------------------------------------------------------------------------------------

def analyse(runs: list[RunData], seen: set | None) -> dict:
    types = sorted({s[2] for r in runs for seqs in (r.gold, r.pred) for tags in seqs for s in tags_to_spans(tags)})
    models = {}
    outcomes = {}
    for r in runs:
        scores = score_words(r.gold, r.pred)
        oc = ra.classify_corpus(r.gold, r.pred)
        outcomes[r.name] = oc
        errors = ra.error_counts(oc)
        # consistency: our exact matches are seqeval's true positives
        n_pred, n_gold = errors["num_pred"], errors["num_gold"]
        ours = ra.prf(errors["outcomes"][ra.CORRECT], n_pred, n_gold)
        if abs(ours["f1"] - scores["f1"]) > 1e-9:
            log.warning("%s: error-class F1 %.6f differs from seqeval %.6f", r.name, ours["f1"], scores["f1"])
        m = r.metrics
        logged = m.get(r.fold) if isinstance(m.get(r.fold), dict) else None
        if logged and logged.get("f1") is not None and abs(logged["f1"] - scores["f1"]) > 1e-6:
            r.notes.append(f"metrics.json reports {r.fold} F1 {100 * logged['f1']:.2f}, the report scores "
                           f"{100 * scores['f1']:.2f} on the {r.source}")
            log.warning("%s: %s", r.name, r.notes[-1])
        models[r.name] = {
            "run_dir": os.path.abspath(r.path),
            "model_type": m.get("model_type") or _config_model_type(r.config),
            "num_parameters": m.get("num_parameters"),
            "train_wall_s": m.get("train_wall_s"),
            "train_tokens_per_s": m.get("train_tokens_per_s"),
            "best_step": m.get("best_step"),
            "source": r.source,
            "sentences": len(r.gold),
            "words": sum(len(g) for g in r.gold),
            "scores": {**scores, "token_accuracy": scores["word_accuracy"]},
            "tagging": r.tagging,
            "errors": errors,
            "confusion": ra.confusion_matrix(oc, types),
            "breakdowns": ra.breakdowns(r.tokens, r.gold, r.pred, seen),
            "learning": _learning_summary(r.train_log),
            "notes": r.notes,
        }
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            a, b = runs[i], runs[j]
            if a.indices != b.indices or a.tokens != b.tokens or a.gold != b.gold:
                pairs.append({"a": a.name, "b": b.name, "comparable": False})
                continue
            d = ra.disagreements(outcomes[a.name], outcomes[b.name])
            pairs.append({"a": a.name, "b": b.name, "comparable": True, "a_only_correct": len(d["a_only"]),
                          "b_only_correct": len(d["b_only"]), "both_correct": d["both"],
                          "neither_correct": d["neither"], "_detail": d})
    return {"types": types, "models": models, "pairs": pairs, "_outcomes": outcomes}


def _config_model_type(config: dict) -> str | None:
    model = config.get("model")
    if isinstance(model, dict):
        return model.get("type") or model.get("model_type")
    return config.get("model_type")


def _learning_summary(tl: dict) -> dict:
    out = {"steps_logged": len(tl["step"]), "evals_logged": len(tl["eval"])}
    if tl["step"]:
        out["last_step"] = tl["step"][-1][0]
        out["final_loss"] = tl["step"][-1][2]
    if tl["eval"]:
        best = max(tl["eval"], key=lambda e: e[2])
        out.update(best_valid_f1=best[2], best_valid_step=best[0], best_valid_elapsed_s=best[1])
    return out


# --- formatting ------------------------------------------------------------------------------------

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def fmt_int(x) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def fmt_params(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def fmt_duration(s) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_rate(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


# --- the document ----------------------------------------------------------------------------------

def build_document(runs: list[RunData], an: dict, args, figures: dict[str, str]) -> Document:
    models = an["models"]
    names = [r.name for r in runs]
    by_name = {r.name: r for r in runs}
    doc = Document(f"NER evaluation report: fold `{args.fold}`")
    section = iter(range(1, 100))
    doc.para(f"Generated {an['generated']} by `ner-report`. Models: "
             + ", ".join(f"**{md_escape(n)}** (`{by_name[n].path}`, {models[n]['model_type'] or 'unknown type'}, "
                         f"{'saved predictions' if models[n]['source'] == 'predictions' else 'tagged by the export'})"
                         for n in names)
             + f". Data: `{an['data'] or 'not given'}`; {models[names[0]]['sentences']:,} sentences, "
             f"{models[names[0]]['words']:,} words, {models[names[0]]['errors']['num_gold']:,} gold entities.")
    for n in names:
        for note in models[n]["notes"]:
            doc.para(f"Note on **{md_escape(n)}**: {md_escape(note)}.")

    # 1 headline
    doc.heading(2, f"{next(section)}. Headline")
    rows = []
    for n in names:
        m = models[n]
        s, st, tg = m["scores"], m["scores"]["strict"], m["tagging"]
        rows.append([f"**{md_escape(n)}**", md_escape(str(m["model_type"] or "n/a")), pct(s["precision"]),
                     pct(s["recall"]), f"**{pct(s['f1'])}**", pct(st["precision"]), pct(st["recall"]), pct(st["f1"]),
                     pct(s["token_accuracy"]), fmt_params(m["num_parameters"]), fmt_duration(m["train_wall_s"]),
                     fmt_rate(m["train_tokens_per_s"]), fmt_rate(tg["words_per_s"]) if tg else "n/a"])
    doc.table(["Model", "Type", "P", "R", "F1", "strict P", "strict R", "strict F1", "Word acc.", "Params",
               "Train time", "Train tokens/s", "Tag words/s"], rows, "ll" + "r" * 11)
    doc.para("Entity precision/recall/F1 (%) are micro-averaged seqeval scores: the default mode reads tags as "
             "conlleval does, *strict* is seqeval's strict IOB2 mode. Word accuracy is the share of words whose "
             "predicted tag equals the gold tag. Parameters, training time and training tokens/s come from the "
             "run's `metrics.json`.")
    timed = [(n, models[n]["tagging"]) for n in names if models[n]["tagging"]]
    if timed:
        doc.para("Tagging speed: the export was timed on the fold after a warm-up batch (encoding + model + "
                 "decoding): " + "; ".join(_timing_sentence(n, t) for n, t in timed) + ".")
    else:
        doc.para("Tagging speed: n/a (no export was timed).")
    if len(names) > 1:
        best = max(names, key=lambda n: models[n]["scores"]["f1"])
        others = [n for n in names if n != best]
        doc.para(f"Best entity F1: **{md_escape(best)}** at {pct(models[best]['scores']['f1'])}, "
                 + ", ".join(f"{pct(models[best]['scores']['f1'] - models[o]['scores']['f1'])} points above "
                             f"**{md_escape(o)}**" for o in others) + ".")

    # 2 per type
    doc.heading(2, f"{next(section)}. Scores per entity type")
    types = an["types"]
    headers = ["Type", "Gold"]
    for n in names:
        headers += [f"{md_escape(n)} P", f"{md_escape(n)} R", f"{md_escape(n)} F1"]
    rows = []
    for t in types:
        support = models[names[0]]["scores"]["per_type"].get(t, {}).get("support", 0)
        row = [md_escape(t), fmt_int(support)]
        for n in names:
            v = models[n]["scores"]["per_type"].get(t)
            row += [pct(v["precision"]), pct(v["recall"]), f"**{pct(v['f1'])}**"] if v else ["n/a"] * 3
        rows.append(row)
    doc.table(headers, rows)
    if "per_type" in figures:
        doc.image(figures["per_type"], "Per-type precision, recall and F1")

    # 3 learning curves
    doc.heading(2, f"{next(section)}. Learning curves")
    if "learning" in figures:
        doc.image(figures["learning"], "Training loss and validation F1 against step and wall time")
    rows = []
    for n in names:
        ls = models[n]["learning"]
        rows.append([f"**{md_escape(n)}**", fmt_int(ls.get("last_step")),
                     f"{ls['final_loss']:.4f}" if "final_loss" in ls else "n/a",
                     pct(ls.get("best_valid_f1")), fmt_int(ls.get("best_valid_step")),
                     fmt_duration(ls.get("best_valid_elapsed_s")), fmt_int(models[n]["best_step"])])
    doc.table(["Model", "Last step", "Last loss", "Best valid F1", "at step", "at wall time", "Exported step"], rows)
    doc.para("Loss curves are an exponential moving average (raw values faint); validation F1 is the seqeval "
             "default-mode F1 logged at each evaluation (`train_log.jsonl`).")

    # 4 errors
    doc.heading(2, f"{next(section)}. Entity-level errors")
    doc.para("Each gold and each predicted entity (spans read as conlleval does) lands in exactly one class: "
             "*correct* (same boundaries and type), *wrong type* (same boundaries, other type), *wrong boundary* "
             "(overlapping, same type, other boundaries), *wrong type and boundary* (overlapping, other type and "
             "boundaries), *missed* (gold overlapping no prediction), *spurious* (prediction overlapping no gold). "
             "Overlapping gold and predicted entities are paired one to one (most shared words first, then same "
             "type, then left to right); an entity left over that still overlaps the other side (e.g. a gold entity "
             "predicted as two pieces) counts as its own boundary error. A paired error counts once, so "
             "*errors* below count outcomes, not entities.")
    rows = []
    for c in ra.CLASSES:
        rows.append([ra.CLASS_LABELS[c]] + [fmt_int(models[n]["errors"]["outcomes"][c]) for n in names])
    rows.append(["**errors (all but correct)**"] + [f"**{fmt_int(models[n]['errors']['errors'])}**" for n in names])
    rows.append(["gold entities"] + [fmt_int(models[n]["errors"]["num_gold"]) for n in names])
    rows.append(["predicted entities"] + [fmt_int(models[n]["errors"]["num_pred"]) for n in names])
    doc.table(["Class"] + [f"**{md_escape(n)}**" for n in names], rows)
    if "errors" in figures:
        doc.image(figures["errors"], "Entity errors by class")
    doc.heading(3, "Errors per type")
    doc.para("Counted under the gold entity's type (the predicted type for spurious predictions and for "
             "leftover predicted fragments).")
    for n in names:
        pt = models[n]["errors"]["per_type"]
        rows = [[md_escape(t)] + [fmt_int(pt[t][c]) for c in ra.CLASSES] for t in pt]
        doc.para(f"**{md_escape(n)}**")
        doc.table(["Type"] + [ra.CLASS_LABELS[c] for c in ra.CLASSES], rows)
    doc.heading(3, "Type confusion")
    doc.para("Rows: every gold entity once, under the type of the prediction it was paired with (or, for a leftover, "
             "the prediction it overlaps most), or *missed*; so the diagonal holds correct entities *and* boundary "
             "errors of the right type. Last row: spurious predictions by predicted type. Exact counts are in "
             "`report.json` (`models.NAME.confusion`).")
    if "confusion" in figures:
        doc.image(figures["confusion"], "Entity type confusion matrices")
    doc.heading(3, "Examples of each error class")
    doc.para(f"Up to {args.examples} examples per class and model, picked evenly over the fold. Bold: the "
             "entity in question; other marks show the rest of the sentence's gold or predicted entities.")
    outcomes = an["_outcomes"]
    for n in names:
        r = by_name[n]
        doc.heading(4, md_escape(n))
        for c in ra.ERROR_CLASSES:
            items = [o for o in outcomes[n] if o.cls == c]
            if not items:
                continue
            ex = []
            for o in ra.sample(items, args.examples, seed=ra.CLASSES.index(c)):
                ex.append(_example(r, o))
            doc.para(f"*{ra.CLASS_LABELS[c]}* ({len(items):,})")
            doc.examples(ex)

    # 5 disagreements
    if len(names) > 1:
        doc.heading(2, f"{next(section)}. Where the models disagree")
        for p in an["pairs"]:
            a, b = p["a"], p["b"]
            if not p["comparable"]:
                doc.para(f"**{md_escape(a)}** and **{md_escape(b)}** were not scored on the same sentences; "
                         "no comparison.")
                continue
            d = p["_detail"]
            doc.para(f"Gold entities: both exactly right {p['both_correct']:,}; only **{md_escape(a)}** "
                     f"{p['a_only_correct']:,}; only **{md_escape(b)}** {p['b_only_correct']:,}; neither "
                     f"{p['neither_correct']:,}.")
            for winner, loser, key in ((a, b, "a_only"), (b, a, "b_only")):
                items = d[key]
                if not items:
                    continue
                by_cls = {}
                for s, g, c in items:
                    by_cls[c] = by_cls.get(c, 0) + 1
                doc.heading(3, f"Right in {md_escape(winner)}, wrong in {md_escape(loser)} ({len(items):,})")
                doc.para(f"What **{md_escape(loser)}** did with them: " + ", ".join(
                    f"{ra.CLASS_LABELS[c]} {k:,}" for c, k in sorted(by_cls.items(), key=lambda x: -x[1])) + ".")
                ex = []
                for s, g, c in ra.sample(items, args.examples * 2, seed=1):
                    ex.append(_disagreement_example(by_name[a], by_name[b], s, g, loser, c))
                doc.examples(ex)

    # 6 breakdowns
    doc.heading(2, f"{next(section)}. Breakdowns")
    doc.para("Entity F1 (%) per bucket; n = gold entities in the bucket. Sentence buckets (length, casing) score "
             "all entities of their sentences; entity buckets (length, seen in training) score gold entities for "
             "recall and predicted entities for precision. An entity is *seen* when the same words with the same "
             "type occur as an entity in the training fold. A sentence is *all caps* when it has at least two "
             "letters and no lower-case one.")
    for key, title in BREAKDOWNS:
        bds = [models[n]["breakdowns"].get(key) for n in names]
        if bds[0] is None:
            if key == "seen_in_train":
                doc.para("Seen/unseen: n/a (no training fold; pass `--data`).")
            continue
        doc.heading(3, title)
        extra = ["Sentences"] if "sentences" in next(iter(bds[0].values())) else []
        rows = []
        for b in bds[0]:
            row = [md_escape(b)] + ([fmt_int(bds[0][b]["sentences"])] if extra else [])
            row.append(fmt_int(bds[0][b]["num_gold"]))
            row += [pct(bd[b]["f1"]) if bd[b]["num_gold"] or bd[b]["num_pred"] else "n/a" for bd in bds]
            rows.append(row)
        doc.table(["Bucket"] + extra + ["n"] + [f"{md_escape(n)} F1" for n in names], rows)
    if "breakdowns" in figures:
        doc.image(figures["breakdowns"], "Entity F1 by sentence length, entity length, seen/unseen and casing")

    # 7 hints
    doc.heading(2, f"{next(section)}. Improvement hints")
    doc.para("Generated from the numbers above; each holds only because the data says so.")
    doc.bullets(an["hints"] or ["No gap or error class stands out."])
    return doc


def _timing_sentence(name: str, t: dict) -> str:
    text = (f"**{md_escape(name)}** {t['sentences']:,} sentences / {t['words']:,} words in {t['seconds']:.2f} s "
            f"on {t['device']} ({t['threads']} threads, batches of ≤{t['max_tokens']} pieces")
    if t.get("passes", 1) > 1:
        text += f", fastest of {t['passes']} passes"
    text += ")"
    if t.get("agreement_with_saved_predictions") is not None:
        text += f", same tags as the saved predictions on {pct(t['agreement_with_saved_predictions'])}% of sentences"
    return text


BREAKDOWNS = (("sentence_length", "By sentence length (words)"), ("entity_length", "By entity length (words)"),
              ("seen_in_train", "Entities seen vs unseen in training"), ("casing", "All-caps vs mixed-case sentences"))


def _example(r: RunData, o: ra.Outcome) -> list[str]:
    pos = o.sentence
    tokens, gs, ps = r.tokens[pos], tags_to_spans(r.gold[pos]), tags_to_spans(r.pred[pos])
    focus = [s for s in (o.gold, o.pred, o.partner) if s]
    win = context_window(len(tokens), focus)
    cap = f"sentence {r.indices[pos]}"
    if o.gold and o.pred:
        cap += (f": {md_escape(o.gold[2])}" if o.gold[2] == o.pred[2]
                else f": gold {md_escape(o.gold[2])} → predicted {md_escape(o.pred[2])}")
    elif o.partner:
        cap += " (leftover " + ("gold" if o.gold else "predicted") + " entity overlapping an already paired one)"
    return [f"*{cap}*", "gold: " + highlight(tokens, gs, focus, win), "pred: " + highlight(tokens, ps, focus, win)]


def _disagreement_example(ra_: RunData, rb: RunData, pos: int, g, loser: str, cls: str) -> list[str]:
    tokens = ra_.tokens[pos]
    win = context_window(len(tokens), [g])
    sa, sb = tags_to_spans(ra_.pred[pos]), tags_to_spans(rb.pred[pos])
    focus = [g] + [s for s in sa + sb if ra.overlap(s, g)]
    return [f"*sentence {ra_.indices[pos]}: {md_escape(loser)}: {ra.CLASS_LABELS[cls]}*",
            "gold: " + highlight(tokens, tags_to_spans(ra_.gold[pos]), focus, win),
            f"{md_escape(ra_.name)}: " + highlight(tokens, sa, focus, win),
            f"{md_escape(rb.name)}: " + highlight(tokens, sb, focus, win)]


# --- figures ----------------------------------------------------------------------------------------

def make_figures(runs: list[RunData], an: dict, fig_dir: str) -> dict[str, str]:
    rf.ensure_dir(fig_dir)
    models = an["models"]
    names = [r.name for r in runs]
    figs = {}
    if an["types"]:
        figs["per_type"] = rf.per_type_figure(os.path.join(fig_dir, "per_type.png"), an["types"],
                                              {n: models[n]["scores"]["per_type"] for n in names})
    figs["learning"] = rf.learning_curves_figure(os.path.join(fig_dir, "learning_curves.png"),
                                                 {r.name: r.train_log for r in runs})
    figs["errors"] = rf.error_classes_figure(os.path.join(fig_dir, "error_classes.png"),
                                             {n: models[n]["errors"] for n in names})
    if an["types"]:
        figs["confusion"] = rf.confusion_figure(os.path.join(fig_dir, "confusion.png"),
                                                {n: models[n]["confusion"] for n in names})
    panels = []
    for key, title in BREAKDOWNS:
        bds = [models[n]["breakdowns"].get(key) for n in names]
        if bds[0] is None:
            continue
        buckets = list(bds[0])
        ticks = [f"{b}\nn={bds[0][b]['num_gold']:,}" for b in buckets]
        series = {n: [bd[b]["f1"] if bd[b]["num_gold"] or bd[b]["num_pred"] else None for b in buckets]
                  for n, bd in zip(names, bds)}
        panels.append((title, buckets, series, ticks))
    figs["breakdowns"] = rf.breakdown_figure(os.path.join(fig_dir, "breakdowns.png"), panels)
    return figs


# --- entry point -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ner-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by ner-train")
    p.add_argument("--data", help="the labelled data (JSON or CoNLL folder): its train fold tells seen from unseen "
                                  "entities, and the fold is tagged by the export when a run has no saved "
                                  "predictions (default: the data path in the run's config.toml, if any)")
    p.add_argument("--fold", default="test", help="fold to report on (default: test)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--names", help="comma-separated display names, one per run (default: folder names)")
    p.add_argument("--device", default="cpu", help="device for tagging with exports: cpu, cuda, cuda:1, auto")
    p.add_argument("--no-speed", action="store_true", help="do not time the exports")
    p.add_argument("--speed-sentences", type=int, default=0,
                   help="time the export on the first N sentences only (default 0: the whole fold)")
    p.add_argument("--max-tokens", type=int, default=4096, help="word pieces per batch when tagging (default 4096)")
    p.add_argument("--examples", type=int, default=3, help="examples per error class and model (default 3)")
    p.add_argument("--no-html-embed", action="store_true", help="link the PNGs from report.html instead of embedding")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def generate(args) -> dict:
    """Build the report in ``args.out``; returns report.json's content."""
    names = args.names.split(",") if args.names else unique_names(args.runs)
    if len(names) != len(args.runs):
        raise ReportError(f"--names has {len(names)} names for {len(args.runs)} runs")
    data_path = args.data
    if data_path is None:
        for r in args.runs:
            data_path = data_from_config(read_toml(os.path.join(r, "config.toml")))
            if data_path:
                log.info("data from %s/config.toml: %s", r, data_path)
                break
    folds = {}
    if data_path:
        wanted = tuple(dict.fromkeys(["train", args.fold]))
        try:
            folds = load_folds(data_path, wanted)
        except DataError:
            folds = load_folds(data_path, (args.fold,))
            log.warning("%s: no train fold; seen/unseen breakdown skipped", data_path)
    data_fold = folds.get(args.fold)
    seen = None
    if "train" in folds:
        seen = ra.training_entities((s.tokens, s.tags) for s in folds["train"])
    runs = []
    for path, name in zip(args.runs, names):
        run = load_run(path, name, args.fold, data_fold, args)
        check_against_data(run, data_fold)
        runs.append(run)
    an = analyse(runs, seen)
    an["data"] = data_path
    an["generated"] = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    an["hints"] = ra.improvement_hints(an["models"])
    for p in an["pairs"]:
        if p["comparable"]:
            h = ra.disagreement_hint(p["a"], p["b"], p["_detail"])
            if h:
                an["hints"].append(h)
    os.makedirs(args.out, exist_ok=True)
    figures = make_figures(runs, an, os.path.join(args.out, "figures"))
    doc = build_document(runs, an, args, figures)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(doc.to_markdown(args.out))
    with open(os.path.join(args.out, "report.html"), "w", encoding="utf-8") as f:
        f.write(doc.to_html(embed_images=not args.no_html_embed, base_dir=args.out))
    report = {
        "format_version": 1,
        "fold": args.fold,
        "data": data_path,
        "generated": an["generated"],
        "models": an["models"],
        "types": an["types"],
        "disagreements": [{k: v for k, v in p.items() if not k.startswith("_")} for p in an["pairs"]],
        "hints": an["hints"],
        "figures": {k: os.path.relpath(v, args.out) for k, v in figures.items()},
        "definitions": {"error_classes": ra.__doc__.split("Error classes\n-------------\n", 1)[-1].strip()},
    }
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, sort_keys=False)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        report = generate(args)
    except (ReportError, DataError) as e:
        print(f"ner-report: error: {e}", file=sys.stderr)
        return 2
    best = max(report["models"].items(), key=lambda kv: kv[1]["scores"]["f1"])
    print(f"wrote {os.path.join(args.out, 'report.md')}, report.html, report.json and "
          f"{len(report['figures'])} figures; best F1 {100 * best[1]['scores']['f1']:.2f} ({best[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
