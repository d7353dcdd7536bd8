"""``ner-report --tagged OUT_A OUT_B --out DIR``: two ``ner-tag`` outputs of the same unlabelled input compared.

Both folders (:mod:`common.tagdir`) are read in part order (their ``entities`` column of character offsets)
and streamed row by row, so the input may be large.  They must be outputs of one input: the same number of
rows and, when both have a ``_run.json``, the same input fingerprint (files, text column, carried columns,
rows per part, chunking); an output whose ``_run.json`` plans parts it does not hold is incomplete and refused.

Numbers (A is the reference):

* span agreement under the four schemes of :func:`common.partial_match.partial_match_span_scores` (summed
  over chunks of rows): *strict* F1 is the exact agreement (same span and label), *partial* credits
  overlapping spans by half; recall is the share of A's entities B agrees with, precision the share of B's
  entities A agrees with;
* entity counts per label, side by side;
* disagreements per row from :func:`common.partial_match.match_spans` -- *label* (same span, other
  label), *boundary* (overlapping spans), *only A*, *only B* -- counted, with a seeded sample of each
  (the entity texts; the surrounding text too when the input files named in ``_run.json`` can be read).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from common.partial_match import OUTCOMES, SCHEMES, match_spans, partial_match_span_scores, scores_from_counts
from common.tagdir import ENTITIES, RUN_FILE, part_files, part_name

from .runs import ReportError, unique_names

log = logging.getLogger(__name__)

KINDS = ("label", "boundary", "only_a", "only_b")
CHUNK_ROWS = 10_000
SEED = 0


@dataclass
class TaggedOutput:
    name: str
    path: str
    parts: list[str]
    num_rows: int
    columns: list[str]
    run_info: dict | None

    @property
    def fingerprint(self) -> str | None:
        return (self.run_info or {}).get("input", {}).get("fingerprint")


def open_output(path: str, name: str) -> TaggedOutput:
    """Check a ner-tag output folder: parts with an ``entities`` column, complete as its ``_run.json`` plans."""
    import pyarrow.parquet as pq

    if not os.path.isdir(path):
        raise ReportError(f"{path}: not a folder (expected a ner-tag output)")
    parts = part_files(path)
    if not parts:
        raise ReportError(f"{path}: no part-*.parquet files (not a ner-tag output?)")
    run_info = None
    run_path = os.path.join(path, RUN_FILE)
    if os.path.exists(run_path):
        try:
            with open(run_path, encoding="utf-8") as f:
                run_info = json.load(f)
        except (OSError, ValueError) as e:
            raise ReportError(f"{run_path}: cannot read: {e}") from None
    try:
        metas = [pq.ParquetFile(p) for p in parts]
    except Exception as e:  # noqa: BLE001 - any unreadable part is named
        raise ReportError(f"{path}: cannot read the parts: {type(e).__name__}: {e}") from None
    columns = list(metas[0].schema_arrow.names)
    if ENTITIES not in columns:
        raise ReportError(f"{parts[0]}: no '{ENTITIES}' column (columns: {columns})")
    planned = (run_info or {}).get("parts") or []
    missing = [p for p in planned if not os.path.exists(os.path.join(path, part_name(p["index"])))]
    if missing:
        raise ReportError(f"{path}: incomplete: {len(missing)} of the {len(planned)} planned parts are missing "
                          f"(first: {part_name(missing[0]['index'])}); finish the ner-tag run first")
    return TaggedOutput(name, path, parts, sum(m.metadata.num_rows for m in metas), columns, run_info)


def check_same_input(a: TaggedOutput, b: TaggedOutput) -> list[str]:
    """Refuse outputs of different inputs; returns notes on what could not be checked."""
    if a.num_rows != b.num_rows:
        raise ReportError(f"{a.path} has {a.num_rows:,} rows and {b.path} has {b.num_rows:,}: they are not "
                          "outputs of the same input")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        ia, ib = a.run_info["input"], b.run_info["input"]
        what = [k for k in ("files", "text_column", "columns", "rows_per_part", "chunking", "chunk_pieces")
                if ia.get(k) != ib.get(k)]
        raise ReportError(f"{a.path} and {b.path} are not outputs of the same input: their _run.json input "
                          f"fingerprints differ ({', '.join(what) or 'input options'} differ)")
    notes = []
    for o in (a, b):
        if not o.fingerprint:
            notes.append(f"{o.path} has no _run.json input fingerprint: the same input is assumed from the equal "
                         "row counts")
    return notes


def iter_rows(o: TaggedOutput, id_column: str | None) -> Iterator[tuple[object, list[tuple[int, int, str, str]]]]:
    """``(id or None, [(start, end, label, text)])`` per row, in part order."""
    import pyarrow.parquet as pq

    cols = [ENTITIES] + ([id_column] if id_column else [])
    for part in o.parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=8192, columns=cols):
            ents = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if id_column else [None] * len(ents)
            for rid, row in zip(ids, ents):
                yield rid, [(e["start"], e["end"], e["label"], e["text"]) for e in (row or [])
                            if e["start"] is not None and e["end"] is not None and e["start"] < e["end"]]


class _Agreement:
    """Accumulates scores, counts and disagreement samples over chunks of aligned rows."""

    def __init__(self, examples: int):
        self.totals = {s: Counter() for s in SCHEMES}
        self.per_type = {s: {} for s in SCHEMES}
        self.counts = {"a": Counter(), "b": Counter()}
        self.kinds = Counter()
        self.rows = self.rows_identical = 0
        self.k = examples
        self.samples = {kind: [] for kind in KINDS}
        self.rng = random.Random(SEED)

    def add_chunk(self, chunk: list[tuple[object, list, list]]) -> None:
        spans_a = [[s[:3] for s in a] for _, a, _ in chunk]
        spans_b = [[s[:3] for s in b] for _, _, b in chunk]
        scores = partial_match_span_scores(spans_a, spans_b)
        for s in SCHEMES:
            self.totals[s].update({k: scores[s][k] for k in OUTCOMES})
            for t, v in scores[s]["per_type"].items():
                self.per_type[s].setdefault(t, Counter()).update({k: v[k] for k in OUTCOMES})
        for (rid, a, b), sa, sb in zip(chunk, spans_a, spans_b):
            self.counts["a"].update(s[2] for s in sa)
            self.counts["b"].update(s[2] for s in sb)
            if sorted(sa) == sorted(sb):
                self.rows_identical += 1
            else:
                self._disagreements(self.rows, rid, a, b)
            self.rows += 1

    def _disagreements(self, row: int, rid, a: list, b: list) -> None:
        pairs, only_a, only_b = match_spans([s[:3] for s in a], [s[:3] for s in b])
        items = []
        for gi, pi in pairs:
            if a[gi][:2] == b[pi][:2]:
                if a[gi][2] != b[pi][2]:
                    items.append(("label", a[gi], b[pi]))
            else:
                items.append(("boundary", a[gi], b[pi]))
        items += [("only_a", a[i], None) for i in only_a] + [("only_b", None, b[i]) for i in only_b]
        for kind, ea, eb in items:
            self.kinds[kind] += 1
            n, bucket = self.kinds[kind], self.samples[kind]
            rid = rid if rid is None or isinstance(rid, (str, int, float)) else str(rid)   # JSON-safe
            item = {"row": row, "id": rid, "a": _entity(ea), "b": _entity(eb)}
            if len(bucket) < self.k:               # reservoir sampling: every disagreement equally likely
                bucket.append(item)
            else:
                j = self.rng.randrange(n)
                if j < self.k:
                    bucket[j] = item

    def result(self, name_a: str, name_b: str) -> dict:
        agreement = {s: {**scores_from_counts(self.totals[s]),
                         "per_type": {t: scores_from_counts(c) for t, c in sorted(self.per_type[s].items())}} for s in SCHEMES}
        types = sorted(set(self.counts["a"]) | set(self.counts["b"]))
        return {
            "rows": self.rows, "rows_identical": self.rows_identical, "agreement": agreement,
            "entity_counts": {t: {name_a: self.counts["a"][t], name_b: self.counts["b"][t]} for t in types},
            "entities": {name_a: sum(self.counts["a"].values()), name_b: sum(self.counts["b"].values())},
            "disagreements": {k: self.kinds[k] for k in KINDS},
            "examples": {k: sorted(self.samples[k], key=lambda x: x["row"]) for k in KINDS},
        }


def _entity(e) -> dict | None:
    return None if e is None else {"start": e[0], "end": e[1], "label": e[2], "text": e[3]}


def compare(a: TaggedOutput, b: TaggedOutput, examples: int = 3) -> dict:
    """Stream both outputs row by row and compare them (see the module docstring)."""
    others = [c for c in a.columns if c != ENTITIES]
    id_a = "id" if "id" in others else (others[0] if others else None)
    acc = _Agreement(examples)
    chunk = []
    rows_b = iter_rows(b, None)
    for rid, ents_a in iter_rows(a, id_a):
        _, ents_b = next(rows_b)
        chunk.append((rid, ents_a, ents_b))
        if len(chunk) >= CHUNK_ROWS:
            acc.add_chunk(chunk)
            chunk = []
    if chunk:
        acc.add_chunk(chunk)
    out = acc.result(a.name, b.name)
    out["id_column"] = id_a
    return out


def input_texts(info: dict | None, rows: set[int]) -> dict[int, str]:
    """The input text of some rows, read from the input files named in ``_run.json`` ({} when unreadable)."""
    import pyarrow.parquet as pq

    inp = (info or {}).get("input", {})
    files, column = inp.get("files") or [], inp.get("text_column")
    out: dict[int, str] = {}
    first = 0
    try:
        for f in files:
            wanted = sorted(r for r in rows if first <= r < first + f["rows"])
            if wanted:
                col = pq.read_table(f["path"], columns=[column]).column(0)
                out.update({r: col[r - first].as_py() for r in wanted})
            first += f["rows"]
    except Exception as e:  # noqa: BLE001 - the context is optional
        log.warning("input texts not read (%s: %s); examples show the entity texts only", type(e).__name__, e)
        return {}
    return {r: t for r, t in out.items() if isinstance(t, str)}


def context_window(text: str, entities: list[dict], margin: int = 80) -> dict | None:
    """``{"start", "text", "cut_end"}``: the text around the entities, from offset ``start``, ``cut_end`` when
    the text goes on after it (None when the entities' offsets do not fit the text)."""
    lo, hi = min(e["start"] for e in entities), max(e["end"] for e in entities)
    if hi > len(text) or any(text[e["start"]:e["end"]] != e["text"] for e in entities if e.get("text")):
        return None
    lo, hi = max(0, lo - margin), min(len(text), hi + margin)
    return {"start": lo, "text": text[lo:hi], "cut_end": hi < len(text)}


def generate_tagged(args) -> dict:
    """Compare ``args.tagged`` (two ner-tag outputs) into ``args.out``; returns report.json's content."""
    import datetime as _dt

    from common.io import atomic_write, write_json

    from .sections_tagged import build_tagged_document

    paths = list(args.tagged)
    names = args.names.split(",") if args.names else unique_names(paths)
    if len(names) != 2 or names[0] == names[1]:
        raise ReportError(f"--names needs two different names for --tagged, got {names}")
    a, b = (open_output(p, n) for p, n in zip(paths, names))
    notes = check_same_input(a, b)
    res = compare(a, b, max(1, args.examples))
    rows = {x["row"] for kind in KINDS for x in res["examples"][kind]}
    texts = input_texts(a.run_info, rows)
    for kind in KINDS:
        for x in res["examples"][kind]:
            if x["row"] in texts:
                x["context"] = context_window(texts[x["row"]], [e for e in (x["a"], x["b"]) if e])
    report = {
        "format_version": 1, "kind": "tagged_comparison",
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "reference": a.name,
        "outputs": {o.name: {"path": os.path.abspath(o.path), "rows": o.num_rows, "parts": len(o.parts),
                             "model": (o.run_info or {}).get("model", {}).get("path"),
                             "model_type": (o.run_info or {}).get("model", {}).get("model_type"),
                             "input_fingerprint": o.fingerprint} for o in (a, b)},
        "notes": notes, "examples_per_kind": max(1, args.examples), **res,
    }
    os.makedirs(args.out, exist_ok=True)
    doc = build_tagged_document(report)
    with atomic_write(os.path.join(args.out, "report.md")) as f:
        f.write(doc.to_markdown(args.out))
    with atomic_write(os.path.join(args.out, "report.html")) as f:
        f.write(doc.to_html(embed_images=False, base_dir=args.out))
    write_json(os.path.join(args.out, "report.json"), report, indent=1)
    return report
