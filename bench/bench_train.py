"""Train the committed recipes and the Hugging Face `run_ner.py` baseline side by side, on one machine.

    pip install -e ".[bench]"          # accelerate, for the HF Trainer baseline
    python bench/bench_train.py --data ../shared/data/conll03-iob-pos.json --out bench/runs \\
        [--which hf,bert,bilstm] [--threads 2]

* ``hf``: the `run_ner.py` recipe with the same encoder (the offline MiniLM-L6 by default): first-piece
  labels, AdamW lr 5e-5, batch 32, 3 epochs, weight decay 0.01, length-grouped sampling, linear decay,
  scored at the end with seqeval on words (first piece), valid and test.
* ``bert`` / ``bilstm``: `python -m train` with `train/configs/{bert,bilstm}_conll03.toml`, with the test
  fold also scored at every evaluation (`train.eval_test=true`, watched only) so that the time to reach
  the baseline's test F1 can be read off the log.
* ``bert@model.use_crf=true@...``: a recipe with overrides (ablations of one lever at a time); its run
  folder is OUT/<recipe>@<overrides>.

Prints one table (entity F1 valid/test, per type, training wall time, tokens/s, words/s, time to reach the
HF test F1) and writes it as JSON to OUT/bench_train.json.  Run it alone on the machine: timings are wall
time on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HF_EPOCHS = 3  # run_ner.py's default
sys.path.insert(0, str(REPO))


def hf_baseline(data_path: str, encoder: str, out: str, threads: int) -> dict:
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from common.data import load_folds
    from common.labels import label_list
    from common.metrics import score_words

    torch.set_num_threads(threads)
    folds = load_folds(data_path)
    labels = label_list(folds["train"])
    label_to_id = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(encoder)

    def encode(sentences):
        enc = tok([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=512)
        rows = []
        for i, s in enumerate(sentences):
            prev, lab = None, []
            for w in enc.word_ids(i):
                lab.append(-100 if w is None or w == prev else label_to_id[s.tags[w]])
                prev = w
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": lab})
        return rows

    data = {k: encode(v) for k, v in folds.items()}
    model = AutoModelForTokenClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_to_id)
    args = TrainingArguments(output_dir=out, learning_rate=5e-5, per_device_train_batch_size=32,
                             per_device_eval_batch_size=64, num_train_epochs=HF_EPOCHS, weight_decay=0.01,
                             train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no", logging_steps=50,
                             report_to=[], seed=42, use_cpu=not torch.cuda.is_available(),
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                      data_collator=DataCollatorForTokenClassification(tok))
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    result = {"name": "hf run_ner recipe", "train_wall_s": wall,
              "num_parameters": sum(p.numel() for p in model.parameters())}
    n_tokens = sum(len(r["input_ids"]) for r in data["train"]) * HF_EPOCHS
    result["train_tokens_per_s"] = n_tokens / wall
    result["epochs"] = HF_EPOCHS
    model.eval()
    for fold in ("valid", "test"):
        words = []
        with torch.no_grad():
            for b in range(0, len(data[fold]), 64):
                rows = data[fold][b:b + 64]
                batch = tok.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows],
                                return_tensors="pt")
                ids = model(**batch).logits.argmax(-1)
                for r, row_ids in zip(rows, ids.tolist()):  # first piece of each word, as run_ner scores
                    words.append([labels[p] for p, l in zip(row_ids, r["labels"]) if l != -100])
        result[fold] = score_words([s.tags for s in folds[fold]], words)
    return result


def ours(which: str, data_path: str, out: str, threads: int) -> dict:
    recipe, *overrides = which.split("@")
    cmd = [sys.executable, "-m", "train", "--config", str(REPO / "train" / "configs" / f"{recipe}_conll03.toml"),
           "--data", data_path, "--output-dir", out, "--overwrite", "train.eval_test=true", f"train.num_threads={threads}",
           "train.progress=false", *overrides]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(os.path.join(out, "metrics.json")) as f:
        result = json.load(f)
    result["name"] = f"ner-taggers {which}"
    result["epochs"] = gold_epochs(out)
    with open(os.path.join(out, "train_log.jsonl")) as f:
        result["evals"] = [r for r in map(json.loads, f) if r["event"] == "eval"]
    return result


def gold_epochs(run_dir: str) -> int | None:
    """A run's whole epochs over the gold training fold alone, from its resolved config; None for a run cut
    by ``train.max_steps`` or taught extra rows (``data.teacher``), whose words are not those epochs'."""
    with open(os.path.join(run_dir, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    return None if cfg["train"].get("max_steps") or cfg["data"].get("teacher") else cfg["train"]["epochs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "conll03-iob-pos.json"))
    p.add_argument("--out", default="bench/runs")
    p.add_argument("--which", default="hf,bert,bilstm")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--encoder", default="")
    p.add_argument("--table-only", action="store_true",
                   help="print the table of the runs already in OUT/bench_train.json, training nothing")
    args = p.parse_args()
    if args.table_only:
        with open(os.path.join(args.out, "bench_train.json")) as f:
            results = json.load(f)
        for which, r in results.items():  # a table written before the words/s column
            if "epochs" not in r:
                r["epochs"] = HF_EPOCHS if which == "hf" else gold_epochs(os.path.join(args.out, which))
        print_table(results, args, f"table of {os.path.join(args.out, 'bench_train.json')}")
        return
    from train.config import resolve_encoder

    encoder = resolve_encoder(args.encoder)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for which in args.which.split(","):
        t0 = time.perf_counter()
        if which == "hf":
            results[which] = hf_baseline(args.data, encoder, os.path.join(args.out, "hf"), args.threads)
        else:
            results[which] = ours(which, args.data, os.path.join(args.out, which), args.threads)
        results[which]["process_wall_s"] = time.perf_counter() - t0
        with open(os.path.join(args.out, "bench_train.json"), "w") as f:
            json.dump(results, f, indent=1)
    print_table(results, args, time.strftime('%Y-%m-%dT%H:%M:%S'))


def print_table(results: dict, args, when: str) -> None:
    from common.data import load_folds

    # words/s: the training fold's words times the epochs over the training seconds, the same count for any
    # windowing (tokens/s also counts each window's special tokens, which packing shares between sentences)
    train_words = sum(len(s.tokens) for s in load_folds(args.data)["train"])
    hf_test = results.get("hf", {}).get("test", {}).get("f1")
    print(f"\n# bench_train  {when}  threads {args.threads}  cpus {os.cpu_count()}")
    print(f"{'run':44s} {'valid F1':>8s} {'test F1':>8s} {'alone':>6s} {'strict':>7s}  {'PER':>5s} {'ORG':>5s} {'LOC':>5s} "
          f"{'MISC':>5s}  {'train s':>8s} {'tok/s':>7s} {'words/s':>7s}  {'to HF test F1':>13s}")
    for which, r in results.items():
        per = r["test"]["per_type"]
        reach = "-"
        if hf_test is not None and "evals" in r:
            hit = [e for e in r["evals"] if e.get("test_f1", 0) >= hf_test]
            reach = f"{hit[0]['elapsed_s']:.0f} s" if hit else "never"
        words_per_s = f"{train_words * r['epochs'] / r['train_wall_s']:7.0f}" if r.get("epochs") else "      -"
        alone = r["test"].get("sentences_alone", {}).get("f1")  # test F1 with no document context
        alone = f"{100 * alone:6.2f}" if alone is not None else "     -"
        print(f"{r['name']:44s} {100 * r['valid']['f1']:8.2f} {100 * r['test']['f1']:8.2f} {alone} "
              f"{100 * r['test']['strict']['f1']:7.2f}  "
              + " ".join(f"{100 * per[t]['f1']:5.1f}" if t in per else "    -" for t in ("PER", "ORG", "LOC", "MISC"))
              + f"  {r['train_wall_s']:8.0f} {r['train_tokens_per_s']:7.0f} {words_per_s}  {reach:>13s}")
        for e in r.get("evals", []):
            print(f"    step {e['step']:5d}  {e['elapsed_s']:6.0f} s  valid F1 {100 * e['f1']:.2f}  "
                  f"test F1 {100 * e.get('test_f1', float('nan')):.2f}")


if __name__ == "__main__":
    main()
