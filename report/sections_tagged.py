"""The document of ``ner-report --tagged``: two ner-tag outputs of one input compared (numbers from
:mod:`report.tagged`)."""

from __future__ import annotations

from common.partial_match import SCHEMES

from .fmt import fmt_int, pct
from .render import Document, md_escape

AGREEMENT_NOTES = {"strict": "two entities agree with the same span and label",
                   "exact": "with the same span, whatever the label",
                   "partial": "with the same span, and by half when their spans only overlap, whatever the label",
                   "type": "when their spans overlap and they have the same label"}

def kind_label(kind: str, ea: str, eb: str) -> str:
    return {"label": "same span, other label", "boundary": "overlapping spans, other boundaries",
            "only_a": f"only in {ea}", "only_b": f"only in {eb}"}[kind]


def _mark(e: dict) -> str:
    return f"**[{md_escape(e['text'] or '')}]{{{md_escape(e['label'])}}}**"


def _line(e: dict | None, ctx: dict | None) -> str:
    """An entity in its context (when known): the text around it with the entity marked."""
    if e is None:
        return "(no entity)"
    if not ctx:
        return _mark(e)
    lo, text = ctx["start"], ctx["text"]
    a, b = e["start"] - lo, e["end"] - lo
    pre = "…" if lo > 0 else ""
    post = "…" if ctx.get("cut_end") else ""
    return (pre + md_escape(text[:a]) + _mark({**e, "text": text[a:b]}) + md_escape(text[b:]) + post).replace("\n", " ")


def _ratio(a: int, b: int) -> str:
    return f"{b / a:.2f}" if a else "n/a"


def build_tagged_document(rep: dict) -> Document:
    """The whole document: the two outputs, then span agreement, entities per label and disagreements."""
    (na, _), (nb, _) = rep["outputs"].items()
    doc = Document(f"NER tagging comparison: {na} vs {nb}")
    _outputs_section(doc, rep, na)
    _agreement_section(doc, rep, na, nb)
    _counts_section(doc, rep, na, nb)
    _disagreements_section(doc, rep, na, nb)
    return doc


def _outputs_section(doc: Document, rep: dict, na: str) -> None:
    """The opening paragraph, the table of the two outputs and the comparison's notes."""
    ea = md_escape(na)
    doc.para(f"Generated {rep['generated']} by `ner-report --tagged`. Two `ner-tag` outputs of the same input "
             f"({rep['rows']:,} rows) compared row by row; **{ea}** (A) is the reference.")
    doc.table(["Output", "Folder", "Model", "Model type", "Rows", "Parts", "Entities"],
              [[f"**{md_escape(n)}** ({k})", f"`{o['path']}`", f"`{o['model']}`" if o["model"] else "n/a",
                md_escape(str(o["model_type"] or "n/a")), fmt_int(o["rows"]), fmt_int(o["parts"]),
                fmt_int(rep["entities"][n])] for k, (n, o) in zip("AB", rep["outputs"].items())], "llllrrr")
    for note in rep["notes"]:
        doc.para(f"Note: {md_escape(note)}.")


def _agreement_section(doc: Document, rep: dict, na: str, nb: str) -> None:
    """Section 1: agreement per scheme, then per label."""
    ea, eb = md_escape(na), md_escape(nb)
    doc.heading(2, "1. Span agreement")
    ag = rep["agreement"]
    doc.para(f"Entities of a row are paired one to one (same span first, then the largest overlap; character "
             f"offsets) and scored with A as the reference: recall is the share of **{ea}**'s entities that "
             f"**{eb}** agrees with, precision the share of **{eb}**'s entities that **{ea}** agrees with. "
             + "; ".join(f"*{s}*: {AGREEMENT_NOTES[s]}" for s in SCHEMES) + ". "
             f"Exact agreement (strict F1): **{pct(ag['strict']['f1'])}**%; rows with identical entities: "
             f"{rep['rows_identical']:,} of {rep['rows']:,} "
             f"({pct(rep['rows_identical'] / rep['rows'] if rep['rows'] else None)}%).")
    doc.table(["Scheme", "P", "R", "F1", "agree", "differ", "partial", f"only {ea}", f"only {eb}"],
              [[s, pct(ag[s]["precision"]), pct(ag[s]["recall"]), f"**{pct(ag[s]['f1'])}**"]
               + [fmt_int(ag[s][k]) for k in ("correct", "incorrect", "partial", "missed", "spurious")]
               for s in SCHEMES], "l" + "r" * 8)
    doc.heading(3, "Per label")
    doc.para("Under A's label for paired entities (B's for entities only in B), so a label B gives differently "
             "lowers the precision of A's label.")
    types = list(ag["strict"]["per_type"])
    doc.table(["Label", f"{ea} entities", "strict P", "strict R", "strict F1", "partial P", "partial R", "partial F1"],
              [[md_escape(t), fmt_int(rep["entity_counts"].get(t, {}).get(na, 0))]
               + [pct(ag[s]["per_type"][t][k]) for s in ("strict", "partial") for k in ("precision", "recall", "f1")]
               for t in types])


def _counts_section(doc: Document, rep: dict, na: str, nb: str) -> None:
    """Section 2: each output's entities per label and in all."""
    ea, eb = md_escape(na), md_escape(nb)
    doc.heading(2, "2. Entities per label")
    rows = []
    for t, c in rep["entity_counts"].items():
        rows.append([md_escape(t), fmt_int(c[na]), fmt_int(c[nb]), f"{c[nb] - c[na]:+,}", _ratio(c[na], c[nb])])
    ta, tb = rep["entities"][na], rep["entities"][nb]
    rows.append(["**all**", f"**{ta:,}**", f"**{tb:,}**", f"{tb - ta:+,}", _ratio(ta, tb)])
    doc.table(["Label", ea, eb, f"{eb} − {ea}", f"{eb} / {ea}"], rows)


def _disagreements_section(doc: Document, rep: dict, na: str, nb: str) -> None:
    """Section 3: the disagreements by kind, and examples of each in context."""
    ea, eb = md_escape(na), md_escape(nb)
    doc.heading(2, "3. Disagreements")
    dis = rep["disagreements"]
    doc.para("Every entity of either output that is not matched by the same span with the same label in the other, "
             "by kind (a pair of overlapping entities counts once).")
    doc.table(["Kind", "Count"], [[kind_label(k, ea, eb), fmt_int(v)] for k, v in dis.items()])
    any_context = any("context" in x for xs in rep["examples"].values() for x in xs)
    doc.para(f"Up to {rep['examples_per_kind']} examples per kind, drawn at "
             "random (seeded) from all the disagreements"
             + ("; the surrounding text comes from the input files named in `_run.json`." if any_context else
                "; the input files of `_run.json` could not be read, so only the entity texts are shown."))
    for kind, items in rep["examples"].items():
        if not items:
            continue
        label = kind_label(kind, ea, eb)
        doc.heading(3, f"{label[0].upper()}{label[1:]} ({dis[kind]:,})")
        ex = []
        for x in items:
            cap = f"*row {x['row']:,}" + (f" ({md_escape(rep['id_column'])} {md_escape(str(x['id'])[:60])})"
                                          if x.get("id") is not None else "") + "*"
            ctx = x.get("context")
            ex.append([cap, f"{ea}: " + _line(x["a"], ctx), f"{eb}: " + _line(x["b"], ctx)])
        doc.examples(ex)
