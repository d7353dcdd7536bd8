"""ner-tag at GPU scale: the real command line on a large sample, against the model alone on the same GPU.

    python bench/bench_gpu_scale.py --model EXPORT [--corpus ../shared/corpus/news_sentences.parquet:100000] \\
        [--precision bf16,fp32] [--host-workers 0,4,8] [--batch-tokens 16384,65536] [--device cuda] \\
        [--baseline-repo OLD_CHECKOUT] [--results bench/results_gpu_scale.md] [--json FILE]

* model only (``bench_common.model_only``): a fresh process loads the export (``TextTagger``), prepares every
  buffer of the sample beforehand (not timed) and times ``TextTagger.predict`` over them after one warm-up
  buffer: the most a GPU can give with this model, in words/s and pieces/s, per precision and batch size;
* end to end: ``python -m infer`` (``ner-tag``) on the sample for every precision x host workers x batch tokens
  (each a fresh process, ``--overwrite``): words/s while tagging (from its ``_summary.json``; model loading not
  included), and its fraction of the model-only words/s; with ``--baseline-repo`` the same runs of an older
  checkout first (its ``NER_TAG_HOST_WORKERS``), side by side;
* GPU utilisation during every run (``nvidia-smi -lms 200``, as in ``bench/gpu_check.py``).

``--device cpu`` runs the same on a CPU (no utilisation then).  ``bench/gpu_check.py`` runs this as its stage d.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_common import load_sample, model_only  # noqa: E402
from gpu_common import GpuSampler  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an export (RUN/export) or a Hugging Face token-classification folder")
    p.add_argument("--corpus", default=str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":100000",
                   metavar="PATH[:ROWS]", help="the sample (default: %(default)s)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16,fp32", help="comma-separated (default: %(default)s)")
    p.add_argument("--host-workers", default="0,4,8", help="comma-separated (default: %(default)s)")
    p.add_argument("--batch-tokens", default="16384,65536", help="comma-separated (default: %(default)s)")
    p.add_argument("--baseline-repo", help="an older checkout, timed the same way first")
    p.add_argument("--results", help="write a markdown table here")
    p.add_argument("--json", help="write the results as JSON here")
    return p.parse_args(argv)


def _run(cmd: list[str], repo: str, env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    with GpuSampler(interval_ms=200) as sampler:
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    return r, sampler.summary()


def _util(gpu: dict) -> str:
    v = next((x for x in gpu.values() if isinstance(x, dict)), None)
    return f"{v['util_mean_pct']:.0f}% / {v['util_max_pct']:.0f}%" if v else "-"


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.model):  # the runs start in the checkout they time
        args.model = os.path.abspath(args.model)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["TOKENIZERS_PARALLELISM"] = "false"

    def path(repo: str) -> str:  # the checkout first, then what the caller had (carried packages)
        return os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    workers = [int(w) for w in args.host_workers.split(",") if w.strip()]
    batch_tokens = [int(b) for b in args.batch_tokens.split(",") if b.strip()]
    results: dict = {"model": args.model, "device": args.device, "cores": len(os.sched_getaffinity(0)),
                     "model_only": [], "end_to_end": []}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_scale_") as tmp:
        src, texts, name = load_sample(args.corpus, tmp)
        results["corpus"], results["rows"] = name, len(texts)
        print(f"{name}: {len(texts):,} rows; device {args.device}; {results['cores']} cores", flush=True)
        best: dict = {}
        for prec in precisions:
            for bt in batch_tokens:
                with GpuSampler(interval_ms=200) as sampler:
                    m = model_only(args.model, src, prec, device=args.device, batch_tokens=bt, warmup="first")
                gpu = sampler.summary()
                m.update(precision=prec, batch_tokens=bt, words_per_s=round(m["words"] / m["seconds"]),
                         pieces_per_s=round(m["pieces"] / m["seconds"]), gpu_util=_util(gpu))
                best[prec] = max(best.get(prec, 0), m["words_per_s"])
                results["model_only"].append(m)
                print(f"model only {prec:5s} batch {bt:6d}: {m['words_per_s']:>11,} words/s "
                      f"{m['pieces_per_s']:>11,} pieces/s  GPU {m['gpu_util']}", flush=True)
        runs = [("baseline", args.baseline_repo)] if args.baseline_repo else []
        runs.append(("this checkout", str(REPO)))
        for code, repo in runs:
            for prec in precisions:
                for bt in batch_tokens:
                    for w in workers:
                        out = os.path.join(tmp, f"out_{len(results['end_to_end'])}")
                        cmd = [sys.executable, "-m", "infer", "--model", args.model, "--input", src, "--output", out,
                               "--device", args.device, "--precision", prec, "--batch-tokens", str(bt),
                               "--overwrite", "--no-progress"]
                        run_env = {**env, "PYTHONPATH": path(repo), "NER_TAG_HOST_WORKERS": str(w)}
                        r, gpu = _run(cmd, repo, run_env)
                        summary_path = os.path.join(out, "_summary.json")
                        if r.returncode or not os.path.exists(summary_path):
                            raise SystemExit(f"ner-tag failed ({code}):\n{r.stderr[-3000:]}")
                        with open(summary_path) as f:
                            run = json.load(f)["this_run"]
                        e = {"code": code, "precision": prec, "batch_tokens": bt, "host_workers": w,
                             "words": run["words"], "tag_s": run["tag_s"],
                             "words_per_s": round(run["words"] / run["tag_s"]), "gpu_util": _util(gpu)}
                        e["of_model_only"] = round(e["words_per_s"] / best[prec], 3)
                        results["end_to_end"].append(e)
                        print(f"{code:13s} {prec:5s} batch {bt:6d} host workers {w}: {e['words_per_s']:>10,} words/s "
                              f"({e['of_model_only']:.0%} of model only)  GPU {e['gpu_util']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.results:
        write_table(Path(args.results), results, args)
    return 0


def write_table(path: Path, res: dict, args) -> None:
    lines = [f"Sample: first {res['rows']:,} rows of {res['corpus']}; model `{res['model']}`; device {res['device']}; "
             f"{res['cores']} cores.", "", "| model only | batch tokens | words/s | pieces/s | GPU util mean / max |",
             "|---|---|---|---|---|"]
    lines += [f"| {m['precision']} | {m['batch_tokens']:,} | {m['words_per_s']:,} | {m['pieces_per_s']:,} | "
              f"{m['gpu_util']} |" for m in res["model_only"]]
    lines += ["", "| code | precision | batch tokens | host workers | words/s | of model only | GPU util mean / max |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {e['code']} | {e['precision']} | {e['batch_tokens']:,} | {e['host_workers']} | "
              f"{e['words_per_s']:,} | {e['of_model_only']:.0%} | {e['gpu_util']} |" for e in res["end_to_end"]]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
