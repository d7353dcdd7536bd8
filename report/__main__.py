"""``ner-report``: an evaluation report comparing trained NER runs on one fold of one or more data sets.

    ner-report runs/bilstm_conll03 runs/bert_conll03 --data data/conll03.json --fold test --out report/
    ner-report RUN_A RUN_B --data conll=data/conll03.json --data wnut=data/wnut17/ --out report/
    ner-report --tagged tagged_a/ tagged_b/ --out compare/

For each run folder it reads ``RUN/predictions/{fold}.jsonl`` (written by
``ner-train``); when that file is missing it tags the fold with the run's best
export (``RUN/export``, loaded with ``taggers.export.load_tagger``).  When an
export exists it is also timed on the fold (tagging words/s; ``--no-speed``
skips this).  The report folder gets ``report.md``, a self-contained
``report.html`` (figures embedded), ``figures/*.png`` and ``report.json``
with every number shown.

Sections: headline scores (F1 with a paired-bootstrap 95% interval, and the
F1 difference of each pair of models with its interval and p-value) and costs,
per-type scores, partial-match scores (the four SemEval-2013 schemes),
learning curves, entity error classes (defined in :mod:`report.errors`) with a
type confusion matrix and examples, disagreements between models, breakdowns
(sentence length, entity length, entities seen/unseen in training, all-caps
sentences) and improvement hints computed from those numbers.

Several ``--data`` sets (see :mod:`report.sets`): every run is scored on each;
the report opens with a cross-set table, analyses the first set in full and
gives each other set a section of its own.  ``--tagged OUT_A OUT_B`` compares
two ``ner-tag`` outputs of one unlabelled input instead (see :mod:`report.tagged`).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import logging
import os
import shutil
import sys
from typing import Sequence

from common.cli import BAD_INPUT_EXIT, OS_ERROR_EXIT, Parser, at_least, device, os_error_line, output_dir_problem, text
from common.data import DataError
from common.io import atomic_write, write_json
from common.rundir import RunFolder

from . import errors
from .hints import disagreement_hint, improvement_hints
from .document import build_document
from .figures import make_figures
from .runs import ReportError, precision_check, resolve_device, unique_names
from .sections_sets import cross_set_scores
from .sections_stats import partial_match_definition
from .sets import SCORING_RULE, load_sets, score_sets, set_summary
from .stats import bootstrap_settings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ner-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=text, metavar="RUN_DIR", help="run folders written by ner-train")
    p.add_argument("--data", action="append", type=text, metavar="[NAME=]PATH[#FOLD]",
                   help="a labelled data set (JSON or CoNLL folder); repeat for several sets, each scored with "
                        "every run (NAME defaults to the file or folder name, FOLD to --fold: "
                        "--data test=D.json --data valid=D.json#valid). Its train fold tells seen from "
                        "unseen entities, and the fold is tagged by the export when a run has no saved "
                        "predictions for the set (default: the data path in the run's config.toml, if any)")
    p.add_argument("--fold", default="test", type=text, help="fold to report on, in every set without #FOLD (default: test)")
    p.add_argument("--out", required=True, type=text, help="report folder to write")
    p.add_argument("--names", type=text, help="comma-separated display names, one per run (or per --tagged folder; "
                                   "default: folder names)")
    p.add_argument("--bootstrap", type=at_least(0), default=1000, metavar="N",
                   help="bootstrap resamples of the sentences for the F1 intervals and the paired differences "
                        "(default 1000; 0: no intervals)")
    p.add_argument("--bootstrap-seed", type=at_least(0), default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--tagged", nargs=2, type=text, metavar=("OUT_A", "OUT_B"),
                   help="compare two ner-tag output folders of the same input instead of labelled runs")
    p.add_argument("--device", default="cpu", type=device, help="device for tagging with exports: cpu, cuda, cuda:1, auto")
    p.add_argument("--precision-check", action="store_true",
                   help="also tag the (first set's) fold with each export in fp32 and in bf16 and compare them")
    p.add_argument("--no-speed", action="store_true", help="do not time the exports")
    p.add_argument("--speed-sentences", type=at_least(0), default=0,
                   help="time the export on the first N sentences only (default 0: the whole fold)")
    p.add_argument("--max-tokens", type=at_least(8), default=4096, help="word pieces per batch when tagging (default 4096)")
    p.add_argument("--examples", type=at_least(0), default=3, help="examples per error class and model (default 3)")
    p.add_argument("--no-html-embed", action="store_true", help="link the PNGs from report.html instead of embedding")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _clean(an: dict) -> dict:
    """A set's numbers for report.json (keys starting with ``_`` are for the document only)."""
    return {"models": an["models"], "types": an["types"], "f1_differences": an["f1_differences"],
            **({"precision_check": an["precision_check"]} if "precision_check" in an else {}),
            "disagreements": [{k: v for k, v in p.items() if not k.startswith("_")} for p in an["pairs"]]}


def generate(args) -> dict:
    """Build the report in ``args.out``; returns report.json's content."""
    if getattr(args, "tagged", None):
        if args.runs or args.data:
            raise ReportError("--tagged compares two ner-tag outputs; give no run folders or --data with it")
        from .tagged import generate_tagged

        return generate_tagged(args)
    if not args.runs:
        raise ReportError("give at least one run folder (or --tagged OUT_A OUT_B)")
    if args.bootstrap < 0:
        raise ReportError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    names = args.names.split(",") if args.names else unique_names(args.runs)
    if len(names) != len(args.runs):
        raise ReportError(f"--names has {len(names)} names for {len(args.runs)} runs")
    sets = load_sets(args.data, args.runs, args.fold)
    results = score_sets(sets, args.runs, names, args)
    first = results[0]
    an, runs = first.an, first.runs
    if args.precision_check:
        an["precision_check"] = {
            run.name: precision_check(RunFolder(run.path).export_dir, first.set.sentences, resolve_device(args.device),
                                      args.max_tokens)
            for run in runs if RunFolder(run.path).has_export() and first.set.sentences}
    an["generated"] = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    an["hints"] = improvement_hints(an["models"])
    for p in an["pairs"]:
        if p["comparable"]:
            h = disagreement_hint(p["a"], p["b"], p["_detail"])
            if h:
                an["hints"].append(h)
    os.makedirs(args.out, exist_ok=True)
    figures = make_figures(runs, an, os.path.join(args.out, "figures"))
    doc = build_document(results, args, figures)
    with atomic_write(os.path.join(args.out, "report.md")) as f:
        f.write(doc.to_markdown(args.out))
    with atomic_write(os.path.join(args.out, "report.html")) as f:
        f.write(doc.to_html(embed_images=not args.no_html_embed, base_dir=args.out))
    report = {
        "format_version": 1,
        "fold": args.fold,
        "data": an["data"],
        "generated": an["generated"],
        **_clean(an),
        "bootstrap": bootstrap_settings(args.bootstrap, args.bootstrap_seed),
        "hints": an["hints"],
        "figures": {k: os.path.relpath(v, args.out) for k, v in figures.items()},
        "sets": {r.name: {**set_summary(r), **(_clean(r.an) if r.an else {})} for r in results},
        "cross_set": cross_set_scores(results),
        "scoring_rule": SCORING_RULE,
        "definitions": {"error_classes": errors.__doc__.split("Error classes\n-------------\n", 1)[-1].strip(),
                        "partial_match": partial_match_definition()},
    }
    write_json(os.path.join(args.out, "report.json"), report, indent=1)
    return report


def generate_staged(args) -> dict:
    """:func:`generate` into ``OUT.tmp``, moved into ``OUT`` when complete: a failure (a bad option, no space)
    leaves no half-written report, and a report already in ``OUT`` stays until the new one is whole."""
    problem = output_dir_problem(args.out)
    if problem:  # before any run is loaded or tagged
        raise ReportError(f"--out: {problem}")
    final = args.out.rstrip("/") or args.out
    stage = final + ".tmp"
    shutil.rmtree(stage, ignore_errors=True)
    staged = copy.copy(args)
    staged.out = stage
    try:
        report = generate(staged)
        os.makedirs(final, exist_ok=True)
        for name in os.listdir(stage):
            target = os.path.join(final, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(stage, name), target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        report = generate_staged(args)
    except (ReportError, DataError) as e:
        print(f"ner-report: error: {e}", file=sys.stderr)
        return BAD_INPUT_EXIT
    except OSError as e:  # no space, file too large, permission: nothing half-written is left in --out
        print(f"ner-report: error: {os_error_line(e, args.out)}", file=sys.stderr)
        return OS_ERROR_EXIT
    if report.get("kind") == "tagged_comparison":
        print(f"wrote {os.path.join(args.out, 'report.md')}, report.html and report.json; exact agreement "
              f"(strict F1) {100 * report['agreement']['strict']['f1']:.2f}, partial "
              f"{100 * report['agreement']['partial']['f1']:.2f} over {report['rows']:,} rows")
        return 0
    best = max(report["models"].items(), key=lambda kv: kv[1]["scores"]["f1"])
    print(f"wrote {os.path.join(args.out, 'report.md')}, report.html, report.json and "
          f"{len(report['figures'])} figures; best F1 {100 * best[1]['scores']['f1']:.2f} ({best[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
