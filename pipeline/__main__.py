"""The main job: train both taggers with the committed recipes, compare them, tag a corpus.

    python -m pipeline --data conll03.json [--corpus corpus.parquet] [--out runs]

Every stage is resumable: a finished training run (``metrics.json`` present)
is skipped, an interrupted one is resumed, and the tagger skips finished
parts.  Stages: ``OUT/bert_conll03`` (ner-train); ``OUT/teacher`` (the BERT
export tags every ``--teacher-stride``-th row of the corpus with its word
probabilities: ``ner-tag --word-probs``); ``OUT/bilstm_distilled`` (the
BiLSTM student, trained on the gold fold plus the teacher's rows; without a
corpus, ``OUT/bilstm_conll03`` on the gold fold alone); ``OUT/report``
(ner-report); ``OUT/tagged`` (ner-tag over the corpus, or its first
``--corpus-rows`` rows).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from pathlib import Path

from common.cli import BAD_INPUT_EXIT, OS_ERROR_EXIT, Parser, at_least, os_error_line, output_dir_problem, text
from common.io import atomic_write
from common.rundir import RunFolder

log = logging.getLogger("pipeline")

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def _stage(name: str):
    log.info("==== %s", name)
    return time.perf_counter()


def _sample(corpus: str, out_path: str, rows: int = 0, stride: int = 1) -> str:
    """The corpus's first ``rows`` rows (0 = all), every ``stride``-th of them, written once to ``out_path``."""
    if not os.path.exists(out_path):
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        dataset = ds.dataset(corpus)
        table = dataset.head(rows) if rows else dataset.to_table()
        if stride > 1:
            table = table.take(list(range(0, len(table), stride)))
        with atomic_write(out_path, "wb") as f:
            pq.write_table(table, f)
    return out_path


def _train(name: str, recipe: str, data: str, out: str, *overrides: str) -> int:
    from train.__main__ import main as train_main

    run_dir = os.path.join(out, name)
    t0 = _stage(f"train {name} ({recipe}) -> {run_dir}")
    if os.path.exists(RunFolder(run_dir).metrics_path):
        log.info("%s already finished; skipping (delete it to retrain)", run_dir)
        return 0
    rc = train_main(["--config", str(CONFIGS / recipe), "--data", data, "--output-dir", run_dir, "--resume",
                     *overrides])
    if not rc:
        log.info("%s trained in %.0f s", name, time.perf_counter() - t0)
    return rc


def main(argv=None) -> int:
    p = Parser(prog="ner-main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=text, help="labelled CoNLL-style JSON (or folder of CoNLL files)")
    p.add_argument("--corpus", type=text, help="Parquet file/folder of raw text: the teacher's unlabelled "
                                                "sentences, and what the BERT tagger tags at the end")
    p.add_argument("--text-column", default="text", type=text)
    p.add_argument("--corpus-rows", type=at_least(0), default=20000,
                   help="tag only the first N rows of the corpus (0 = all); keeps the job under an hour on 2 cores")
    p.add_argument("--teacher-stride", type=at_least(1), default=4,
                   help="the teacher tags every Nth row of the corpus for the BiLSTM student (default: 4)")
    p.add_argument("--out", default="runs", type=text)
    args = p.parse_args(argv)
    from common.distributed import setup_logging

    setup_logging(rank=0)
    problem = output_dir_problem(args.out)
    if problem:
        print(f"ner-main: error: --out: {problem}", file=sys.stderr)
        return BAD_INPUT_EXIT
    try:
        return _main(args)
    except OSError as e:  # the stages' own errors are printed by them; this is the job's own files
        print(f"ner-main: error: {os_error_line(e, args.out)} (fix this and re-run: finished stages are kept)",
              file=sys.stderr)
        return OS_ERROR_EXIT


def _main(args) -> int:
    if not os.path.exists(args.data):
        print(f"ner-main: error: data {args.data!r} not found: pass your CoNLL-2003-style JSON "
              "({'train'|'valid'|'test': [{'tokens': [...], 'tags': [...]}]}) or a folder with "
              "train.txt/valid.txt/test.txt, e.g. make main DATA=path/to/conll03-iob-pos.json", file=sys.stderr)
        return BAD_INPUT_EXIT
    if args.corpus and not glob.glob(args.corpus):
        print(f"ner-main: error: --corpus {args.corpus!r} not found", file=sys.stderr)
        return BAD_INPUT_EXIT
    from infer.__main__ import main as tag_main

    os.makedirs(args.out, exist_ok=True)
    t_all = time.perf_counter()
    bert_run = os.path.join(args.out, "bert_conll03")
    rc = _train("bert_conll03", "bert_conll03.toml", args.data, args.out)
    if rc:
        return rc
    bert_export = RunFolder(bert_run).export_dir
    if args.corpus:
        teacher = os.path.join(args.out, "teacher")
        sentences = _sample(args.corpus, os.path.join(args.out, f"teacher_every_{args.teacher_stride}.parquet"),
                            stride=args.teacher_stride)
        _stage(f"teacher: {bert_export} tags {sentences} with its word probabilities -> {teacher}")
        rc = tag_main(["--model", bert_export, "--input", sentences, "--output", teacher, "--word-probs",
                       "--text-column", args.text_column])
        if rc:
            return rc
        student = ("bilstm_distilled", "bilstm_distilled.toml", f"data.teacher={json.dumps(teacher)}")
    else:
        log.warning("no --corpus: no teacher; the BiLSTM trains on the gold fold alone (bilstm_conll03.toml)")
        student = ("bilstm_conll03", "bilstm_conll03.toml")
    rc = _train(student[0], student[1], args.data, args.out, *student[2:])
    if rc:
        return rc
    runs = [os.path.join(args.out, student[0]), bert_run]

    _stage(f"report -> {args.out}/report")
    from report.__main__ import main as report_main

    rc = report_main([*runs, "--data", args.data, "--fold", "test", "--out", os.path.join(args.out, "report")])
    if rc:
        return rc

    if args.corpus and os.path.isdir(bert_export):
        corpus = _sample(args.corpus, os.path.join(args.out, f"corpus_first_{args.corpus_rows}.parquet"),
                         args.corpus_rows) if args.corpus_rows else args.corpus
        _stage(f"tag {corpus} -> {args.out}/tagged")
        rc = tag_main(["--model", bert_export, "--input", corpus,
                       "--output", os.path.join(args.out, "tagged"), "--text-column", args.text_column])
        if rc:
            return rc
    elif args.corpus:
        log.warning("no BERT export in %s; corpus not tagged", args.out)
    log.info("main job done in %.0f s: runs %s, report %s/report/report.md", time.perf_counter() - t_all, runs,
             args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
