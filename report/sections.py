"""The sections of ``ner-report``'s document: headline, per-type scores, learning curves, entity errors,
disagreements, breakdowns and hints, each a writer ``(doc, number, ctx)`` adding to a
:class:`report.render.Document` (assembled by :mod:`report.document`).
"""

from __future__ import annotations

from common.spans import tags_to_spans

from .analysis import BREAKDOWNS, sample
from .errors import CLASS_LABELS, CLASSES, ERROR_CLASSES, Outcome, overlap
from .fmt import Context, fmt_duration, fmt_int, fmt_interval, fmt_params, fmt_rate, pct
from .render import Document, context_window, highlight, md_escape
from .runs import RunData
from .sections_stats import bootstrap_note, f1_differences

def _headline(doc: Document, number, ctx: Context) -> None:
    """Scores (with bootstrap intervals), costs and tagging speed per model; the differences between models."""
    models, names = ctx.models, ctx.names
    doc.heading(ctx.level, ctx.title(number, "Headline"))
    ci = ctx.resamples > 0
    rows = []
    for n in names:
        m = models[n]
        s, st, tg = m["scores"], m["scores"]["strict"], m["tagging"]
        rows.append([f"**{md_escape(n)}**", md_escape(str(m["model_type"] or "n/a")), pct(s["precision"]),
                     pct(s["recall"]), f"**{pct(s['f1'])}**"] + ([fmt_interval(m.get("f1_interval"))] if ci else [])
                    + [pct(st["precision"]), pct(st["recall"]), pct(st["f1"]),
                       pct(s["token_accuracy"]), fmt_params(m["num_parameters"]), fmt_duration(m["train_wall_s"]),
                       fmt_rate(m["train_tokens_per_s"]), fmt_rate(tg["words_per_s"]) if tg else "n/a"])
    headers = (["Model", "Type", "P", "R", "F1"] + (["F1 95% CI"] if ci else [])
               + ["strict P", "strict R", "strict F1", "Word acc.", "Params", "Train time", "Train tokens/s",
                  "Tag words/s"])
    doc.table(headers, rows, "ll" + "r" * (len(headers) - 2))
    if ctx.nested:
        doc.para("Columns as in the first set's headline.")
    else:
        doc.para("Entity precision/recall/F1 (%) are micro-averaged seqeval scores: the default mode reads tags as "
                 "conlleval does, *strict* is seqeval's strict IOB2 mode. Word accuracy is the share of words whose "
                 "predicted tag equals the gold tag. Parameters, training time and training tokens/s come from the "
                 "run's `metrics.json`." + (" " + bootstrap_note(ctx.resamples, ctx.args) if ci else ""))
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
        f1_differences(doc, ctx)


def _per_type(doc: Document, number, ctx: Context) -> None:
    """Precision, recall and F1 per entity type (F1 with its bootstrap interval)."""
    models, names = ctx.models, ctx.names
    doc.heading(ctx.level, ctx.title(number, "Scores per entity type"))
    types = ctx.an["types"]
    ci = ctx.resamples > 0
    headers = ["Type", "Gold"]
    for n in names:
        headers += [f"{md_escape(n)} P", f"{md_escape(n)} R", f"{md_escape(n)} F1"]
        if ci:
            headers.append(f"{md_escape(n)} F1 95% CI")
    rows = []
    for t in types:
        support = models[names[0]]["scores"]["per_type"].get(t, {}).get("support", 0)
        row = [md_escape(t), fmt_int(support)]
        for n in names:
            v = models[n]["scores"]["per_type"].get(t)
            row += [pct(v["precision"]), pct(v["recall"]), f"**{pct(v['f1'])}**"] if v else ["n/a"] * 3
            if ci:
                iv = (models[n].get("f1_interval") or {}).get("per_type", {}).get(t)
                row.append(fmt_interval(iv))
        rows.append(row)
    doc.table(headers, rows)
    if ci and not ctx.nested:
        doc.para("F1 95% CI: the per-type F1 of the same bootstrap resamples as the headline interval.")
    if "per_type" in ctx.figures:
        doc.image(ctx.figures["per_type"], "Per-type precision, recall and F1")


def _learning_curves(doc: Document, number: int, ctx: Context) -> None:
    """Loss and validation F1 over training."""
    models, names = ctx.models, ctx.names
    doc.heading(2, f"{number}. Learning curves")  # the same for every set
    if "learning" in ctx.figures:
        doc.image(ctx.figures["learning"], "Training loss and validation F1 against step and wall time")
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


def _entity_errors(doc: Document, number: int, ctx: Context) -> None:
    """Error classes (see :mod:`report.errors`), per type, type confusion and examples."""
    models, names = ctx.models, ctx.names
    doc.heading(2, ctx.title(number, "Entity-level errors"))
    doc.para("Each gold and each predicted entity (spans read as conlleval does) lands in exactly one class: "
             "*correct* (same boundaries and type), *wrong type* (same boundaries, other type), *wrong boundary* "
             "(overlapping, same type, other boundaries), *wrong type and boundary* (overlapping, other type and "
             "boundaries), *missed* (gold overlapping no prediction), *spurious* (prediction overlapping no gold). "
             "Overlapping gold and predicted entities are paired one to one (most shared words first, then same "
             "type, then left to right); an entity left over that still overlaps the other side (e.g. a gold entity "
             "predicted as two pieces) counts as its own boundary error. A paired error counts once, so "
             "*errors* below count outcomes, not entities.")
    rows = []
    for c in CLASSES:
        rows.append([CLASS_LABELS[c]] + [fmt_int(models[n]["errors"]["outcomes"][c]) for n in names])
    rows.append(["**errors (all but correct)**"] + [f"**{fmt_int(models[n]['errors']['errors'])}**" for n in names])
    rows.append(["gold entities"] + [fmt_int(models[n]["errors"]["num_gold"]) for n in names])
    rows.append(["predicted entities"] + [fmt_int(models[n]["errors"]["num_pred"]) for n in names])
    doc.table(["Class"] + [f"**{md_escape(n)}**" for n in names], rows)
    if "errors" in ctx.figures:
        doc.image(ctx.figures["errors"], "Entity errors by class")
    doc.heading(3, "Errors per type")
    doc.para("Counted under the gold entity's type (the predicted type for spurious predictions and for "
             "leftover predicted fragments).")
    for n in names:
        pt = models[n]["errors"]["per_type"]
        rows = [[md_escape(t)] + [fmt_int(pt[t][c]) for c in CLASSES] for t in pt]
        doc.para(f"**{md_escape(n)}**")
        doc.table(["Type"] + [CLASS_LABELS[c] for c in CLASSES], rows)
    doc.heading(3, "Type confusion")
    doc.para("Rows: every gold entity once, under the type of the prediction it was paired with (or, for a leftover, "
             "the prediction it overlaps most), or *missed*; so the diagonal holds correct entities *and* boundary "
             "errors of the right type. Last row: spurious predictions by predicted type. Exact counts are in "
             "`report.json` (`models.NAME.confusion`).")
    if "confusion" in ctx.figures:
        doc.image(ctx.figures["confusion"], "Entity type confusion matrices")
    doc.heading(3, "Examples of each error class")
    doc.para(f"Up to {ctx.args.examples} examples per class and model, picked evenly over the fold. Bold: the "
             "entity in question; other marks show the rest of the sentence's gold or predicted entities.")
    outcomes = ctx.an["_outcomes"]
    for n in names:
        r = ctx.runs[n]
        doc.heading(4, md_escape(n))
        for c in ERROR_CLASSES:
            items = [o for o in outcomes[n] if o.cls == c]
            if not items:
                continue
            ex = []
            for o in sample(items, ctx.args.examples, seed=CLASSES.index(c)):
                ex.append(_example(r, o))
            doc.para(f"*{CLASS_LABELS[c]}* ({len(items):,})")
            doc.examples(ex)


def _disagreements(doc: Document, number: int, ctx: Context) -> None:
    """Gold entities one model gets right and the other does not (two models or more)."""
    doc.heading(2, ctx.title(number, "Where the models disagree"))
    for p in ctx.an["pairs"]:
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
                f"{CLASS_LABELS[c]} {k:,}" for c, k in sorted(by_cls.items(), key=lambda x: -x[1])) + ".")
            ex = []
            for s, g, c in sample(items, ctx.args.examples * 2, seed=1):
                ex.append(_disagreement_example(ctx.runs[a], ctx.runs[b], s, g, loser, c))
            doc.examples(ex)


def _breakdowns(doc: Document, number: int, ctx: Context) -> None:
    """F1 by sentence length, entity length, seen/unseen in training and casing."""
    models, names = ctx.models, ctx.names
    doc.heading(2, ctx.title(number, "Breakdowns"))
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
    if "breakdowns" in ctx.figures:
        doc.image(ctx.figures["breakdowns"], "Entity F1 by sentence length, entity length, seen/unseen and casing")


def _hints(doc: Document, number: int, ctx: Context) -> None:
    """The improvement hints of :func:`report.hints.improvement_hints`."""
    doc.heading(2, ctx.title(number, "Improvement hints"))
    doc.para("Generated from the numbers above; each holds only because the data says so.")
    doc.bullets(ctx.an["hints"] or ["No gap or error class stands out."])


def _timing_sentence(name: str, t: dict) -> str:
    passes = f", fastest of {t['passes']} passes" if t.get("passes", 1) > 1 else ""
    return (f"**{md_escape(name)}** {t['sentences']:,} sentences / {t['words']:,} words in {t['seconds']:.2f} s "
            f"on {t['device']} ({t['threads']} threads, batches of ≤{t['max_tokens']} pieces{passes})")


def _example(r: RunData, o: Outcome) -> list[str]:
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


def _disagreement_example(run_a: RunData, run_b: RunData, pos: int, g, loser: str, cls: str) -> list[str]:
    tokens = run_a.tokens[pos]
    win = context_window(len(tokens), [g])
    sa, sb = tags_to_spans(run_a.pred[pos]), tags_to_spans(run_b.pred[pos])
    focus = [g] + [s for s in sa + sb if overlap(s, g)]
    return [f"*sentence {run_a.indices[pos]}: {md_escape(loser)}: {CLASS_LABELS[cls]}*",
            "gold: " + highlight(tokens, tags_to_spans(run_a.gold[pos]), focus, win),
            f"{md_escape(run_a.name)}: " + highlight(tokens, sa, focus, win),
            f"{md_escape(run_b.name)}: " + highlight(tokens, sb, focus, win)]
