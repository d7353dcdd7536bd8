"""Character features of the BiLSTM tagger (``model.char_dim``): each word's characters reach every one of its
pieces in the same way in training, ``train.evaluate`` and ``ner-tag``; with the option off nothing changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.batching import collate_windows
from common.data import Sentence
from common.encoding import PieceWindower
from common.word_features import MAX_WORD_CHARS, word_char_rows
from taggers.models import BiLSTMTagger

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
BILSTM = ['model.type="bilstm"', "model.lstm_hidden=16", "model.lstm_layers=1", "model.use_crf=true"]
PARAMETERS_WITHOUT_CHARS = [
    "casing.weight", "classifier.weight", "classifier.bias", "crf.start_transitions", "crf.end_transitions",
    "crf.transitions", "embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
    "lstm.bias_hh_l0", "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse", "lstm.bias_ih_l0_reverse",
    "lstm.bias_hh_l0_reverse"]


def tiny_bilstm(tokenizer, char_dim=None, seed=0) -> BiLSTMTagger:
    """A seeded one-layer BiLSTM; ``char_dim=None`` calls the constructor as it was before the option."""
    torch.manual_seed(seed)
    extra = {} if char_dim is None else {"char_dim": char_dim}
    return BiLSTMTagger(LABELS, len(tokenizer), 16, lstm_hidden=8, lstm_layers=1, casing_dim=4, use_crf=True,
                        **extra)


def sentences() -> list[Sentence]:
    return [Sentence(["Peter", "Zwingmann", "visited", "PARIS"], ["B-PER", "I-PER", "O", "B-LOC"], doc=0, index=0),
            Sentence(["Paris", "is", "nice", "."], ["B-LOC", "O", "O", "O"], doc=0, index=1)]


# ------------------------------------------------------------------ the character ids
def test_char_rows_known_answer():
    rows = word_char_rows(["Paris", "PARIS", "Straße", "日本", "x" * 25, ""])
    assert rows.shape == (6, MAX_WORD_CHARS) and rows.dtype == np.int16
    assert rows[0, :6].tolist() == [80, 97, 114, 105, 115, 0]  # case kept
    assert rows[1, :6].tolist() == [80, 65, 82, 73, 83, 0]
    assert rows[2, :7].tolist() == [83, 116, 114, 97, 223, 101, 0]  # Latin-1 keeps its own rows
    assert rows[3, :3].tolist() == [256 + 0x65E5 % 256, 256 + 0x672C % 256, 0]  # the rest shares rows 256-511
    assert (rows[4] == ord("x")).all()  # cut after MAX_WORD_CHARS
    assert not rows[5].any()


def test_every_piece_of_a_word_carries_its_word_characters(tokenizer):
    windower = PieceWindower(tokenizer, LABELS, max_length=64, char_features=True)
    (window, _) = windower.windows(sentences())
    pieces = tokenizer.convert_ids_to_tokens(window.input_ids)
    assert pieces == ["[CLS]", "peter", "z", "##wing", "##mann", "visited", "paris", "[SEP]"]
    want = word_char_rows(["Peter", "Zwingmann", "Zwingmann", "Zwingmann", "visited", "PARIS"])
    assert window.chars.shape == (len(pieces), MAX_WORD_CHARS)
    np.testing.assert_array_equal(window.chars[1:-1], want)
    assert not window.chars[0].any() and not window.chars[-1].any()  # special tokens
    # the same pieces, other characters: "Paris" in the next sentence
    (paris,) = windower.windows(sentences()[1:])
    assert paris.input_ids[1] == window.input_ids[6] and (paris.chars[1] != window.chars[6]).any()
    # document context: context pieces carry their own words' characters too
    context = PieceWindower(tokenizer, LABELS, max_length=64, context_pieces=3, char_features=True)
    second = context.windows(sentences())[1]
    assert tokenizer.convert_ids_to_tokens(second.input_ids[1:4]) == ["##mann", "visited", "paris"]
    np.testing.assert_array_equal(second.chars[1:4], word_char_rows(["Zwingmann", "visited", "PARIS"]))
    # document packing: one window of both sentences, each piece with its own word's characters
    packer = PieceWindower(tokenizer, LABELS, max_length=64, pack_pieces=64, char_features=True)
    (packed,) = packer.windows(sentences())
    words = [w for s in sentences() for w in s.tokens]
    counts = [len(p) for s in packer.word_pieces([s.tokens for s in sentences()]) for p in s]
    np.testing.assert_array_equal(packed.chars[1:-1], np.repeat(word_char_rows(words), counts, axis=0))
    # off: no characters anywhere
    plain = PieceWindower(tokenizer, LABELS, max_length=64)
    assert all(w.chars is None for w in plain.windows(sentences()))
    assert "chars" not in collate_windows(plain.windows(sentences()))
    batch = collate_windows(context.windows(sentences()))
    assert batch["chars"].shape == (*batch["input_ids"].shape, MAX_WORD_CHARS)


def test_a_word_gets_one_char_vector_on_all_its_pieces(tokenizer):
    model = tiny_bilstm(tokenizer, char_dim=6)
    windower = PieceWindower(tokenizer, LABELS, max_length=64, char_features=True)
    batch = collate_windows(windower.windows(sentences()))
    with torch.no_grad():
        vectors = model.char_cnn(batch["chars"])
        cut = model.char_cnn(batch["chars"][..., :10])  # no word here has more: the padding is not pooled
    assert vectors.shape == (2, batch["input_ids"].shape[1], 6)
    zwingmann = vectors[0, 2:5]
    assert torch.equal(zwingmann, zwingmann[:1].expand(3, -1))
    assert not torch.equal(vectors[0, 6], vectors[1, 1])  # PARIS and Paris: the same piece
    pad = batch["attention_mask"] == 0
    assert not vectors[0, 0].any() and not vectors[0, 7].any() and not vectors[pad].any()
    torch.testing.assert_close(cut, vectors)


# ------------------------------------------------------------------ off: nothing changes
def test_char_dim_zero_adds_no_parameter_and_keeps_the_losses(tokenizer):
    before, off, on = tiny_bilstm(tokenizer), tiny_bilstm(tokenizer, 0), tiny_bilstm(tokenizer, 6)
    assert [n for n, _ in off.named_parameters()] == [n for n, _ in before.named_parameters()]
    assert sorted(n for n, _ in off.named_parameters()) == sorted(PARAMETERS_WITHOUT_CHARS)
    assert not any("char" in n for n, _ in off.named_modules())
    assert ({n for n, _ in on.named_parameters()} - {n for n, _ in off.named_parameters()}
            == {"char_cnn.embedding.weight", "char_cnn.conv.weight", "char_cnn.conv.bias"})

    def losses(model, char_features: bool) -> list[float]:
        windower = PieceWindower(tokenizer, LABELS, max_length=64, char_features=char_features)
        batch = collate_windows(windower.windows(sentences()))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        out = []
        torch.manual_seed(1)  # dropout
        for _ in range(3):
            loss = model(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    # the same seeded start, the same steps: batches that carry characters change nothing without the CNN
    reference = losses(before, False)
    assert losses(off, True) == reference and losses(tiny_bilstm(tokenizer, 0), False) == reference
    assert losses(on, True) != reference


def test_char_dim_is_refused_for_the_bert_tagger(tmp_path, capsys):
    from train.__main__ import main
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.char_dim=8: character features are a BiLSTM option"):
        load_config(None, ["model.char_dim=8"])
    assert load_config(None, ['model.type="bilstm"', "model.char_dim=8"]).model.char_dim == 8
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "none.json"), "--output-dir", str(out), "model.char_dim=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BiLSTM option" in err[0] and not out.exists()


# ------------------------------------------------------------------ the batch tagger's encoding
@pytest.fixture(scope="module")
def char_export(tmp_path_factory, tokenizer):
    """An untrained BiLSTM export with character features and document context (a 64-piece window)."""
    from taggers.config import ModelConfig
    from taggers.export import save_export

    mcfg = ModelConfig(type="bilstm", max_length=64, context_pieces=8, casing_dim=4, embedding_dim=16,
                       init_embeddings=False, lstm_hidden=8, lstm_layers=1, char_dim=6, dropout=0.0)
    model = BiLSTMTagger(LABELS, len(tokenizer), 16, lstm_hidden=8, lstm_layers=1, casing_dim=4, dropout=0.0,
                         char_dim=6)
    export = tmp_path_factory.mktemp("char_export") / "export"
    save_export(model, mcfg, tokenizer, str(export))
    return export


@pytest.mark.parametrize("chunking,batch_tokens,joined", [("sentences", 4096, True), ("windows", 512, True),
                                                          ("sentences", 1024, False)])
def test_host_encoder_chars_match_the_windower(char_export, chunking, batch_tokens, joined):
    """ner-tag's vectorised encoder gives each piece the same characters as the training windower: long words,
    context pieces, words cut at the window, non-ASCII text."""
    from tests.test_host_side import assert_same_batches, fuzz_texts, reference_prepare, tricky_texts

    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(char_export), "cpu", precision="fp32", chunking=chunking,
                                    batch_tokens=batch_tokens)
    assert tagger.windower.char_features and tagger.encoder.char_features
    if not joined:
        tagger.encoder._joined, tagger.encoder.tokenizer = None, tagger.windower.tokenizer
    texts = tricky_texts() + fuzz_texts(3, 100)
    prep = tagger.prepare(texts)
    batches, *_ = reference_prepare(tagger.windower, texts, tagger.batch_tokens, chunking)
    assert all("chars" in b for b in batches)
    assert_same_batches(prep.batches, batches)
    assert (tagger.predict(prep)[0] >= 0).all()


# ------------------------------------------------------------------ end to end
def test_trained_char_export_tags_like_its_evaluation(tmp_path, tiny_bert_dir, tiny_data_json, capsys):
    """ner-train with char features, then its export through ner-evaluate and ner-tag: the scores of the
    training-time evaluation, and the same entities from ner-tag as from the evaluation path's predictions."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import load_file
    from tests.test_infer import read_output, run_tag
    from tests.tiny_models import tiny_train_args

    from common.data import load_folds, sentences_alone
    from common.spans import tags_to_spans
    from taggers.export import load_tagger
    from taggers.predict import predict_windows
    from tests.reference_words import split_words
    from train.__main__ import main as train
    from train.evaluate import main as evaluate

    run = tmp_path / "run"
    assert train(tiny_train_args(tiny_data_json, tiny_bert_dir, run, *BILSTM, "model.char_dim=8",
                                 "train.precision=\"fp32\"")) == 0
    export = run / "export"
    meta = json.loads((export / "ner_config.json").read_text())
    assert meta["model"]["char_dim"] == 8
    assert {"char_cnn.embedding.weight", "char_cnn.conv.weight"} <= set(load_file(export / "model.safetensors"))

    # ner-evaluate scores the export as the training run did
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert evaluate(["--model", str(export), "--data", str(tiny_data_json), "--fold", "test", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1"] == pytest.approx(metrics["test"]["f1"])
    assert scores["sentences_alone"]["f1"] == pytest.approx(metrics["test"]["sentences_alone"]["f1"])

    # ner-tag on the test sentences written as text (those whose words ner-tag splits the same way)
    test = [s for s in load_folds(str(tiny_data_json))["test"] if s.tokens
            and split_words(" ".join(s.tokens))[0] == s.tokens]
    assert len(test) >= 20
    texts = [" ".join(s.tokens) for s in test]
    model, windower = load_tagger(str(export))
    alone = sentences_alone(test)
    preds = predict_windows(model, windower.windows(alone), [len(s) for s in alone], torch.device("cpu"))
    expected = []
    for text, sent, tags in zip(texts, test, preds.tags(windower.labels)):
        starts = np.cumsum([0] + [len(t) + 1 for t in sent.tokens])
        expected.append([(int(starts[a]), int(starts[b - 1]) + len(sent.tokens[b - 1]), label)
                         for a, b, label in tags_to_spans(tags)])
    assert sum(map(len, expected)) > 0
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), src)
    assert run_tag(export, src, tmp_path / "tagged", "--device", "cpu", "--precision", "fp32") == 0
    table = read_output(tmp_path / "tagged")
    by_id = dict(zip(table.column("id").to_pylist(), table.column("entities").to_pylist()))
    got = [[(e["start"], e["end"], e["label"]) for e in by_id[i]] for i in range(len(texts))]
    assert got == expected
