"""Training options seen at work through the real entry point, a few steps of a tiny BiLSTM: test-fold scores at
every evaluation, early stopping, torch's thread count, and a run folder saved with options removed since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny_models import tiny_train_args
from train import trainer
from train.__main__ import main
from train.config import REMOVED_OPTIONS

BILSTM = ('model.type="bilstm"', "model.lstm_hidden=16", "model.lstm_layers=1", "train.max_tokens=256")


def _log(run: Path, event: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def test_eval_test_logs_the_test_f1_of_each_evaluated_model(tmp_path, tiny_bert_dir, tiny_data_json):
    """Every eval row carries test_f1; at the best step it is the test F1 that the best export scores at the
    end (model selection still looks at valid only)."""
    out = tmp_path / "run"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.max_steps=4",
                                "train.eval_every=2", "train.eval_test=true", 'train.precision="fp32"')) == 0
    evals = _log(out, "eval")
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["test_f1"] <= 1.0 for r in evals)
    metrics = json.loads((out / "metrics.json").read_text())
    best = next(r for r in evals if r["step"] == metrics["best_step"])
    assert best["test_f1"] == pytest.approx(metrics["test"]["f1"])

    plain = tmp_path / "plain"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, plain, *BILSTM, "train.max_steps=2")) == 0
    assert "test_f1" not in _log(plain, "eval")[0]


def test_patience_stops_after_evaluations_without_improvement(tmp_path, tiny_bert_dir, tiny_data_json, caplog):
    """A learning rate too small to change a float32 weight: the first evaluation is the best, the second does
    not improve, and with patience 1 training stops there, long before its planned steps."""
    out = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.epochs=0", "train.max_steps=8",
                           "train.eval_every=1", "train.patience=1", "optim.lr=1e-30", "optim.head_lr=1e-30")
    with caplog.at_level("INFO", logger="train"):
        assert main(args) == 0
    evals = _log(out, "eval")
    assert [(r["step"], r["best"]) for r in evals] == [(1, True), (2, False)]
    assert evals[0]["f1"] == evals[1]["f1"]
    assert [r["step"] for r in _log(out, "step")] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["best_step"] == 1
    assert "early stopping after 1 evaluations without improvement" in caplog.text


def test_num_threads_sets_torch_threads_in_training(tmp_path, tiny_bert_dir, tiny_data_json, monkeypatch):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2  # unlike the test process's own count, so that the option shows
    seen = []
    train_step = trainer.Trainer.train_step

    def recording(self, idx, last_micro_step):
        seen.append(torch.get_num_threads())
        return train_step(self, idx, last_micro_step)

    monkeypatch.setattr(trainer.Trainer, "train_step", recording)
    try:
        assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "run", *BILSTM, "train.max_steps=2",
                                    f"train.num_threads={wanted}")) == 0
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {wanted}


def test_a_run_saved_with_removed_options_still_resumes(tmp_path, tiny_bert_dir, tiny_data_json):
    """A config.toml written before options were removed holds them: ``--resume`` reads it, skipping them."""
    out = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.max_steps=2")
    assert main(args) == 0
    saved = (out / "config.toml").read_text()
    for name in REMOVED_OPTIONS:
        section, _, key = name.partition(".")
        assert f"[{section}]\n" in saved
        saved = saved.replace(f"[{section}]\n", f"[{section}]\n{key} = true\n", 1)
    (out / "config.toml").write_text(saved)
    (out / "metrics.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
