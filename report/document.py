"""The evaluation report as a :class:`report.render.Document`: an introduction, then the numbered sections
(:mod:`report.sections`, :mod:`report.sections_stats`, :mod:`report.sections_sets`)."""

from __future__ import annotations

from functools import partial

from .fmt import Context
from .render import Document, md_escape
from .sections import _breakdowns, _disagreements, _entity_errors, _headline, _hints, _learning_curves, _per_type
from .sections_sets import cross_set, left_out_sentence, set_section
from .sections_stats import partial_match, precision_check
from .sets import SCORING_RULE, SetResult


def build_document(results: list[SetResult], args, figures: dict[str, str]) -> Document:
    """One set: the sections of that set. Several: the cross-set table, the first set in full, then a section
    per other set (headline, per type, partial match), and the improvement hints (first set)."""
    first = results[0]
    multi = len(results) > 1
    ctx = Context(first.an, {r.name: r for r in first.runs}, args, figures, set_name=first.name if multi else None)
    folds = sorted({r.set.fold for r in results})
    doc = Document(f"NER evaluation report: fold `{folds[0]}`" if len(folds) == 1 else
                   f"NER evaluation report: folds {', '.join(f'`{f}`' for f in folds)}")
    _introduction(doc, ctx, results)
    sections = [partial(cross_set, results=results)] if multi else []
    sections += [_headline, _per_type, partial_match, precision_check, _learning_curves, _entity_errors]
    if len(first.runs) > 1:
        sections.append(_disagreements)
    sections.append(_breakdowns)
    sections += [partial(set_section, result=r) for r in results[1:]]
    sections.append(_hints)
    for number, write in enumerate(sections, 1):
        write(doc, number, ctx)
    return doc


def _introduction(doc: Document, ctx: Context, results: list[SetResult]) -> None:
    models, names = ctx.models, ctx.names
    if len(results) == 1:
        source = {"predictions": "saved predictions", "export": "tagged by the export"}
        doc.para(f"Generated {ctx.an['generated']} by `ner-report`. Models: "
                 + ", ".join(f"**{md_escape(n)}** (`{ctx.runs[n].path}`, {models[n]['model_type'] or 'unknown type'}, "
                             f"{source[models[n]['source']]})" for n in names)
                 + f". Data: `{ctx.an['data'] or 'not given'}`; {models[names[0]]['sentences']:,} sentences, "
                 f"{models[names[0]]['words']:,} words, {models[names[0]]['errors']['num_gold']:,} gold entities.")
    else:
        runs = {}
        for r in results:
            for run in r.runs:
                runs.setdefault(run.name, (run, r.an["models"][run.name]))
        doc.para(f"Generated {ctx.an['generated']} by `ner-report`. Models: "
                 + ", ".join(f"**{md_escape(n)}** (`{run.path}`, {m['model_type'] or 'unknown type'})"
                             for n, (run, m) in runs.items())
                 + ". Evaluation sets: "
                 + ", ".join(f"**{md_escape(r.name)}** (fold `{r.set.fold}` of `{r.set.path}`)" for r in results)
                 + f". The first set, **{md_escape(results[0].name)}**, is analysed in full in the sections "
                   "that name it; every other set has one section of its own.")
    rule = SCORING_RULE
    if len(results) == 1 and left_out_sentence(results[0]):
        rule += " " + left_out_sentence(results[0])
    doc.para(rule)
    for n in names:
        for note in models[n]["notes"]:
            doc.para(f"Note on **{md_escape(n)}**: {md_escape(note)}.")
