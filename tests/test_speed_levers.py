"""The training speed levers: torch AdamW's fused kernel, the encoder's attention, cheap dropout masks, frozen
word-piece embeddings and where the BiLSTM's embedding starts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from taggers.dropout import FAST_EAGER, FastDropout, fast_dropout, training_dropout, use_fast_dropout
from taggers.models import WEIGHTS
from taggers.precision import training_attention
from tests.tiny_models import tiny_train_args
from train.__main__ import main
from train.config import OptimConfig
from train.optim import build_optimizer, fused_supported


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


def _train(steps: int = 8) -> tuple[bool | None, list[torch.Tensor]]:
    """AdamW's ``fused`` setting as built, and the parameters after ``steps`` steps."""
    torch.manual_seed(0)
    model = _TwoGroups()
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=1e-2, head_lr=1e-1, weight_decay=0.1),
                                           total_steps=steps)
    data = torch.randn(steps, 4, 6)
    for x in data:
        model(x).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer.defaults["fused"], [p.detach().clone() for p in model.parameters()]


def test_adamw_is_fused_where_torch_has_the_kernel_and_takes_the_same_steps_without_it(monkeypatch):
    import torch.utils._foreach_utils as foreach_utils

    torch.manual_seed(0)
    start = [p.detach().clone() for p in _TwoGroups().parameters()]
    fused, fused_params = _train()
    assert fused is True  # torch has a fused AdamW for CPU parameters
    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    default, default_params = _train()  # as on a device without the kernel: torch's default implementation
    assert default is None
    for a, b, s in zip(fused_params, default_params, start):
        assert not torch.equal(a, s)  # it trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_kernel_needs_floating_point_parameters():
    assert fused_supported([torch.zeros(3), torch.zeros(2, 2, dtype=torch.bfloat16)])
    assert not fused_supported([torch.zeros(3), torch.zeros(3, dtype=torch.long)])


@pytest.mark.parametrize("option, requested, used", [("attention", "auto", "eager"), ("attention", "sdpa", "sdpa"),
                                                      ("dropout_kernel", "auto", "fast"),
                                                      ("dropout_kernel", "torch", "torch")])
def test_training_run_uses_the_requested_kernels(tmp_path, tiny_bert_dir, tiny_data_json, option, requested, used):
    out = tmp_path / requested
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "train.max_steps=2",
                                f'train.{option}="{requested}"')) == 0
    assert json.loads((out / "metrics.json").read_text())[option] == used
    assert FAST_EAGER not in (out / "export" / "config.json").read_text()  # the export loads anywhere


@pytest.mark.parametrize("option, allowed", [("attention", "auto, eager, sdpa"),
                                             ("dropout_kernel", "auto, torch, fast")])
def test_an_unknown_kernel_is_one_line(tmp_path, tiny_bert_dir, tiny_data_json, capsys, option, allowed):
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "x", f'train.{option}="flash"')) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ner-train: error: train.{option} must be one of {allowed}, got 'flash'"]


def test_fast_dropout_known_answers():
    x = torch.ones(1_000_003)  # not a multiple of four: the last 64-bit draw is only partly used
    assert fast_dropout(x, 0.0) is x and fast_dropout(x, 0.3, training=False) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(0)
    y = fast_dropout(x, 0.3)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert abs((y == 0).float().mean().item() - 0.3) < 0.002  # 1M draws: the standard error is 0.0005
    assert abs(y.mean().item() - 1.0) < 0.005  # the kept elements are scaled up: the expectation is kept
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.3), y)  # seeded: training stays deterministic


def test_fast_dropout_gradient_is_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    y = fast_dropout(x, 0.25)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75)


def test_training_dropout_known_answers():
    assert training_dropout("auto", torch.device("cpu")) == "fast"
    assert training_dropout("auto", torch.device("cuda")) == "torch"
    assert training_dropout("torch", torch.device("cpu")) == "torch"
    assert training_dropout("fast", torch.device("cuda")) == "fast"
    with pytest.raises(ValueError, match="dropout kernel must be one of"):
        training_dropout("philox", torch.device("cpu"))


def test_use_fast_dropout_swaps_every_dropout_and_leaves_eval_outputs_alone(tiny_bert_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    model = nn.Sequential(encoder.embeddings, nn.Dropout(0.2))
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, 6:] = mask[2, 9:] = 0  # padding: the attention masks must reach the new implementation too
    before = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    n_dropouts = sum(type(m) is nn.Dropout for m in encoder.modules())
    use_fast_dropout(encoder)
    use_fast_dropout(model)
    assert n_dropouts > 0 and not any(type(m) is nn.Dropout for m in encoder.modules())
    assert sum(isinstance(m, FastDropout) for m in encoder.modules()) == n_dropouts
    assert isinstance(model[1], FastDropout) and model[1].p == 0.2
    assert encoder.config._attn_implementation == FAST_EAGER
    torch.testing.assert_close(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, before)
    encoder.train()  # in training the outputs now vary with the masks, and gradients flow through them
    out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(out, before)
    out.sum().backward()
    assert encoder.get_input_embeddings().weight.grad is not None


def test_fast_eager_attention_keeps_bf16_scores_and_masks_padding():
    """Under bf16 autocast the scores stay bf16 with transformers' fp32 mask (whose lowest value rounds to -inf
    in bf16): masked keys get exactly zero weight, no row turns NaN, and the probabilities equal the fp32
    softmax's to bf16 precision."""
    from taggers.dropout import eager_fast_dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 5, 5)
    mask[0, :, :, 3:] = torch.finfo(torch.float32).min  # the first row's last two keys are padding
    module = nn.Module().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, probs = eager_fast_dropout(module, q, k, v, mask, dropout=0.1)
    assert probs.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (probs[0, :, :, 3:] == 0).all()
    expected = ((q @ k.transpose(2, 3)) * 8 ** -0.5 + mask).softmax(-1)
    torch.testing.assert_close(probs.float(), expected, atol=2e-2, rtol=2e-2)


def test_frozen_bert_word_embeddings_stay_as_loaded(tmp_path, tiny_bert_dir, tiny_data_json):
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "train.max_steps=3",
                                "model.freeze_embeddings=true")) == 0
    start, trained = load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(out / "export" / WEIGHTS))
    word, position = "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"
    trained_word = next(v for k, v in trained.items() if k.endswith(word))
    trained_position = next(v for k, v in trained.items() if k.endswith(position))
    assert torch.equal(trained_word, next(v for k, v in start.items() if k.endswith(word)))
    assert not torch.equal(trained_position, next(v for k, v in start.items() if k.endswith(position)))


@pytest.mark.parametrize("init", [True, False])
def test_bilstm_embedding_starts_from_the_encoders_input_embeddings_or_not(tiny_bert_dir, init):
    """``model.init_embeddings``: the BiLSTM's word-piece table starts as the encoder's (frozen, it stays so)
    or from a random draw."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from taggers.config import ModelConfig
    from taggers.models import build_tagger

    mcfg = ModelConfig(type="bilstm", lstm_hidden=8, lstm_layers=1, casing_dim=4, init_embeddings=init)
    model = build_tagger(mcfg, ["O", "B-PER", "I-PER"], str(tiny_bert_dir), AutoTokenizer.from_pretrained(tiny_bert_dir))
    source = next(v for k, v in load_file(str(tiny_bert_dir / "model.safetensors")).items()
                  if k.endswith("embeddings.word_embeddings.weight"))
    assert model.embedding.weight.shape == source.shape  # embedding_dim 0: the encoder's hidden size
    assert torch.equal(model.embedding.weight.detach(), source) == init


@pytest.mark.parametrize("attention", ["eager", FAST_EAGER])
def test_eager_attention_reads_no_mask_on_the_host_and_scores_as_before(tiny_bert_dir, attention, monkeypatch):
    """transformers reads a 2D padding mask on the host to decide whether to skip it (a device sync per forward
    on a GPU); the taggers' eager masks are built always, and the outputs stay bit for bit those of transformers'
    own mask, with padding and without."""
    from transformers import AutoModel
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    from taggers.precision import padded_eager_mask, register_eager_masks

    encoder = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    if attention == FAST_EAGER:
        use_fast_dropout(encoder)
    ids = torch.randint(5, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    padded = torch.ones(3, 9, dtype=torch.long)
    padded[1, 6:] = 0
    host_reads = []
    real_bool = torch.Tensor.__bool__

    def forward(mask):
        monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: host_reads.append(1) or real_bool(t))
        try:
            with torch.no_grad():
                return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            monkeypatch.setattr(torch.Tensor, "__bool__", real_bool)

    for mask in (padded, torch.ones_like(padded)):
        ALL_MASK_ATTENTION_FUNCTIONS.register(attention, eager_mask)  # transformers' own
        try:
            host_reads.clear()
            expected = forward(mask)
            assert host_reads, "transformers' mask no longer reads the mask: padded_eager_mask can go"
        finally:
            register_eager_masks(FAST_EAGER)
        assert ALL_MASK_ATTENTION_FUNCTIONS[attention] is padded_eager_mask
        host_reads.clear()
        assert torch.equal(forward(mask), expected)
        assert not host_reads
