"""Scoring an export in several precisions side by side (train.evaluate), and the span agreement behind it."""

from __future__ import annotations

import json

import pytest

from common.metrics import span_agreement
from train.evaluate import main


def test_span_agreement_known_answer():
    a = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"], ["B-ORG"]]
    b = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "O"], ["B-ORG"]]
    # spans: a {PER, LOC, ORG}, b {PER, ORG@3, ORG}: 2 shared of 4 distinct; sentences 2 and 3 identical
    assert span_agreement(a, b) == {"identical_spans": 2 / 4, "identical_sentences": 2 / 3}
    assert span_agreement([["O"]], [["O"]]) == {"identical_spans": 1.0, "identical_sentences": 1.0}
    with pytest.raises(ValueError):
        span_agreement([["O"]], [])


@pytest.mark.parametrize("kind", ["bilstm", "bert_extras"])
def test_evaluate_in_fp32_and_bf16_side_by_side(tiny_exports, tiny_data_json, capsys, kind):
    export = str(tiny_exports[kind] / "export")
    assert main(["--model", export, "--data", str(tiny_data_json), "--device", "cpu"]) == 0
    fp32_alone = json.loads(capsys.readouterr().out)
    assert main(["--model", export, "--data", str(tiny_data_json), "--device", "cpu",
                 "--precision", "fp32,bf16"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both) == {"fp32", "bf16", "agreement"}
    assert both["fp32"]["f1"] == fp32_alone["f1"]  # the fp32 run is not touched by the bf16 one
    agreement = both["agreement"]["fp32 vs bf16"]
    assert 0.0 <= agreement["identical_spans"] <= 1.0 and 0.0 <= agreement["identical_sentences"] <= 1.0
    assert both["bf16"]["num_sentences"] == both["fp32"]["num_sentences"] == 40


def test_unknown_precision_is_one_line(tiny_data_json, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "x", "--data", str(tiny_data_json), "--precision", "fp32,fp8"])
    assert "fp8" in capsys.readouterr().err
