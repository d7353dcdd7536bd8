"""The main job: train both taggers with the committed recipes, compare them, tag a corpus.

    python -m pipeline --data conll03.json [--corpus corpus.parquet] [--out runs]

Every stage is resumable: a finished training run (``metrics.json`` present)
is skipped, an interrupted one is resumed, and the tagger skips finished
parts.  Stages: ``OUT/bilstm_conll03``, ``OUT/bert_conll03`` (ner-train),
``OUT/report`` (ner-report), ``OUT/tagged`` (ner-tag over the corpus, or its
first ``--corpus-rows`` rows).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from common.io import atomic_write
from common.rundir import RunFolder

log = logging.getLogger("pipeline")

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
RECIPES = (("bilstm_conll03", "bilstm_conll03.toml"), ("bert_conll03", "bert_conll03.toml"))


def _stage(name: str):
    log.info("==== %s", name)
    return time.perf_counter()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ner-main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled CoNLL-style JSON (or folder of CoNLL files)")
    p.add_argument("--corpus", default="", help="Parquet file/folder of raw text to tag with the BERT tagger")
    p.add_argument("--text-column", default="text")
    p.add_argument("--corpus-rows", type=int, default=20000,
                   help="tag only the first N rows of the corpus (0 = all); keeps the job under an hour on 2 cores")
    p.add_argument("--out", default="runs")
    p.add_argument("--only", choices=["bilstm_conll03", "bert_conll03"], help="train just this recipe")
    args = p.parse_args(argv)
    from common.distributed import setup_logging

    setup_logging(rank=0)
    if not os.path.exists(args.data):
        print(f"ner-main: error: data {args.data!r} not found.\n"
              "Pass your CoNLL-2003-style JSON ({'train'|'valid'|'test': [{'tokens': [...], 'tags': [...]}]}) "
              "or a folder with train.txt/valid.txt/test.txt, e.g.\n"
              "  make main DATA=path/to/conll03-iob-pos.json", file=sys.stderr)
        return 2
    from train.__main__ import main as train_main

    os.makedirs(args.out, exist_ok=True)
    t_all = time.perf_counter()
    runs = []
    for name, recipe in RECIPES:
        if args.only and name != args.only:
            continue
        run_dir = os.path.join(args.out, name)
        runs.append(run_dir)
        t0 = _stage(f"train {name} ({recipe}) -> {run_dir}")
        if os.path.exists(RunFolder(run_dir).metrics_path):
            log.info("%s already finished; skipping (delete it to retrain)", run_dir)
            continue
        rc = train_main(["--config", str(CONFIGS / recipe), "--data", args.data, "--output-dir", run_dir, "--resume"])
        if rc:
            return rc
        log.info("%s trained in %.0f s", name, time.perf_counter() - t0)

    _stage(f"report -> {args.out}/report")
    from report.__main__ import main as report_main

    rc = report_main([*runs, "--data", args.data, "--fold", "test", "--out", os.path.join(args.out, "report")])
    if rc:
        return rc

    bert_export = RunFolder(os.path.join(args.out, "bert_conll03")).export_dir
    if args.corpus and os.path.isdir(bert_export):
        corpus = args.corpus
        if args.corpus_rows:
            import pyarrow.dataset as ds
            import pyarrow.parquet as pq

            sample = os.path.join(args.out, f"corpus_first_{args.corpus_rows}.parquet")
            if not os.path.exists(sample):
                table = ds.dataset(args.corpus).head(args.corpus_rows)
                with atomic_write(sample, "wb") as f:
                    pq.write_table(table, f)
            corpus = sample
        _stage(f"tag {corpus} -> {args.out}/tagged")
        from infer.__main__ import main as tag_main

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
