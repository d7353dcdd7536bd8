"""Plain Hugging Face token-classification models in ner-tag and train.evaluate (taggers/hf.py).

The models are tiny ``BertForTokenClassification``s built from a config with known weights: attention and
feed-forward outputs, position and token-type embeddings are zero, so every piece's final hidden state is
the LayerNorm of its own word embedding.  A word mapped to tag ``k`` gets an embedding whose normalised
form makes the classifier give ``k`` the logit ``ENTITY_LOGIT``; every other piece has a zero hidden
state and gets the classifier's bias (``O`` wins).  Every prediction and its probability is thus known.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from infer.__main__ import main as tag_main
from taggers.export import ExportError, load_tagger, read_export_config

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64
ENTITY_LOGIT = 3.0
O_BIAS = 1.0

IOB2 = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
IOB2_WORDS = {"john": "B-PER", "smith": "I-PER", "google": "B-ORG", "inc": "I-ORG", "paris": "B-LOC",
              "berlin": "B-LOC", "japan": "B-LOC", "nadim": "B-PER", "ladki": "I-PER"}
# id order deliberately not starting with O: the labels are id2label in id order
BIOES = ["B-LOC", "I-LOC", "E-LOC", "S-LOC", "O", "B-PER", "I-PER", "E-PER", "S-PER", "B-ORG", "I-ORG",
         "E-ORG", "S-ORG"]
BIOES_WORDS = {"john": "B-PER", "smith": "E-PER", "google": "B-ORG", "inc": "E-ORG", "paris": "S-LOC",
               "berlin": "S-LOC"}

TEXTS = [
    "John Smith lives in Paris.",
    "Smith visited Google Inc in Berlin",
    None,
    "",
    "Paris Berlin",
    "nothing to see here",
    " ".join(["John Smith lives in Paris ."] * 40),  # longer than the model's 128 positions
]


def build_hf_model(out_dir: Path, tokenizer, labels, word_tags: dict[str, str] | None = None,
                   arch: str = "BertForTokenClassification", id2label: bool = True) -> Path:
    """A tiny BERT token classifier whose predictions are known (see the module docstring)."""
    import torch
    import transformers
    from transformers import BertConfig

    torch.manual_seed(0)
    kw = dict(id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)}) if id2label \
        else dict(num_labels=len(labels))
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, **kw)
    model = getattr(transformers, arch)(cfg)
    if arch == "BertForTokenClassification":
        scale = ENTITY_LOGIT / math.sqrt(2 * HIDDEN)  # |LayerNorm(+1, -1, 0...)| puts sqrt(H/2) on each of 2 dims
        with torch.no_grad():
            for layer in model.bert.encoder.layer:
                for dense in (layer.attention.output.dense, layer.output.dense):
                    dense.weight.zero_()
                    dense.bias.zero_()
            emb = model.bert.embeddings
            for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
                table.weight.zero_()
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            if "O" in labels:
                model.classifier.bias[labels.index("O")] = O_BIAS
            for k, tag in enumerate(labels):
                if tag != "O":
                    model.classifier.weight[k, 2 * k] = scale
                    model.classifier.weight[k, 2 * k + 1] = -scale
            for word, tag in (word_tags or {}).items():
                k = labels.index(tag)
                piece = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)[0])
                emb.word_embeddings.weight[piece, 2 * k] = 1.0
                emb.word_embeddings.weight[piece, 2 * k + 1] = -1.0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def entity_prob(labels) -> float:
    """Probability of a mapped word's tag (every non-O tag has the same logit when it wins)."""
    logits = np.zeros(len(labels))
    logits[labels.index("O")] = O_BIAS
    logits[1 if labels.index("O") != 1 else 2] = ENTITY_LOGIT  # any non-O tag: the softmax is symmetric
    p = np.exp(logits - logits.max())
    return float(p.max() / p.sum())


def expected_entities(text) -> list[tuple[int, int, str]]:
    """Spans of TEXTS under either tag map (both read John Smith / Google Inc / Paris / Berlin alike)."""
    if not text:
        return []
    out = []
    for pattern, label in (("John Smith", "PER"), ("Google Inc", "ORG"), ("Paris", "LOC"), ("Berlin", "LOC")):
        start = text.find(pattern)
        while start >= 0:
            out.append((start, start + len(pattern), label))
            start = text.find(pattern, start + 1)
    if text.startswith("Smith visited"):  # a lone I-PER opens an entity (conlleval's reading)
        out.append((0, 5, "PER"))
    return sorted(out)


def write_input(path: Path, texts) -> Path:
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())}), path)
    return path


def tag(model: Path, source: Path, out: Path, *extra: str) -> int:
    return tag_main(["--model", str(model), "--input", str(source), "--output", str(out), "--threads", "1",
                     "--no-progress", "--device", "cpu", *extra])


def read_entities(out: Path) -> dict[int, list[dict]]:
    table = ds.dataset(str(out), format="parquet").to_table()
    return dict(zip(table.column("id").to_pylist(), table.column("entities").to_pylist()))


@pytest.fixture(scope="module")
def iob2_model(tokenizer, tmp_path_factory) -> Path:
    return build_hf_model(tmp_path_factory.mktemp("hf_iob2"), tokenizer, IOB2, IOB2_WORDS)


@pytest.fixture(scope="module")
def bioes_model(tokenizer, tmp_path_factory) -> Path:
    return build_hf_model(tmp_path_factory.mktemp("hf_bioes"), tokenizer, BIOES, BIOES_WORDS)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return write_input(tmp_path_factory.mktemp("hf_in") / "texts.parquet", TEXTS)


# ------------------------------------------------------------------ reading the folder
def test_config_is_synthesised(iob2_model, bioes_model):
    meta = read_export_config(str(iob2_model))
    assert meta["model_type"] == "hf-token-classification" and meta["hf_compatible"] is True
    assert meta["labels"] == IOB2
    assert read_export_config(str(bioes_model))["labels"] == BIOES
    model, windower = load_tagger(str(bioes_model))
    assert model.labels == windower.labels == BIOES
    assert model.max_positions == 128 and windower.max_length == 128
    assert model.vocab_size() == len(windower.tokenizer) and not model.training


@pytest.mark.parametrize("name,labels", [("iob2", IOB2), ("bioes", BIOES)])
def test_ner_tag_spans_and_scores(request, sample, tmp_path, name, labels):
    model = request.getfixturevalue(f"{name}_model")
    out = tmp_path / "out"
    assert tag(model, sample, out, "--precision", "fp32") == 0
    got = read_entities(out)
    p = entity_prob(labels)
    for i, text in enumerate(TEXTS):
        ents = got[i]
        assert [(e["start"], e["end"], e["label"]) for e in ents] == expected_entities(text), (name, text)
        for e in ents:
            assert e["text"] == text[e["start"]:e["end"]]
            assert e["score"] == pytest.approx(p, abs=1e-5)
    assert len(got[6]) == 80  # the long text: every repetition, across the windows
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["entities"] == {"LOC": 44, "ORG": 1, "PER": 42}
    # the same command resumes (same model fingerprint), another precision gives the same spans
    assert tag(model, sample, out, "--precision", "fp32") == 0
    assert read_entities(out) == got
    out_bf16 = tmp_path / "out_bf16"
    assert tag(model, sample, out_bf16, "--precision", "bf16") == 0
    assert {i: [(e["start"], e["end"], e["label"]) for e in ents] for i, ents in read_entities(out_bf16).items()} \
        == {i: [(e["start"], e["end"], e["label"]) for e in ents] for i, ents in got.items()}


def test_evaluate_scores_the_model(iob2_model, tiny_conll_json, capsys):
    from train.evaluate import main as evaluate_main

    assert evaluate_main(["--model", str(iob2_model), "--data", str(tiny_conll_json), "--fold", "test",
                          "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1"] == 1.0 and scores["token_accuracy"] == 1.0 and scores["num_sentences"] == 2


def test_export_without_ner_config_tags_alike(tiny_exports, tmp_path):
    """A ner-taggers HF-compatible export (argmax decoding) read as a plain Hugging Face folder: same output."""
    export = tiny_exports["bert"] / "export"
    plain = tmp_path / "plain"
    shutil.copytree(export, plain)
    (plain / "ner_config.json").unlink()
    source = write_input(tmp_path / "in.parquet", [t for t in TEXTS if t] + [
        "Angela Merkel visited Japan with the European Commission .", "Peter Blackburn said in BRUSSELS"])
    assert tag(export, source, tmp_path / "a", "--precision", "fp32") == 0
    assert tag(plain, source, tmp_path / "b", "--precision", "fp32") == 0
    a, b = read_entities(tmp_path / "a"), read_entities(tmp_path / "b")
    assert [[(e["start"], e["end"], e["label"]) for e in a[i]] for i in sorted(a)] == \
        [[(e["start"], e["end"], e["label"]) for e in b[i]] for i in sorted(b)]
    for i in a:
        for x, y in zip(a[i], b[i]):
            assert x["score"] == pytest.approx(y["score"], abs=1e-5)


def test_model_fingerprint_covers_the_weights(iob2_model, tmp_path):
    import hashlib

    from infer.output import model_fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(iob2_model, copy)
    before = model_fingerprint(str(copy))
    assert before != hashlib.sha256().hexdigest()
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # another weight value
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(str(copy)) != before


# ------------------------------------------------------------------ refusals
def _refused_by_ner_tag(model: Path, sample: Path, tmp_path, capsys, *expected: str) -> str:
    capsys.readouterr()
    assert tag(model, sample, tmp_path / "out") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ner-tag: error:"), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_generic_label_names_are_refused(tokenizer, sample, tmp_path, capsys):
    model = build_hf_model(tmp_path / "generic", tokenizer, ["a", "b", "c"], id2label=False)
    line = _refused_by_ner_tag(model, sample, tmp_path, capsys, "LABEL_0", "no tag map", "id2label")
    assert str(model) in line
    with pytest.raises(ExportError, match="LABEL_0"):
        load_tagger(str(model))


def test_other_tag_forms_are_refused(tokenizer, sample, tmp_path, capsys):
    model = build_hf_model(tmp_path / "underscore", tokenizer, ["O", "B_PER", "I_PER", "B-LOC"])
    _refused_by_ner_tag(model, sample, tmp_path, capsys, "['B_PER', 'I_PER']", "B-", "E-", "S-")


@pytest.mark.parametrize("case,expected", [
    ("sequence_classifier", "not a token classifier"),
    ("bare_encoder", "not a trained token classifier"),
    ("no_o_tag", "no 'O' tag"),
    ("no_config", "no config.json"),
    ("broken_config", "config"),
])
def test_unusable_folders_are_refused(tokenizer, tiny_bert_dir, sample, tmp_path, capsys, case, expected):
    folder = tmp_path / case
    if case == "sequence_classifier":
        build_hf_model(folder, tokenizer, IOB2, arch="BertForSequenceClassification")
    elif case == "bare_encoder":  # an encoder with a tag map but no classifier weights
        shutil.copytree(tiny_bert_dir, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(id2label={str(i): t for i, t in enumerate(IOB2)}, architectures=None)
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "no_o_tag":
        build_hf_model(folder, tokenizer, ["B-PER", "I-PER"])
    elif case == "no_config":
        build_hf_model(folder, tokenizer, IOB2, IOB2_WORDS)
        (folder / "config.json").unlink()
    else:
        build_hf_model(folder, tokenizer, IOB2, IOB2_WORDS)
        (folder / "config.json").write_text("{not json")
    _refused_by_ner_tag(folder, sample, tmp_path, capsys, expected, str(folder))


def test_unknown_hub_id_is_one_line(sample, tmp_path):
    """An ``org/name`` that is no folder is looked up as a hub id; offline and unknown: one line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", "infer", "--model", "acme-no-such-org/no-such-model", "--input",
                        str(sample), "--output", str(tmp_path / "out"), "--no-progress", "--device", "cpu"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "acme-no-such-org/no-such-model" in lines[0] and "hub" in lines[0], r.stderr


# ------------------------------------------------------------------ byte-level BPE (RoBERTa-style) models
def build_roberta_model(out_dir: Path, labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")) -> Path:
    """A tiny RobertaForTokenClassification with a byte-level BPE tokenizer trained here (random weights)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaConfig, RobertaForTokenClassification

    tok_dir = out_dir.parent / (out_dir.name + "_tokenizer")
    tok_dir.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["John Smith lives in Paris .", "Smith visited Google Inc in Berlin"] * 50,
                            vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save(str(tok_dir / "tokenizer.json"))
    bpe.save_model(str(tok_dir))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": 512}))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                        id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)})
    RobertaForTokenClassification(cfg).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_byte_level_tokenizer_marks_every_word(tmp_path):
    """RoBERTa-style models see pre-split words with their leading-space marker, as in ``tokenize(text)``,
    and windows no longer than their position table minus the padding offset."""
    model_dir = build_roberta_model(tmp_path / "roberta")
    model, windower = load_tagger(str(model_dir))
    assert model.max_positions == 66 - 1 - 1 and windower.max_length == 64  # pad id 1: positions start at 2
    tok = windower.tokenizer
    words = ["John", "Smith", "visited", "Google", "Inc"]
    pieces = windower.word_pieces([words])[0]
    expected = tok(" " + " ".join(words), add_special_tokens=False)["input_ids"]
    assert [p for w in pieces for p in w] == expected, tok.convert_ids_to_tokens(expected)
    source = write_input(tmp_path / "in.parquet", TEXTS)
    assert tag(model_dir, source, tmp_path / "out", "--precision", "fp32") == 0  # longer than 64 pieces too
    got = read_entities(tmp_path / "out")
    for i, text in enumerate(TEXTS):
        for e in got[i]:
            assert e["text"] == text[e["start"]:e["end"]] and e["label"] in ("PER", "LOC")


@pytest.mark.parametrize("device, precision, expected", [("cuda", "bf16", "eager"), ("cuda", "fp16", "eager"),
                                                         ("cuda", "fp32", "sdpa"), ("cpu", "bf16", "sdpa")])
def test_inference_attention_per_device_and_precision(iob2_model, tiny_exports, device, precision, expected):
    """Half precision on a GPU computes attention eagerly (twice as fast there on NER windows); the rest keeps
    PyTorch's fused attention.  Checked on both kinds of model: a project export and a plain HF folder."""
    import torch

    from taggers.precision import cast_for_inference

    for path in (tiny_exports["bert"] / "export", iob2_model):
        model, _ = load_tagger(str(path), "cpu")
        cast_for_inference(model, precision, torch.device(device))  # the device only chooses; nothing moves
        configs = [m.config for m in model.modules() if hasattr(m, "set_attn_implementation")]
        assert configs and {c._attn_implementation for c in configs} == {expected}, path
