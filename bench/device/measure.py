"""Issues 23 and 24 measured in one run on a GPU machine: tagging and training against plain PyTorch on the same
shapes, one table, and ``bench/results_gpu.json``.

It needs a machine with a CUDA GPU and torch built for it; without network access there, the bundle that
``bash bench/device/make_bundle.sh`` builds here (``.devcarry/``: the pure-Python dependencies, the encoder's
weights, the data) travels with the checkout, and there::

    bash bench/device/measure.sh              # the stages fit in --budget-s (340 s); the JSON goes to $OUT

Here, on a CPU, to know that it runs (tiny shapes, 150 rows, fp32)::

    python bench/device/measure.py --cpu-smoke --corpus ../shared/corpus/news_sentences.parquet

Stages (each in its own process where it runs the CLI; every stage has a time cap, and a stage that would not
fit in what is left of ``--budget-s`` is skipped and marked so):

1. the bf16 matrix-product peak (8192^3, CUDA events): the MFU denominator;
2. exports of the BERT and BiLSTM recipes (``train/configs/*_conll03.toml``, ``--export-steps`` steps, bf16);
3. ``ner-tag`` end to end on the news corpus, first as it is (first-batch time on the plain corpus), then written
   N times into one input (N <= 10, as many as fit in the stage's cap at the speed just measured), for both
   exports: wall time of the command from start to exit, GPU busy % (``nvidia-smi -lms 200``), the time to the
   first batch, and the time spent in each stage (``timed_ner_tag.py``: timers around the stage's functions,
   summed per thread);
4. the plain forward of the BERT export's model on 512 x 64 random pieces in bf16 (no text, no decoding):
   the limit, in words/s at the corpus's words per piece;
5. training: the GPU recipe (``train/configs/bert_gpu.toml``, real MiniLM weights, all epochs): test F1, tokens/s,
   the command's wall time; a plain PyTorch step (``BertForTokenClassification``, bf16 autocast, fused AdamW)
   of the MiniLM-L6 and BERT-large shapes at the recipe's batch, and the trainer on the BERT-large shape (random
   weights) for ``--large-steps`` steps; MFU = tokens/s x 6 x parameters / the measured peak.

The runs themselves and the table are in ``measure_runs.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_common import git_commit  # noqa: E402
from measure_runs import (Clock, input_file, metrics, peak_tflops, plain_forward, plain_step, sh,  # noqa: E402
                          table, tag, tail, train_cmd, write_encoder)

NEWS = REPO.parent / "shared" / "corpus" / "news_sentences.parquet"
CONLL = REPO.parent / "shared" / "data" / "conll03-iob-pos.json"
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_LARGE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)
GPU_RECIPE = "train/configs/bert_gpu.toml"
SMOKE_BATCHES = ["train.max_tokens=512", "train.eval_max_tokens=2048"]


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


@dataclass
class Measure:
    """One measurement: its options, where it writes, its clock and the results gathered so far."""
    args: argparse.Namespace
    work: Path
    clock: Clock
    res: dict
    data: str = ""
    encoder: list[str] = field(default_factory=list)  # the smoke run's tiny encoder as a recipe override

    @property
    def smoke(self) -> bool:
        return self.args.cpu_smoke

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"

    @property
    def precision(self) -> str:
        return "fp32" if self.smoke else "bf16"

    @property
    def logs(self) -> Path:
        return self.work / "logs"


def make_exports(m: Measure) -> dict:
    """Exports of the two recipes (speed only: a few steps) -> {recipe: export folder}; sets ``m.data`` and, in a
    smoke run, ``m.encoder`` (tiny data and encoder) for the training stages."""
    steps = 3 if m.smoke else m.args.export_steps
    m.data = m.args.data
    if m.smoke:
        from tests.tiny_models import make_tiny_data

        m.data = str(make_tiny_data(m.work / "tiny.json"))
        m.encoder = [f"model.encoder={json.dumps(str(write_encoder(m.work / 'tiny_encoder', TINY)))}"]
    exports = {}
    for recipe in ("bert", "bilstm"):
        config = f"train/configs/{recipe}_conll03.toml"
        run = m.work / f"export_{recipe}"
        small = ["model.lstm_hidden=16", "model.lstm_layers=1"] if m.smoke and recipe == "bilstm" else []
        rc, secs = sh(train_cmd(config, m.data, run, f"train.max_steps={steps}", f"train.precision={m.precision}",
                                *m.encoder, *small), m.logs / f"export_{recipe}.log", min(120, m.clock.left()))
        if rc:
            m.res["skipped"].append(f"export {recipe}: exit {rc}: {tail(m.logs / f'export_{recipe}.log')}")
            continue
        exports[recipe] = run / "export"
        print(f"measure: {recipe} export after {steps} steps in {secs:.0f} s", flush=True)
    return exports


def measure_tagging(m: Measure, exports: dict) -> None:
    """``ner-tag`` end to end with each export, on the corpus and on it written N times; the plain forward."""
    args, smoke, device = m.args, m.smoke, m.device
    one = input_file(args.corpus, 1, m.work / "news_1x.parquet", smoke)
    many = None
    for recipe, export in exports.items():
        first = tag(export, one, m.work / f"out_{recipe}_1x", m.logs, f"tag_{recipe}_1x", device, smoke,
                    min(90, m.clock.left()))
        entry = {"plain_corpus": first}
        if "error" not in first:
            if many is None:  # as many copies as the cap allows at the speed just measured
                reps = max(1, min(args.reps, int(args.tag_cap_s * first["end_to_end_words_per_s"] / first["words"])))
                many = (reps, input_file(args.corpus, reps, m.work / "news_nx.parquet", smoke))
            if m.clock.left() > args.tag_cap_s + 60:
                big = tag(export, many[1], m.work / f"out_{recipe}_nx", m.logs, f"tag_{recipe}_nx", device, smoke,
                          2 * args.tag_cap_s + 30)
                entry.update({"reps": many[0], "corpus_nx": big})
            else:
                m.res["skipped"].append(f"tag {recipe} x{many[0]}: budget")
        main_run = entry.get("corpus_nx", first)
        for k in ("end_to_end_words_per_s", "gpu_busy_mean_pct", "first_batch_s"):
            entry[k] = main_run.get(k)
        entry["first_batch_s"] = first.get("first_batch_s")
        m.res["tag"][recipe] = entry
        print(f"measure: tagged with {recipe}: {json.dumps(entry)}", flush=True)
    if "bert" in exports:
        pieces_s = plain_forward(exports["bert"], device, smoke)
        bert = m.res["tag"].get("bert", {}).get("plain_corpus", {})
        words_per_piece = bert["words"] / bert["pieces"] if bert.get("pieces") else None
        m.res["tag"]["plain_forward_pieces_per_s"] = round(pieces_s)
        m.res["tag"]["plain_forward_words_per_s"] = round(pieces_s * words_per_piece) if words_per_piece else None


def train_gpu_recipe(m: Measure) -> dict:
    """The GPU recipe with real weights, all its epochs (3 steps in a smoke run)."""
    run = m.work / "gpu_recipe"
    over = [f"train.max_steps={3 if m.smoke else 0}", f"train.precision={m.precision}", *m.encoder]
    if m.smoke:
        over += SMOKE_BATCHES
    rc, secs = sh(train_cmd(GPU_RECIPE, m.data, run, *over), m.logs / "gpu_recipe.log",
                  min(150, m.clock.left() - 60))
    if rc:
        m.res["skipped"].append(f"gpu recipe: exit {rc}: {tail(m.logs / 'gpu_recipe.log')}")
        return {}
    r = metrics(run)
    return {"tokens_per_s": round(r["train_tokens_per_s"]), "test_f1": round(100 * r["test"]["f1"], 2),
            "valid_f1": round(100 * r["valid"]["f1"], 2),
            "test_f1_sentences": round(100 * r["test"].get("sentences_alone", r["test"])["f1"], 2),
            "command_s": round(secs, 1), "train_s": round(r["train_wall_s"], 1), "steps": r["steps"]}


def train_large(m: Measure, recipe_tokens: int, peak: float) -> dict:
    """The BERT-large shape: the plain step and the trainer on random weights, with their MFU."""
    plain, params = plain_step(TINY_LARGE if m.smoke else LARGE, recipe_tokens, m.device, m.smoke)
    large = {"plain_step_tokens_per_s": round(plain), "parameters": params,
             "plain_step_mfu": round(plain * 6 * params / (peak * 1e12), 4)}
    enc = write_encoder(m.work / "large_encoder", TINY_LARGE if m.smoke else LARGE)
    run = m.work / "large"
    rc, secs = sh(train_cmd(GPU_RECIPE, m.data, run, f"model.encoder={json.dumps(str(enc))}",
                            f"train.max_steps={3 if m.smoke else m.args.large_steps}",
                            f"train.precision={m.precision}", *(SMOKE_BATCHES if m.smoke else [])),
                  m.logs / "large.log", max(30, m.clock.left() - 5))
    if rc:
        m.res["skipped"].append(f"large trainer: exit {rc}: {tail(m.logs / 'large.log')}")
    else:
        r = metrics(run)
        large.update({"tokens_per_s": round(r["train_tokens_per_s"]), "trainer_parameters": r["num_parameters"],
                      "mfu": round(r["train_tokens_per_s"] * 6 * r["num_parameters"] / (peak * 1e12), 4)})
    return large


def measure_training(m: Measure, peak: float) -> None:
    """The GPU recipe and the plain step at its batch; the BERT-large shape if time is left; BiLSTM / BERT."""
    gpu_recipe = train_gpu_recipe(m)
    from train.config import load_config

    recipe_tokens = 512 if m.smoke else load_config(str(REPO / GPU_RECIPE)).train.max_tokens
    plain, _ = plain_step(TINY if m.smoke else MINILM, recipe_tokens, m.device, m.smoke)
    gpu_recipe["plain_step_tokens_per_s"] = round(plain)
    m.res["train"]["gpu_recipe"] = gpu_recipe
    large: dict = {}
    if m.clock.left() > 60:
        large = train_large(m, recipe_tokens, peak)
    else:
        m.res["skipped"].append("large: budget")
    m.res["train"]["large"] = large
    bert_tag, bilstm_tag = (m.res["tag"].get(k, {}).get("end_to_end_words_per_s") for k in ("bert", "bilstm"))
    m.res["train"]["bilstm"] = {"test_f1": None, "tag_words_per_s_vs_bert": round(bilstm_tag / bert_tag, 2)
                                if bert_tag and bilstm_tag else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    smoke = args.cpu_smoke
    args.reps = args.reps or (2 if smoke else 10)
    if not smoke and not torch.cuda.is_available():
        sys.exit("measure: no GPU here; use --cpu-smoke")
    clock = Clock(args.budget_s)
    work = Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (work / "results_gpu.json" if smoke
                                                   else REPO / "bench" / "results_gpu.json")
    name = "CPU (smoke run, tiny shapes)" if smoke else torch.cuda.get_device_name(0)
    res = {"commit": git_commit(REPO), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "device": f"{name}; torch {torch.__version__}; {os.cpu_count()} CPUs", "skipped": [],
        "tag": {}, "train": {}}
    m = Measure(args, work, clock, res)
    peak = peak_tflops(torch, m.device)
    res["peak_tflops"] = round(peak, 3)
    print(f"measure: {res['device']}; matrix-product peak {peak:,.1f} TFLOP/s", flush=True)
    measure_tagging(m, make_exports(m))
    measure_training(m, peak)
    res["total_s"] = round(time.time() - clock.t0, 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"measure: results in {json_path}; logs in {m.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
