"""The Ray Data path (:mod:`infer.ray`) against ner-tag on the same rows, model, precision and threads (CPU).

    python bench/bench_ray.py --model EXPORT [--make-export RUN_DIR] \\
        [--corpus ../shared/corpus/news_sentences.parquet:10000] [--threads 2] [--precision auto] [--repeats 3]

The first ROWS rows of the corpus go to a temporary Parquet file (row groups of 1,024 rows, so Ray reads
several blocks).  Each round, one after the other:

* ner-tag: ``infer.runner.run`` in this process (``--threads`` torch threads, default buffers); its wall time
  (model loading included) and its tagging time (``tag_s`` of the summary);
* Ray: on a local cluster started once (``ray.init(num_cpus=threads + 1)``: the actor takes ``threads`` CPUs,
  reading and writing the one left), ``read_parquet -> tag_dataset(actors=1, num_cpus=threads,
  threads=threads) -> write_parquet``; its wall time (actor start and model loading included) and its tagging
  time (from the actor's first batch to its last, timed in the actor).

Words are ner-tag's count of the sample (``infer.words`` words).  The table gives words/s of each and the ratio
Ray / ner-tag of the medians, end to end and while tagging.  Timed runs wait (up to ``--quiet-wait`` minutes)
for a 1-minute load average below ``--quiet-load``; the load is printed before every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from infer.ray import NerTagger  # noqa: E402


class TimedNerTagger(NerTagger):
    """NerTagger that appends each batch's (start, end) perf_counter to a file (the actor runs on this machine)."""

    def __init__(self, model, times_path, **kw):
        super().__init__(model, **kw)
        self.times_path = times_path

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = super().__call__(batch)
        with open(self.times_path, "a") as f:
            f.write(f"{t0} {time.perf_counter()}\n")
        return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="export (or Hugging Face token-classification folder)")
    p.add_argument("--make-export", metavar="RUN_DIR", help="train a MiniLM export into RUN_DIR (as bench_infer.py)")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--corpus", default=str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":10000",
                   metavar="PATH[:ROWS]", help="Parquet corpus with a 'text' column and how many of its first rows")
    p.add_argument("--threads", type=int, default=0, help="torch threads of both (default: all cores)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--buffer-rows", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=16384, help="Ray batch size (rows per actor call)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--quiet-load", type=float, default=1.2, help="wait for a 1-minute load below this")
    p.add_argument("--quiet-wait", type=float, default=20, help="minutes to wait for it at most")
    return p.parse_args()


def run_ner_tag(args, model: str, sample: str, out: str, threads: int) -> dict:
    from infer.runner import TagOptions, run

    opts = TagOptions(model=model, inputs=[sample], output=out, precision=args.precision, threads=threads,
                      buffer_rows=args.buffer_rows, progress=False, overwrite=True)
    t0 = time.perf_counter()
    summary = run(opts)
    wall = time.perf_counter() - t0
    r = summary["this_run"]
    return {"wall_s": wall, "tag_s": r["tag_s"], "words": r["words"], "rows": r["rows"]}


def run_ray(args, ray, model: str, sample: str, out: str, threads: int, times_path: str) -> dict:
    from infer.ray import check_model

    check_model(model)
    if os.path.exists(times_path):
        os.remove(times_path)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(sample).map_batches(
        TimedNerTagger, fn_constructor_kwargs={"model": model, "times_path": times_path, "threads": threads,
                                               "precision": args.precision, "buffer_rows": args.buffer_rows},
        batch_size=args.batch_size, batch_format="pyarrow", num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(size=1))
    ds.write_parquet(out)
    wall = time.perf_counter() - t0
    calls = [tuple(map(float, line.split())) for line in open(times_path)]
    return {"wall_s": wall, "tag_s": max(e for _, e in calls) - min(s for s, _ in calls), "batches": len(calls)}


def main():
    args = parse_args()
    from bench_infer import load_sample, make_export, wait_quiet

    model = make_export(args.make_export, args.train_steps) if args.make_export else args.model
    if not model:
        sys.exit("--model or --make-export is required")
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    import torch

    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    sample, texts, name = load_sample(args.corpus, tmp)
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(sample), sample, row_group_size=1024)
    ray.init(num_cpus=threads + 1, include_dashboard=False, log_to_driver=False)
    print(f"model {model}; {name}: {len(texts):,} rows; torch {torch.__version__}, ray {ray.__version__}, "
          f"{threads} threads, precision {args.precision}, buffer_rows {args.buffer_rows}, "
          f"Ray batch_size {args.batch_size}", flush=True)
    results = {"ner-tag": [], "ray": []}
    words = None
    for i in range(args.repeats):
        for kind in ("ner-tag", "ray"):
            load = wait_quiet(args)
            out = os.path.join(tmp, f"out_{kind}_{i}")
            if kind == "ner-tag":
                r = run_ner_tag(args, model, sample, out, threads)
                words = r["words"]
            else:
                r = run_ray(args, ray, model, sample, out, threads, os.path.join(tmp, "times.txt"))
            results[kind].append(r)
            print(f"round {i + 1} {kind:8s} load {load:4.2f}: wall {r['wall_s']:6.1f} s "
                  f"({words / r['wall_s']:8,.0f} words/s), tagging {r['tag_s']:6.1f} s "
                  f"({words / r['tag_s']:8,.0f} words/s)", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "tag_s")} for k, v in results.items()}
    print(f"\n{words:,} words; medians of {args.repeats} rounds:")
    print("| path | end to end words/s | while tagging words/s |\n|---|---|---|")
    for k in ("ner-tag", "ray"):
        print(f"| {k} | {words / med[k]['wall_s']:,.0f} | {words / med[k]['tag_s']:,.0f} |")
    ratio_wall = med["ner-tag"]["wall_s"] / med["ray"]["wall_s"]
    ratio_tag = med["ner-tag"]["tag_s"] / med["ray"]["tag_s"]
    print(f"Ray / ner-tag: end to end {ratio_wall:.2f}, while tagging {ratio_tag:.2f} (goal >= 0.80)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"words": words, "threads": threads, "rounds": results, "medians": med,
                       "ratio_wall": ratio_wall, "ratio_tagging": ratio_tag}, f, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
