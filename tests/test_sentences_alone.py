"""Scoring both ways: with the documents' context (as trained) and with every sentence alone (as ner-tag meets a
corpus of one sentence a row): metrics.json and ner-evaluate report both, computed the same way."""

from __future__ import annotations

import json

import pytest

from common.data import Sentence, assign_documents, load_folds, sentences_alone
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
