"""ner-tag vs the Hugging Face token-classification pipeline, side by side on the same texts.

    python bench/bench_infer.py --model EXPORT \\
        --corpus ../shared/corpus/news_sentences.parquet:2000 --corpus ../shared/corpus/reuters21578.parquet:300 \\
        [--precision fp32,bf16] [--threads N] [--memory-rows 500 --memory-factor 10]

For each corpus (``PATH[:ROWS]``: the first ROWS rows) it writes the sample to a
temporary Parquet file and times

* the baseline: ``pipeline("token-classification", model=EXPORT,
  aggregation_strategy="first", batch_size=64)`` over the non-empty texts
  (in memory; model loading not timed);
* ner-tag: ``infer.runner.run`` on the sample file, once per ``--precision``
  (reading, tagging and writing the Parquet output; model loading not timed);

and prints words/s (words = ``infer.words.split_words`` words of the sample,
the same count for both), the speedup, and span agreement with the baseline:
F1 between the two sets of ``(start, end, label)`` character spans (exact
match), overall and restricted to the part of each text the baseline saw (it
truncates texts to the model's 512 pieces; ner-tag tags whole texts).

``--memory-rows R --memory-factor F`` then runs ``ner-tag`` as a subprocess on
the first R and R*F rows of the first corpus (same options, small buffers so
that both runs span several buffers and parts) and reports both peak RSS
values (polled with psutil) and their ratio.

The export must be Hugging Face compatible (a BERT tagger without casing/CRF):
``--make-export DIR`` trains one for a few steps from the offline MiniLM
encoder on ``../shared/data/conll03-iob-pos.json`` if you have none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF-compatible BERT export (ner_config.json hf_compatible: true)")
    p.add_argument("--make-export", metavar="RUN_DIR",
                   help="train a MiniLM export for --train-steps steps into RUN_DIR (if absent) and use it")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--corpus", action="append", metavar="PATH[:ROWS]",
                   help="Parquet corpus with a 'text' column and how many of its first rows to tag "
                        "(repeatable; default: the two shared corpora, 2000 and 300 rows)")
    p.add_argument("--precision", default="fp32,bf16", help="ner-tag precisions to time, comma-separated")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both (default: all cores)")
    p.add_argument("--batch-size", type=int, default=64, help="baseline pipeline batch size")
    p.add_argument("--memory-rows", type=int, default=0, help="rows of the small memory run (0: skip)")
    p.add_argument("--memory-only", action="store_true", help="skip the speed comparison")
    p.add_argument("--memory-factor", type=int, default=10)
    p.add_argument("--memory-model", help="export for the memory runs (default: --model)")
    p.add_argument("--json", help="also write the results as JSON here")
    return p.parse_args()


def make_export(run_dir: str, steps: int) -> str:
    export = os.path.join(run_dir, "export")
    if not os.path.exists(os.path.join(export, "ner_config.json")):
        cmd = [sys.executable, "-m", "train", "--data", str(REPO.parent / "shared/data/conll03-iob-pos.json"),
               "--output-dir", run_dir, "model.use_casing=false", "model.use_crf=false",
               "data.max_sentences=1500", f"train.max_steps={steps}", "train.max_tokens=2048",
               "train.eval_max_tokens=8192", "optim.lr=1e-4", "optim.head_lr=2e-3", "train.progress=false"]
        print("training a MiniLM export:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    return export


def load_sample(spec: str, tmp: str) -> tuple[str, list, str]:
    import pyarrow.parquet as pq

    path, _, rows = spec.partition(":")
    pf = pq.ParquetFile(path)
    rows = int(rows) if rows else pf.metadata.num_rows
    batches, n = [], 0
    for b in pf.iter_batches(batch_size=min(rows, 65536)):
        batches.append(b.slice(0, rows - n))
        n += batches[-1].num_rows
        if n >= rows:
            break
    import pyarrow as pa

    table = pa.Table.from_batches(batches)
    out = os.path.join(tmp, f"{Path(path).stem}_{rows}.parquet")
    pq.write_table(table, out)
    return out, table.column("text").to_pylist(), Path(path).stem


def span_f1(a: list[set], b: list[set]) -> float:
    inter = sum(len(x & y) for x, y in zip(a, b))
    total = sum(len(x) + len(y) for x, y in zip(a, b))
    return 2 * inter / total if total else 1.0


def run_baseline(model: str, texts: list, batch_size: int):
    from transformers import pipeline

    nlp = pipeline("token-classification", model=model, aggregation_strategy="first", batch_size=batch_size,
                   device=-1)
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    inputs = [texts[i] for i in keep]
    nlp(inputs[:8])  # warm-up
    t0 = time.perf_counter()
    results = nlp(inputs)
    seconds = time.perf_counter() - t0
    spans = [set() for _ in texts]
    for i, res in zip(keep, results):
        spans[i] = {(int(e["start"]), int(e["end"]), e["entity_group"]) for e in res}
    # the character offset up to which the baseline saw each text (it truncates to model_max_length)
    tok = nlp.tokenizer
    seen = [0] * len(texts)
    enc = tok(inputs, truncation=True, return_offsets_mapping=True, add_special_tokens=True)
    for i, offsets in zip(keep, enc["offset_mapping"]):
        seen[i] = max((e for _, e in offsets), default=0)
    truncated = sum(1 for i in keep if seen[i] < len(texts[i].rstrip()))
    return spans, seen, seconds, truncated


def run_ours(model: str, sample_path: str, precision: str, threads: int, tmp: str):
    from infer.runner import TagOptions, run

    out = os.path.join(tmp, f"out_{Path(sample_path).stem}_{precision}")
    opts = TagOptions(model=model, inputs=[sample_path], output=out, device="cpu", precision=precision,
                      threads=threads, progress=False, overwrite=True)
    summary = run(opts)
    import pyarrow.dataset as ds

    table = ds.dataset(out, format="parquet").to_table(columns=["entities"])
    spans = [{(e["start"], e["end"], e["label"]) for e in ents} for ents in table.column("entities").to_pylist()]
    return spans, summary["this_run"]


def peak_rss(cmd: list[str], env: dict) -> tuple[float, float, int]:
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    out_lines = []
    reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    reader.join()
    if proc.returncode:
        raise RuntimeError("".join(out_lines[-30:]))
    return peak / 2**20, time.perf_counter() - t0, proc.returncode


def main():
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = args.model or (make_export(args.make_export, args.train_steps) if args.make_export else None)
    if not model:
        sys.exit("pass --model EXPORT or --make-export RUN_DIR")
    meta = json.load(open(os.path.join(model, "ner_config.json")))
    if not meta.get("hf_compatible"):
        sys.exit(f"{model} is not Hugging Face compatible (train with model.use_casing=false model.use_crf=false)")
    corpora = args.corpus or [str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":2000",
                              str(REPO.parent / "shared/corpus/reuters21578.parquet") + ":300"]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    from infer.words import split_words

    print(f"model {model} ({meta['model_type']}, {sum(1 for _ in meta['labels'])} labels); torch {torch.__version__}, "
          f"{threads} threads; cpu load before: {os.getloadavg()}")
    results = {"model": model, "threads": threads, "corpora": []}
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        for spec in ([] if args.memory_only else corpora):
            path, texts, name = load_sample(spec, tmp)
            words = sum(len(split_words(t)[0]) for t in texts if t)
            print(f"\n== {name}: {len(texts)} rows, {words:,} words ==", flush=True)
            base_spans, seen, base_s, truncated = run_baseline(model, texts, args.batch_size)
            base_wps = words / base_s
            print(f"baseline pipeline (batch_size={args.batch_size}): {base_s:7.1f} s {base_wps:9,.0f} words/s "
                  f"({truncated} texts truncated at 512 pieces)", flush=True)
            entry = {"corpus": name, "rows": len(texts), "words": words, "baseline_s": round(base_s, 2),
                     "baseline_words_per_s": round(base_wps, 1), "baseline_truncated": truncated, "ours": {}}
            ours_spans = {}
            for prec in precisions:
                spans, run = run_ours(model, path, prec, threads, tmp)
                ours_spans[prec] = spans
                wps = words / run["tag_s"]
                f1 = span_f1(spans, base_spans)
                clipped = [{s for s in x if s[1] <= lim} for x, lim in zip(spans, seen)]
                f1_seen = span_f1(clipped, base_spans)
                print(f"ner-tag {prec:5s}: {run['tag_s']:7.1f} s {wps:9,.0f} words/s  speedup {wps / base_wps:4.2f}x  "
                      f"span agreement F1 {f1:.3f} (in the baseline's window {f1_seen:.3f}); padding efficiency "
                      f"{run['padding_efficiency']:.0%}", flush=True)
                entry["ours"][prec] = {"tag_s": run["tag_s"], "words_per_s": round(wps, 1),
                                       "speedup": round(wps / base_wps, 2), "span_f1": round(f1, 4),
                                       "span_f1_baseline_window": round(f1_seen, 4),
                                       "padding_efficiency": run["padding_efficiency"]}
            if "fp32" in ours_spans:
                for prec in ours_spans:
                    if prec != "fp32":
                        f1 = span_f1(ours_spans[prec], ours_spans["fp32"])
                        print(f"ner-tag {prec} vs fp32 span agreement F1 {f1:.3f}")
                        entry["ours"][prec]["span_f1_vs_fp32"] = round(f1, 4)
            results["corpora"].append(entry)

        if args.memory_rows:
            mem_model = args.memory_model or model
            first = (args.corpus or corpora)[0].partition(":")[0]
            print(f"\n== peak RSS: ner-tag on the first {args.memory_rows} and {args.memory_rows * args.memory_factor}"
                  f" rows of {Path(first).name} ({mem_model}) ==", flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            mem = {}
            for rows in (args.memory_rows, args.memory_rows * args.memory_factor):
                sample, _, _ = load_sample(f"{first}:{rows}", tmp)
                cmd = [sys.executable, "-m", "infer", "--model", mem_model, "--input", sample, "--output",
                       os.path.join(tmp, f"mem_{rows}"), "--device", "cpu", "--precision", precisions[-1],
                       "--no-progress", "--buffer-rows", "256", "--rows-per-part", str(max(1, args.memory_rows // 2))]
                rss, secs, _ = peak_rss(cmd, env)
                mem[rows] = rss
                print(f"{rows:7d} rows: peak RSS {rss:8.1f} MiB ({secs:.0f} s)", flush=True)
            small, big = mem.values()
            print(f"ratio {big / small:.3f} (goal <= 1.2)")
            results["memory"] = {"rows": list(mem), "peak_rss_mib": [round(v, 1) for v in mem.values()],
                                 "ratio": round(big / small, 3)}
    print(f"\ncpu load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
