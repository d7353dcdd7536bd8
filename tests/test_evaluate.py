"""``python -m train.evaluate`` flags through the real entry point, on the tiny exports."""

from __future__ import annotations

import json

import pytest

from train.evaluate import main


@pytest.mark.parametrize("kind", ["bert_extras", "bilstm"])
def test_max_tokens_changes_the_batches_not_the_scores(kind, tiny_exports, tiny_data_json, capsys):
    """--max-tokens 8: batches of at most 8 padded pieces, a window or two each; the default: the whole fold in
    one batch."""
    export = str(tiny_exports[kind] / "export")
    assert main(["--model", export, "--data", str(tiny_data_json), "--device", "cpu"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(["--model", export, "--data", str(tiny_data_json), "--device", "cpu", "--max-tokens", "8"]) == 0
    one_window_a_batch = json.loads(capsys.readouterr().out)
    assert default["num_sentences"] == 40 and default["support"] > 0
    assert one_window_a_batch == default
