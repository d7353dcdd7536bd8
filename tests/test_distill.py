"""Distillation: a teacher export's word probabilities (``ner-tag --word-probs``) teach a student through the
model's own loss, in the one training loop (data.teacher)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from common.batching import collate_windows
from common.data import DataError, Sentence
from common.encoding import IGNORE_INDEX, PieceWindower
from common.spans import tags_to_spans
from common.tagdir import SUMMARY_FILE
from common.teacher import load_teacher
from tests.reference_words import split_words
from taggers.export import load_tagger
from tests.tiny_models import tiny_train_args
from train.__main__ import main

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
STUDENT = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "train.epochs=3",
           "train.checkpoint_every=1", "train.log_every=1", 'train.precision="fp32"')


def _env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def _corpus(tmp_path: Path, data_json: Path) -> tuple[Path, list[str]]:
    """Unlabelled raw text: the tiny data's training sentences joined by spaces."""
    texts = [" ".join(s["tokens"]) for s in json.loads(data_json.read_text())["train"]] + ["", "   "]
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return path, texts


@pytest.fixture(scope="module")
def teacher_output(tmp_path_factory, tiny_exports, tiny_data_json):
    tmp = tmp_path_factory.mktemp("teacher")
    corpus, texts = _corpus(tmp, tiny_data_json)
    out = tmp / "taught"
    cmd = [sys.executable, "-m", "infer", "--model", str(tiny_exports["bert"] / "export"), "--input", str(corpus),
           "--output", str(out), "--word-probs", "--no-progress", "--threads", "1", "--rows-per-part", "50"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, texts


def test_word_probs_output(teacher_output, tiny_exports):
    """Every row's words are the tagger's words of its text; each word's probabilities sum to 1, and their
    argmax (the bert export decodes by argmax) gives exactly the entities written beside them."""
    out, texts = teacher_output
    table = pq.read_table(out)
    labels = json.loads(table.schema.metadata[b"ner_teacher_labels"])
    assert labels == load_tagger(str(tiny_exports["bert"] / "export"))[1].labels
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == list(range(len(texts)))
    for text, row in zip(texts, rows):
        words, starts, ends = split_words(text)
        assert row["words"] == words
        probs = np.array(row["word_probs"], dtype=np.float32).reshape(len(words), len(labels))
        assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
        tags = [labels[i] for i in probs.argmax(1)]
        expected = [(starts[a], ends[b - 1], t) for a, b, t in tags_to_spans(tags)]
        assert [(e["start"], e["end"], e["label"]) for e in row["entities"]] == expected


def test_load_teacher_reorders_labels_and_skips_empty_rows(teacher_output):
    out, texts = teacher_output
    table = pq.read_table(out)
    teacher_labels = json.loads(table.schema.metadata[b"ner_teacher_labels"])
    mine = list(reversed(teacher_labels))
    sentences = load_teacher(str(out), mine)
    assert len(sentences) == len(texts) - 2  # the empty and the blank row have no words
    first = table.slice(0, 1).to_pylist()[0]
    probs = np.array(first["word_probs"], dtype=np.float32)
    assert sentences[0].tokens == first["words"] and sentences[0].tags is None
    assert np.allclose(sentences[0].extra["soft"].astype(np.float32), probs[:, ::-1], atol=1e-3)
    assert len(load_teacher(str(out), mine, max_rows=3)) == 3


def test_teacher_max_rows_trains_on_the_first_rows_only(teacher_output, tiny_bert_dir, tiny_data_json, tmp_path,
                                                         monkeypatch):
    """data.teacher_max_rows=3 in a training run: the teacher output's first three rows join the training fold,
    each with its words and probabilities, and no other row does."""
    from train import trainer

    out, _ = teacher_output
    taught = []
    encode_windows = trainer.encode_windows

    def recording(cfg, windower, data):
        taught.extend(data.taught)
        return encode_windows(cfg, windower, data)

    monkeypatch.setattr(trainer, "encode_windows", recording)
    args = (*STUDENT, f"data.teacher={json.dumps(str(out))}", "data.teacher_max_rows=3", "data.max_sentences=20",
            "train.max_steps=1")
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "run", *args)) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) > 3
    assert [s.tokens for s in taught] == [r["words"] for r in rows[:3]]
    assert [len(s.extra["soft"]) for s in taught] == [len(r["words"]) for r in rows[:3]]


def test_load_teacher_errors_are_one_line(teacher_output, tmp_path):
    out, _ = teacher_output
    labels = json.loads(pq.read_table(out).schema.metadata[b"ner_teacher_labels"])
    with pytest.raises(DataError, match=r"the teacher's labels .* are not the training labels"):
        load_teacher(str(out), labels[:-1])
    with pytest.raises(DataError, match=f"no {SUMMARY_FILE}"):
        load_teacher(str(tmp_path), labels)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    half = tmp_path / "half"
    half.mkdir()
    (half / SUMMARY_FILE).write_text(json.dumps({**summary, "total": {**summary["total"], "complete": False,
                                                                       "parts_done": 1}}))
    with pytest.raises(DataError, match="incomplete teacher output .*run the same ner-tag command again"):
        load_teacher(str(half), labels)


def test_teacher_probabilities_on_pieces(tokenizer):
    """First pieces get the word's distribution; continuation pieces the same with B-X's mass on I-X; special
    tokens and labelled sentences get none; collated as zeros where a piece is not taught."""
    windower = PieceWindower(tokenizer, LABELS)
    soft = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.7, 0.0, 0.0, 0.3, 0.0]], dtype=np.float16)
    taught = Sentence(["Blackburnshire", "went"], None, None, 0, {"soft": soft})
    gold = Sentence(["Peter", "went"], ["B-PER", "O"], None, 1)
    w_taught, w_gold = windower.windows([taught, gold])
    pieces = len(tokenizer("Blackburnshire", add_special_tokens=False)["input_ids"])
    assert pieces > 1 and w_gold.soft is None
    assert set(w_taught.labels) == {IGNORE_INDEX}
    got = w_taught.soft.astype(np.float32)
    assert not got[0].any() and not got[-1].any()  # [CLS], [SEP]
    assert np.allclose(got[1], soft[0], atol=1e-3)
    for k in range(2, 1 + pieces):  # continuation: each B-X moves to I-X (B-PER 0.6, B-LOC 0.1)
        assert np.allclose(got[k], [0.1, 0.0, 0.7, 0.0, 0.2], atol=1e-3)
    assert np.allclose(got[1 + pieces], soft[1], atol=1e-3)
    batch = collate_windows([w_gold, w_taught], windower.pad_id)
    assert batch["soft_labels"].shape == (2, max(len(w_gold), len(w_taught)), len(LABELS))
    assert not batch["soft_labels"][0].any()


def test_loss_known_answer():
    """Mean per trained piece over gold pieces (cross-entropy) and taught pieces (cross-entropy against the
    teacher's probabilities); gold alone is the plain cross-entropy, bit for bit."""
    from taggers.models import BiLSTMTagger

    model = BiLSTMTagger(LABELS, vocab_size=10, embedding_dim=4, lstm_hidden=4, lstm_layers=1, use_casing=False,
                         dropout=0.0)
    logits = torch.randn(2, 3, len(LABELS))
    labels = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX] * 3])
    soft = torch.zeros(2, 3, len(LABELS))
    soft[1, 1] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])
    log_p = logits.log_softmax(-1)
    gold_sum = -(log_p[0, 1, 1] + log_p[0, 2, 2])
    taught_sum = -(0.5 * log_p[1, 1, 0] + 0.5 * log_p[1, 1, 1])
    assert torch.allclose(model.loss(logits, {"labels": labels, "soft_labels": soft}), (gold_sum + taught_sum) / 3)
    assert torch.equal(model.loss(logits, {"labels": labels}), torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX))
    only_taught = model.loss(logits, {"labels": torch.full((2, 3), IGNORE_INDEX), "soft_labels": soft})
    assert torch.allclose(only_taught, taught_sum)
    assert model.loss(logits, {"labels": torch.full((2, 3), IGNORE_INDEX)}) is None


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if r["event"] == "step"]


@pytest.mark.slow
def test_student_learns_from_teacher_kill_and_resume(tmp_path, teacher_output, tiny_bert_dir, tiny_data_json):
    """A BiLSTM student trained on 20 gold sentences plus the teacher's rows: its loss goes down, the taught
    windows are trained, and a run killed mid-way and resumed ends where the uninterrupted one does."""
    out, _ = teacher_output
    args = (*STUDENT, f"data.teacher={json.dumps(str(out))}", "data.max_sentences=20")
    full = tmp_path / "full"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, full, *args)) == 0
    losses = [r["loss"] for r in _steps(full)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["valid"]["num_sentences"] == 20
    # the training batches held the taught windows: more steps than the 20 gold sentences alone give
    plain = tmp_path / "plain"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, plain, *STUDENT, "data.max_sentences=20")) == 0
    assert metrics["steps"] > json.loads((plain / "metrics.json").read_text())["steps"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "train", *tiny_train_args(tiny_data_json, tiny_bert_dir, killed,
                                                                              *args)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and int(latest.read_text().strip()[5:].split("-")[0]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.wait()
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, killed, *args) + ["--resume"]) == 0
    steps = [r["step"] for r in _steps(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == metrics["steps"]
    wa, wb = load_file(full / "export" / "model.safetensors"), load_file(killed / "export" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
