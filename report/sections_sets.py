"""Report sections for several evaluation sets: the cross-set table and the section of each set after the first."""

from __future__ import annotations

from dataclasses import replace

from .fmt import Context, fmt_interval, pct
from .render import Document, md_escape
from .sections import _headline, _per_type
from .sections_stats import partial_match
from .sets import SetResult

SOURCE = {"predictions": "saved predictions", "export": "tagged by the export"}


def _names(results: list[SetResult]) -> list[str]:
    """Every run name, in report order (a run may be missing from some sets)."""
    names: list[str] = []
    for r in results:
        for run in r.runs:
            if run.name not in names:
                names.append(run.name)
        for n in r.not_scored:
            if n not in names:
                names.append(n)
    return names


def cross_set_scores(results: list[SetResult]) -> dict:
    """report.json's ``cross_set``: ``{model: {set: {"precision", "recall", "f1", "low", "high", "source"}
    or None}}`` (``low``/``high`` None without bootstrap)."""
    out = {}
    for n in _names(results):
        out[n] = {}
        for r in results:
            m = r.an["models"].get(n) if r.an else None
            if m is None:
                out[n][r.name] = None
                continue
            iv = m.get("f1_interval") or {}
            out[n][r.name] = {"precision": m["scores"]["precision"], "recall": m["scores"]["recall"],
                              "f1": m["scores"]["f1"], "low": iv.get("low"), "high": iv.get("high"),
                              "source": m["source"]}
    return out


def left_out_sentence(r: SetResult) -> str | None:
    """Where the models' types differ from the set's, and what the scoring rule made of it (None: they agree)."""
    if r.scored_types is None:
        return None
    scored = ", ".join(md_escape(t) for t in r.scored_types) or "none"
    parts = [f"{md_escape(t)} is not in the labels of {', '.join(f'**{md_escape(n)}**' for n in ns)} (counted as "
             "missed)" for t, ns in r.left_out.get("not_in_models", {}).items()]
    parts += [f"{md_escape(t)} is predicted by {', '.join(f'**{md_escape(n)}**' for n in ns)} but not annotated "
              "in the set (counted as false positives)" for t, ns in r.left_out.get("not_in_set", {}).items()]
    return f"Scored on every type the set annotates ({scored}), for every model; {'; '.join(parts)}."


def _set_line(r: SetResult) -> str:
    s = r.set
    head = f"**{md_escape(r.name)}** (`{s.path}`"
    if r.an:
        m = next(iter(r.an["models"].values()))
        head += f"; {m['sentences']:,} sentences, {m['errors']['num_gold']:,} gold entities"
    head += "): "
    srcs = [f"**{md_escape(run.name)}** {SOURCE[run.source]}" for run in r.runs]
    srcs += [f"**{md_escape(n)}** not scored ({md_escape(why)})" for n, why in r.not_scored.items()]
    out = head + ", ".join(srcs) + "."
    lo = left_out_sentence(r)
    return out + (" " + lo if lo else "")


def cross_set(doc: Document, number, ctx: Context, results: list[SetResult]) -> None:
    """Rows: models; columns: sets; cells: entity F1 and its bootstrap interval."""
    doc.heading(2, f"{number}. Scores across evaluation sets")
    ci = ctx.resamples > 0
    table = cross_set_scores(results)
    rows = []
    for n, by_set in table.items():
        row = [f"**{md_escape(n)}**"]
        for r in results:
            v = by_set[r.name]
            if v is None:
                row.append("n/a")
            else:
                cell = f"**{pct(v['f1'])}**"
                if ci and v["low"] is not None:
                    cell += " " + fmt_interval(v)
                row.append(cell)
        rows.append(row)
    doc.table(["Model"] + [f"{md_escape(r.name)} F1" + (" [95% CI]" if ci else "") for r in results], rows)
    doc.para("Entity F1 (%, seqeval default mode) on the scored fold of each set"
             + (f", with its 95% bootstrap interval ({ctx.resamples:,} resamples of the set's sentences)" if ci
                else "")
             + ". A model's saved predictions count for the set it was trained on; on the other sets its export "
               "tagged the fold. The first set is analysed in full below; every other set has a section of its "
               "own with its headline, per-type and partial-match scores.")
    doc.bullets([_set_line(r) for r in results])


def set_section(doc: Document, number, ctx: Context, result: SetResult) -> None:
    """A set after the first: headline (with the model differences), per-type and partial-match scores."""
    doc.heading(2, f"{number}. Set **{md_escape(result.name)}**")
    doc.para(_set_line(result))
    if result.an is None:
        doc.para("No model could be scored on this set.")
        return
    sub = replace(ctx, an=result.an, runs={r.name: r for r in result.runs}, figures={}, set_name=result.name,
                  level=3)
    for name in sub.names:
        for note in result.an["models"][name]["notes"]:
            doc.para(f"Note on **{md_escape(name)}**: {md_escape(note)}.")
    for k, write in enumerate((_headline, _per_type, partial_match), 1):
        write(doc, f"{number}.{k}", sub)
