"""The training speed levers: torch AdamW's fused kernel and the encoder's attention in training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from taggers.precision import training_attention
from tests.tiny_models import tiny_train_args
from train.__main__ import main
from train.config import OptimConfig
from train.optim import build_optimizer


def test_training_attention_known_answers():
    assert training_attention("auto") == "eager"
    assert training_attention("sdpa") == "sdpa"
    assert training_attention("eager") == "eager"
    with pytest.raises(ValueError, match="attention must be one of"):
        training_attention("flash")


class _TwoGroups(nn.Module):
    """The smallest model with the taggers' parameter_groups: an 'encoder' with a norm and a 'head'."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.encoder(x))

    def parameter_groups(self):
        return {"encoder": list(self.encoder.parameters()), "head": list(self.head.parameters())}


def _train(fused: bool, steps: int = 8) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = _TwoGroups()
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=1e-2, head_lr=1e-1, weight_decay=0.1, fused=fused),
                                           total_steps=steps)
    assert optimizer.defaults["fused"] is (True if fused else None)
    data = torch.randn(steps, 4, 6)
    for x in data:
        model(x).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_fused_adamw_takes_the_same_steps_as_the_multi_tensor_one():
    torch.manual_seed(0)
    start = [p.detach().clone() for p in _TwoGroups().parameters()]
    fused, multi_tensor = _train(True), _train(False)
    for a, b, s in zip(fused, multi_tensor, start):
        assert not torch.equal(a, s)  # it trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("requested, used", [("auto", "eager"), ("sdpa", "sdpa")])
def test_training_run_uses_the_requested_attention(tmp_path, tiny_bert_dir, tiny_data_json, requested, used):
    out = tmp_path / requested
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "train.max_steps=2",
                                f'train.attention="{requested}"')) == 0
    assert json.loads((out / "metrics.json").read_text())["attention"] == used


def test_unknown_attention_is_one_line(tmp_path, tiny_bert_dir, tiny_data_json, capsys):
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "x", 'train.attention="flash"')) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ner-train: error: train.attention must be auto, eager, sdpa, got 'flash'"]
