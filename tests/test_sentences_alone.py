"""Scoring both ways: with the documents' context (as trained) and with every sentence alone (as ner-tag meets a
corpus of one sentence a row): metrics.json and ner-evaluate report both, computed the same way."""

from __future__ import annotations

import json

import pytest

from common.data import Sentence, assign_documents, load_folds, sentences_alone, some_alone
from taggers.export import load_tagger


def test_sentences_alone_drops_documents_and_keeps_the_originals():
    docs = [Sentence(["A", "b"], ["B-PER", "O"], doc=3, index=0), Sentence(["c"], ["O"], doc=3, index=1)]
    alone = sentences_alone(docs)
    assert [s.doc for s in alone] == [None, None] and [s.doc for s in docs] == [3, 3]
    assert [(s.tokens, s.tags, s.index) for s in alone] == [(s.tokens, s.tags, s.index) for s in docs]


def test_metrics_and_evaluate_score_both_ways(tiny_exports, tiny_data_json, capsys):
    import torch

    from train.evaluate import main as evaluate, score

    run = tiny_exports["bert_extras"]  # trained with 8 pieces of document context
    metrics = json.loads((run / "metrics.json").read_text())
    for fold in ("valid", "test"):
        assert set(metrics[fold]["sentences_alone"]) == {"precision", "recall", "f1", "strict_f1"}

    model, windower = load_tagger(str(run / "export"))
    test = assign_documents(load_folds(str(tiny_data_json))["test"])
    with_docs, alone = windower.windows(test), windower.windows(sentences_alone(test))
    context = sum(sum(1 for w in win.word_index if w < 0) for win in with_docs)
    no_context = sum(sum(1 for w in win.word_index if w < 0) for win in alone)
    assert context > no_context  # the two ways give the model different inputs

    def f1(windows, precision):
        return score(model, windows, test, windower.labels, torch.device("cpu"), precision, 16384,
                     windower.pad_id)[0]["f1"]

    # the trainer's numbers are the export scored on these windows, in the run's precision
    assert metrics["test"]["f1"] == pytest.approx(f1(with_docs, metrics["precision"]))
    assert metrics["test"]["sentences_alone"]["f1"] == pytest.approx(f1(alone, metrics["precision"]))
    # ner-evaluate (fp32 by default) reports both ways
    assert evaluate(["--model", str(run / "export"), "--data", str(tiny_data_json), "--fold", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["f1"] == pytest.approx(f1(with_docs, "fp32"))
    assert out["sentences_alone"]["f1"] == pytest.approx(f1(alone, "fp32"))


def test_some_alone_draws_a_share_once_by_seed():
    docs = [Sentence(["w"], ["O"], doc=i // 10, index=i) for i in range(1000)]
    assert [s.doc for s in some_alone(docs, 0.0, 1)] == [s.doc for s in docs]
    assert all(s.doc is None for s in some_alone(docs, 1.0, 1))
    half = some_alone(docs, 0.5, 7)
    alone = [s.index for s in half if s.doc is None]
    assert 400 < len(alone) < 600 and alone == [s.index for s in some_alone(docs, 0.5, 7) if s.doc is None]
    assert alone != [s.index for s in some_alone(docs, 0.5, 8) if s.doc is None]
    assert all(s.doc == s.index // 10 for s in half if s.doc is not None) and docs[0].doc == 0


def test_alone_fraction_trains_on_single_sentence_windows(tmp_path, tiny_bert_dir, tiny_data_json):
    from tests.tiny_models import tiny_train_args
    from train.__main__ import main

    runs = {}
    for frac in (0.0, 1.0):
        out = tmp_path / f"f{frac}"
        assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "model.pack_pieces=64",
                                    f"data.alone_fraction={frac}", "train.epochs=1")) == 0
        runs[frac] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # packing puts several sentences in a window: all alone means more, shorter windows and more steps
    steps = {frac: max(r.get("step", 0) for r in rows) for frac, rows in runs.items()}
    assert steps[1.0] > steps[0.0]
    assert main(["--data", str(tiny_data_json), "data.alone_fraction=1.5"]) == 2
