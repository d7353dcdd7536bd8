"""Report sections on the statistics of :mod:`report.stats`: partial-match scores (SemEval-2013) and the
bootstrap differences between models."""

from __future__ import annotations

from common.partial_match import SCHEMES

from .fmt import Context, fmt_int, fmt_p, fmt_points, pct
from .render import Document, md_escape

SCHEME_NOTES = {
    "strict": "a prediction is correct only with the gold entity's boundaries and type",
    "exact": "correct with the gold entity's boundaries, whatever its type",
    "partial": "correct with the gold boundaries and half-correct when it only overlaps the gold entity, "
               "whatever its type",
    "type": "correct when it overlaps the gold entity and has its type, whatever the boundaries",
}
PER_TYPE_SCHEMES = ("strict", "partial")


def bootstrap_note(resamples: int, args) -> str:
    seed = getattr(args, "bootstrap_seed", 0)
    return (f"F1 95% CI: percentile interval of F1 over {resamples:,} bootstrap resamples of the fold's sentences "
            f"(drawn with replacement, seed {seed}); every model is scored on the same resamples.")


def difference_sentence(d: dict, resamples: int) -> str:
    """One sentence on the F1 difference of a pair: its interval, p-value and whether it is more than noise."""
    a, b = md_escape(d["a"]), md_escape(d["b"])
    head = (f"F1 of **{a}** minus **{b}**: {fmt_points(d['diff'])} points (95% CI [{fmt_points(d['low'])}, "
            f"{fmt_points(d['high'])}], p {'= ' if d['p_value'] else ''}{fmt_p(d['p_value'], resamples)})")
    if d["more_than_noise"]:
        better = a if d["diff"] > 0 else b
        return (head + f": the interval excludes 0, so **{better}** is better by more than the noise of "
                "resampling the sentences.")
    return (head + ": the interval includes 0, so the difference is within the noise of resampling the "
            "sentences.")


def f1_differences(doc: Document, ctx: Context) -> None:
    """The paired-bootstrap F1 difference of each pair of models (a subsection of the headline)."""
    diffs = ctx.an.get("f1_differences") or []
    not_paired = [p for p in ctx.an["pairs"] if not p["comparable"]]
    if not diffs and not not_paired:
        return
    doc.heading(ctx.level + 1, "Is the difference more than noise?")
    if diffs:
        rows = [[f"**{md_escape(d['a'])}** − **{md_escape(d['b'])}**", fmt_points(d["diff"]),
                 f"[{fmt_points(d['low'])}, {fmt_points(d['high'])}]", fmt_p(d["p_value"], ctx.resamples),
                 "yes" if d["more_than_noise"] else "no"] for d in diffs]
        doc.table(["Pair", "F1 difference (points)", "95% CI", "p", "More than noise"], rows, "lrrrl")
        if not ctx.nested:
            doc.para("Paired bootstrap: both models are scored on the same resampled sentences; p is two-sided "
                     "(twice the share of resamples whose difference has the other sign). A difference is more "
                     "than noise when its interval excludes 0.")
        doc.bullets([difference_sentence(d, ctx.resamples) for d in diffs])
    for p in not_paired:
        doc.para(f"**{md_escape(p['a'])}** and **{md_escape(p['b'])}** were not scored on the same sentences; "
                 "no paired difference.")


def partial_match(doc: Document, number, ctx: Context) -> None:
    """P/R/F1 of the four SemEval-2013 schemes per model, and per type for strict and partial."""
    models, names = ctx.models, ctx.names
    doc.heading(ctx.level, ctx.title(number, "Partial-match scores (SemEval-2013)"))
    if not ctx.nested:
        doc.para("Gold and predicted entities are paired one to one (same boundaries first, then the largest "
                 "overlap) and scored under the four schemes of SemEval-2013 task 9.1: "
                 + "; ".join(f"*{s}*: {SCHEME_NOTES[s]}" for s in SCHEMES)
                 + ". Precision = (COR + ½ PAR) / (predicted entities), recall = (COR + ½ PAR) / (gold entities); "
                 "COR correct, INC incorrect, PAR partial (only under *partial*), MIS missed, SPU spurious. "
                 "Strict F1 equals the headline entity F1.")
    rows = []
    for n in names:
        pm = models[n]["partial_match"]
        for k, s in enumerate(SCHEMES):
            v = pm[s]
            rows.append([f"**{md_escape(n)}**" if k == 0 else "", s, pct(v["precision"]), pct(v["recall"]),
                         f"**{pct(v['f1'])}**"] + [fmt_int(v[c]) for c in
                                                   ("correct", "incorrect", "partial", "missed", "spurious")])
    doc.table(["Model", "Scheme", "P", "R", "F1", "COR", "INC", "PAR", "MIS", "SPU"], rows, "ll" + "r" * 8)
    doc.heading(ctx.level + 1, "Per type (strict and partial)")
    if ctx.nested:
        doc.para("Per-type precision counts a wrong-type prediction under the gold type, as in the first set.")
    else:
        doc.para("Per type, a paired prediction and a missed gold entity count under the gold type, a spurious "
                 "prediction under its own type: a prediction of the wrong type lowers the *gold* type's "
                 "precision, not the predicted type's, so per-type strict precision differs from seqeval's "
                 "(recall agrees). Gold = gold entities of the type. The other schemes per type are in "
                 "`report.json` (`models.NAME.partial_match`, and `sets.SET.models.NAME.partial_match`).")
    for n in names:
        pm = models[n]["partial_match"]
        types = list(pm["strict"]["per_type"])
        rows = []
        for t in types:
            row = [md_escape(t), fmt_int(pm["strict"]["per_type"][t]["possible"])]
            for s in PER_TYPE_SCHEMES:
                v = pm[s]["per_type"][t]
                row += [pct(v["precision"]), pct(v["recall"]), pct(v["f1"])]
            rows.append(row)
        if len(names) > 1:
            doc.para(f"**{md_escape(n)}**")
        doc.table(["Type", "Gold"] + [f"{s} {k}" for s in PER_TYPE_SCHEMES for k in ("P", "R", "F1")], rows)


def partial_match_definition() -> str:
    """report.json's ``definitions.partial_match``."""
    return ("Four SemEval-2013 task 9.1 schemes over a one-to-one pairing of gold and predicted entities (same "
            "boundaries first, then largest overlap): " + "; ".join(f"{s}: {SCHEME_NOTES[s]}" for s in SCHEMES)
            + ". precision = (correct + 0.5 partial) / actual, recall = (correct + 0.5 partial) / possible. "
            "Per type, pairs and missed entities count under the gold type and spurious ones under the "
            "predicted type, so a wrong-type prediction lowers the gold type's precision (per-type strict "
            "precision differs from seqeval's).")


def precision_check(doc: Document, number, ctx: Context) -> None:
    """fp32 against bf16 for each export (``--precision-check``)."""
    checks = ctx.an.get("precision_check") or {}
    if not checks:
        return
    doc.heading(ctx.level, ctx.title(number, "Precision check (fp32 against bf16)"))
    rows = [[f"**{md_escape(n)}**", pct(c["fp32_f1"]), pct(c["bf16_f1"]),
             fmt_points(c["bf16_f1"] - c["fp32_f1"]), pct(c["identical_spans"]),
             pct(c["identical_sentences"])] for n, c in checks.items()]
    doc.table(["Model", "fp32 F1", "bf16 F1", "bf16 − fp32 (points)", "identical spans", "identical sentences"], rows)
    doc.para("Each export tagged the fold twice, with fp32 weights and with bf16 weights (as `ner-tag --precision "
             "bf16` runs it). Identical spans: entity spans (boundaries and type) that both taggings predict, "
             "among those either predicts (%). Before a large tagging run, this says whether bf16 changes "
             "anything.")
