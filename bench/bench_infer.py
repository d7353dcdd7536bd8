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

and prints words/s (words = ``infer.word_arrays.split_texts`` words of the sample,
the same count for both), the speedup, and span agreement with the baseline:
F1 between the two sets of ``(start, end, label)`` character spans (exact
match), overall and restricted to the part of each text the baseline saw (it
truncates texts to the model's 512 pieces; ner-tag tags whole texts).

``--memory-rows R --memory-factor F`` then runs ``ner-tag`` as a subprocess on
the first R and R*F rows of the first corpus (same options, small buffers so
that both runs span several buffers and parts) and reports both peak RSS
values (polled with psutil) and their ratio.

The export must be Hugging Face compatible (a BERT tagger without casing/CRF,
or a plain Hugging Face token-classification folder):
``--make-export DIR`` trains one for a few steps from the offline MiniLM
encoder on ``../shared/data/conll03-iob-pos.json`` if you have none.

``--device cuda`` runs both on the GPU (the pipeline with ``device=0``); each
run then also reports its peak GPU memory (``torch.cuda.max_memory_allocated``)
and pieces/s (word pieces the model computed: ner-tag's windows, the
baseline's truncated encodings).

``--host-side``: everything but the model, and end to end against the model alone
(``bench/bench_host_side.py`` says what it times).
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
sys.path.insert(0, str(REPO / "bench"))

from bench_common import load_sample, wait_quiet  # noqa: E402, F401 (both also imported from here by other scripts)


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
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for both (default: cpu)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--host-side", action="store_true", help="time the host side instead (see above)")
    p.add_argument("--host-rows", type=int, default=100000, help="rows of the host-side runs")
    p.add_argument("--host-workers", default="0,1,2", help="host worker processes to time, comma-separated")
    p.add_argument("--baseline-repo", help="an older checkout: its host side timed the same way, side by side")
    p.add_argument("--e2e-rows", type=int, default=10000, help="rows of the model-only and end-to-end runs")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of (model only, model only with ner-tag's malloc, end to end); medians compared")
    p.add_argument("--quiet-load", type=float, default=1.2, help="wait for a 1-minute load below this")
    p.add_argument("--quiet-wait", type=float, default=20, help="minutes to wait for it at most")
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


def span_f1(a: list[set], b: list[set]) -> float:
    inter = sum(len(x & y) for x, y in zip(a, b))
    total = sum(len(x) + len(y) for x, y in zip(a, b))
    return 2 * inter / total if total else 1.0


def _reset_gpu_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def run_baseline(model: str, texts: list, batch_size: int, device: str = "cpu"):
    from transformers import pipeline

    nlp = pipeline("token-classification", model=model, aggregation_strategy="first", batch_size=batch_size,
                   device=device if device.startswith("cuda") else -1)
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    inputs = [texts[i] for i in keep]
    nlp(inputs[:8])  # warm-up
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    results = nlp(inputs)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = _gpu_peak_mib(device)
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
    pieces = sum(len(ids) for ids in enc["input_ids"])
    return spans, seen, seconds, truncated, {"pieces": pieces, "peak_gpu_mib": peak}


def run_ours(model: str, sample_path: str, precision: str, threads: int, tmp: str, device: str = "cpu"):
    from infer.runner import TagOptions, run

    out = os.path.join(tmp, f"out_{Path(sample_path).stem}_{precision}")
    opts = TagOptions(model=model, inputs=[sample_path], output=out, device=device, precision=precision,
                      threads=threads, progress=False, overwrite=True)
    _reset_gpu_peak(device)
    summary = run(opts)
    summary["this_run"]["pieces"] = sum(r.get("pieces", 0) for r in summary["this_run"]["ranks"])
    summary["this_run"]["peak_gpu_mib"] = _gpu_peak_mib(device)
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


def checked_model(args) -> tuple[str, dict]:
    """The export to time (``--model``, or one trained by ``--make-export``) and its config; exits unless it is
    Hugging Face compatible."""
    model = args.model or (make_export(args.make_export, args.train_steps) if args.make_export else None)
    if not model:
        sys.exit("pass --model EXPORT or --make-export RUN_DIR")
    from taggers.export import read_export_config

    meta = read_export_config(model)  # an export's ner_config.json, or a Hugging Face folder's synthesised one
    if not meta.get("hf_compatible"):
        sys.exit(f"{model} is not Hugging Face compatible (train with model.use_casing=false model.use_crf=false)")
    return model, meta


def time_baseline(model: str, texts: list, words: int, args, gpu: str | None):
    """The baseline pipeline on one sample, printed -> its spans, the offsets it saw, words/s and results entry."""
    base_spans, seen, base_s, truncated, base_extra = run_baseline(model, texts, args.batch_size, args.device)
    base_wps = words / base_s
    gpu_mem = f", peak GPU memory {base_extra['peak_gpu_mib']:,.0f} MiB" if gpu else ""
    print(f"baseline pipeline (batch_size={args.batch_size}): {base_s:7.1f} s {base_wps:9,.0f} words/s "
          f"{base_extra['pieces'] / base_s:9,.0f} pieces/s ({truncated} texts truncated at 512 pieces"
          f"{gpu_mem})", flush=True)
    entry = {"rows": len(texts), "words": words, "baseline_s": round(base_s, 2),
             "baseline_words_per_s": round(base_wps, 1), "baseline_truncated": truncated,
             "baseline_pieces_per_s": round(base_extra["pieces"] / base_s, 1),
             "baseline_peak_gpu_mib": base_extra["peak_gpu_mib"], "ours": {}}
    return base_spans, seen, base_wps, entry


def report_ours(prec: str, spans: list[set], run: dict, words: int, base_spans: list[set], seen: list[int],
                base_wps: float, gpu: str | None) -> dict:
    """One ner-tag run against the baseline, printed -> its results entry."""
    wps = words / run["tag_s"]
    f1 = span_f1(spans, base_spans)
    clipped = [{s for s in x if s[1] <= lim} for x, lim in zip(spans, seen)]
    f1_seen = span_f1(clipped, base_spans)
    pps = run["pieces"] / run["tag_s"]
    gpu_mem = f"; peak GPU memory {run['peak_gpu_mib']:,.0f} MiB" if gpu else ""
    print(f"ner-tag {prec:5s}: {run['tag_s']:7.1f} s {wps:9,.0f} words/s {pps:9,.0f} pieces/s  "
          f"speedup {wps / base_wps:4.2f}x  "
          f"span agreement F1 {f1:.3f} (in the baseline's window {f1_seen:.3f}); padding efficiency "
          f"{run['padding_efficiency']:.0%}{gpu_mem}", flush=True)
    return {"tag_s": run["tag_s"], "words_per_s": round(wps, 1),
            "pieces_per_s": round(pps, 1), "peak_gpu_mib": run["peak_gpu_mib"],
            "speedup": round(wps / base_wps, 2), "span_f1": round(f1, 4),
            "span_f1_baseline_window": round(f1_seen, 4),
            "padding_efficiency": run["padding_efficiency"]}


def compare_on_corpus(spec: str, model: str, args, precisions: list[str], threads: int, gpu: str | None,
                      tmp: str) -> dict:
    """One corpus sample: the baseline, then ner-tag per precision (and each against fp32), printed -> its
    results entry."""
    from infer.word_arrays import split_texts

    path, texts, name = load_sample(spec, tmp)
    words = split_texts(texts).num_words
    print(f"\n== {name}: {len(texts)} rows, {words:,} words ==", flush=True)
    base_spans, seen, base_wps, entry = time_baseline(model, texts, words, args, gpu)
    entry = {"corpus": name, **entry}
    ours_spans = {}
    for prec in precisions:
        spans, run = run_ours(model, path, prec, threads, tmp, args.device)
        ours_spans[prec] = spans
        entry["ours"][prec] = report_ours(prec, spans, run, words, base_spans, seen, base_wps, gpu)
    if "fp32" in ours_spans:
        for prec in ours_spans:
            if prec != "fp32":
                f1 = span_f1(ours_spans[prec], ours_spans["fp32"])
                print(f"ner-tag {prec} vs fp32 span agreement F1 {f1:.3f}")
                entry["ours"][prec]["span_f1_vs_fp32"] = round(f1, 4)
    return entry


def memory_runs(args, corpus: str, model: str, precision: str, threads: int, tmp: str) -> dict:
    """Peak RSS of ``ner-tag`` (a subprocess) on the first R and R*F rows of ``corpus``, printed -> results."""
    mem_model = args.memory_model or model
    first = corpus.partition(":")[0]
    print(f"\n== peak RSS: ner-tag on the first {args.memory_rows} and {args.memory_rows * args.memory_factor}"
          f" rows of {Path(first).name} ({mem_model}) ==", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    mem = {}
    for rows in (args.memory_rows, args.memory_rows * args.memory_factor):
        sample, _, _ = load_sample(f"{first}:{rows}", tmp)
        cmd = [sys.executable, "-m", "infer", "--model", mem_model, "--input", sample, "--output",
               os.path.join(tmp, f"mem_{rows}"), "--device", "cpu", "--precision", precision,
               "--no-progress", "--buffer-rows", "256", "--rows-per-part", str(max(1, args.memory_rows // 2))]
        rss, secs, _ = peak_rss(cmd, env)
        mem[rows] = rss
        print(f"{rows:7d} rows: peak RSS {rss:8.1f} MiB ({secs:.0f} s)", flush=True)
    small, big = mem.values()
    print(f"ratio {big / small:.3f} (goal <= 1.2)")
    return {"rows": list(mem), "peak_rss_mib": [round(v, 1) for v in mem.values()], "ratio": round(big / small, 3)}


def main():
    """The comparison (or ``--host-side``'s runs), printed and with ``--json`` written."""
    args = parse_args()
    if args.host_side:
        from bench_host_side import host_side

        return host_side(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model, meta = checked_model(args)
    corpora = args.corpus or [str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":2000",
                              str(REPO.parent / "shared/corpus/reuters21578.parquet") + ":300"]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    print(f"model {model} ({meta['model_type']}, {sum(1 for _ in meta['labels'])} labels); torch {torch.__version__}, "
          f"{threads} threads; device {args.device}{f' ({gpu})' if gpu else ''}; cpu load before: {os.getloadavg()}")
    results = {"model": model, "threads": threads, "device": args.device, "gpu": gpu, "torch": torch.__version__,
               "cuda": torch.version.cuda, "corpora": []}
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        for spec in ([] if args.memory_only else corpora):
            results["corpora"].append(compare_on_corpus(spec, model, args, precisions, threads, gpu, tmp))
        if args.memory_rows:
            results["memory"] = memory_runs(args, corpora[0], model, precisions[-1], threads, tmp)
    print(f"\ncpu load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
