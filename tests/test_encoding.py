"""common.encoding: piece alignment, empty-piece words, windows, document context, casing."""

from __future__ import annotations

import random
from typing import Sequence

import pytest

from common.data import Sentence
from common.labels import label_list, labels_for_types
from common.encoding import EncodedWindow, PieceWindower, align_labels, assign_owners, plan_packs, plan_windows
from common.word_features import (
    CASE_DIGITS,
    CASE_LOWER,
    CASE_MIXED,
    CASE_OTHER,
    CASE_PAD,
    CASE_TITLE,
    CASE_UPPER,
    casing_class,
)

LABELS = labels_for_types(["LOC", "MISC", "ORG", "PER"])
L = {t: i for i, t in enumerate(LABELS)}
CLS, SEP, UNK = 101, 102, 100


def words_from_pieces(windows: Sequence[EncodedWindow], piece_predictions: Sequence[Sequence],
                      sentence_lengths: Sequence[int]) -> list[list]:
    """Map per-piece predictions back to one prediction per word (what taggers.predict does with tensors).

    ``piece_predictions[k][p]`` is the prediction (a label id, a label, a
    probability...) for piece ``p`` of window ``k``.  Raises if a word gets no
    prediction or two: the windows must cover every word exactly once.
    """
    out: list[list] = [[None] * n for n in sentence_lengths]
    seen = [[False] * n for n in sentence_lengths]
    # a word's flat position is its window's (first) sentence's first word + word_index; packed windows count
    # on through their later sentences
    where = [(si, w) for si, n in enumerate(sentence_lengths) for w in range(n)]
    first = [0]
    for n in sentence_lengths:
        first.append(first[-1] + n)
    for win, preds in zip(windows, piece_predictions):
        for p, w in enumerate(win.word_index):
            if w >= 0:
                si, wi = where[first[win.sentence] + w]
                if seen[si][wi]:
                    raise AssertionError(f"word {wi} of sentence {si} predicted twice")
                seen[si][wi] = True
                out[si][wi] = preds[p]
    for si, flags in enumerate(seen):
        if not all(flags):
            raise AssertionError(f"sentence {si}: words {[i for i, f in enumerate(flags) if not f]} not predicted")
    return out


def pieces(tok, window):
    return tok.convert_ids_to_tokens(window.input_ids)


def word_tags_from_labels(windows, sentences):
    """Round trip: the label on each owned word's first piece, back to tags."""
    preds = [[LABELS[l] if l >= 0 else None for l in w.labels] for w in windows]
    return words_from_pieces(windows, preds, [len(s) for s in sentences])


# --- alignment -------------------------------------------------------------------------------------

def test_align_labels_known_answer():
    tags = ["B-PER", "I-PER", "O", "B-LOC"]
    counts = [1, 2, 3, 2]
    assert align_labels(tags, counts, L, True) == [
        L["B-PER"], L["I-PER"], L["I-PER"], L["O"], L["O"], L["O"], L["B-LOC"], L["I-LOC"]]
    assert align_labels(tags, counts, L, False) == [
        L["B-PER"], L["I-PER"], -100, L["O"], -100, -100, L["B-LOC"], -100]


# Tokenization by the offline uncased tokenizer (checked in the test): Blackburnshire -> blackburn ##shire,
# unaffable -> una ##ffa ##ble, Xylophonics -> x ##yl ##op ##hon ##ics.
SENT = Sentence(["Peter", "Blackburnshire", "visited", "unaffable", "Xylophonics", "."],
                ["B-PER", "I-PER", "O", "O", "B-ORG", "O"])


def test_encode_alignment_all_pieces(tokenizer):
    enc = PieceWindower(tokenizer, LABELS, max_length=64)
    [w] = enc.windows([SENT])
    assert pieces(tokenizer, w) == ["[CLS]", "peter", "blackburn", "##shire", "visited", "una", "##ffa", "##ble",
                                    "x", "##yl", "##op", "##hon", "##ics", ".", "[SEP]"]
    B_PER, I_PER, O, B_ORG, I_ORG = L["B-PER"], L["I-PER"], L["O"], L["B-ORG"], L["I-ORG"]
    assert w.labels == [-100, B_PER, I_PER, I_PER, O, O, O, O, B_ORG, I_ORG, I_ORG, I_ORG, I_ORG, O, -100]
    assert w.word_index == [-1, 0, 1, -1, 2, 3, -1, -1, 4, -1, -1, -1, -1, 5, -1]
    assert w.scored == [0] + [1] * 13 + [0]
    assert w.casing == [CASE_PAD, CASE_TITLE, CASE_TITLE, CASE_TITLE, CASE_LOWER, CASE_LOWER, CASE_LOWER,
                        CASE_LOWER] + [CASE_TITLE] * 5 + [CASE_OTHER, CASE_PAD]
    assert w.sentence == 0 and len(w) == 15
    assert w.input_ids[0] == CLS and w.input_ids[-1] == SEP


def test_encode_alignment_first_piece_only(tokenizer):
    enc = PieceWindower(tokenizer, LABELS, max_length=64, label_all_pieces=False)
    [w] = enc.windows([SENT])
    B_PER, I_PER, O, B_ORG = L["B-PER"], L["I-PER"], L["O"], L["B-ORG"]
    assert w.labels == [-100, B_PER, I_PER, -100, O, O, -100, -100, B_ORG, -100, -100, -100, -100, O, -100]
    assert w.scored == [0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert w.word_index == [-1, 0, 1, -1, 2, 3, -1, -1, 4, -1, -1, -1, -1, 5, -1]


def test_encode_without_labels(tokenizer):
    enc = PieceWindower(tokenizer, LABELS, max_length=64)
    [w] = enc.windows([Sentence(SENT.tokens)], with_labels=False)
    assert set(w.labels) == {-100}
    assert w.word_index == [-1, 0, 1, -1, 2, 3, -1, -1, 4, -1, -1, -1, -1, 5, -1]
    with pytest.raises(ValueError):
        enc.windows([Sentence(SENT.tokens)], with_labels=True)


def test_words_without_pieces_become_unk(tokenizer):
    tokens = ["Hello", "\u200b", "Paris", "\x00", "unaffable", "\u200d"]
    tags = ["O", "B-MISC", "B-LOC", "O", "B-PER", "B-ORG"]
    for t in ("\u200b", "\x00", "\u200d"):
        assert tokenizer.tokenize(t) == []  # precondition: these really give no piece
    enc = PieceWindower(tokenizer, LABELS, max_length=64)
    sent = Sentence(tokens, tags)
    [w] = enc.windows([sent])
    assert pieces(tokenizer, w) == ["[CLS]", "hello", "[UNK]", "paris", "[UNK]", "una", "##ffa", "##ble", "[UNK]",
                                    "[SEP]"]
    assert w.word_index == [-1, 0, 1, 2, 3, 4, -1, -1, 5, -1]
    assert w.labels == [-100, L["O"], L["B-MISC"], L["B-LOC"], L["O"], L["B-PER"], L["I-PER"], L["I-PER"],
                        L["B-ORG"], -100]
    assert word_tags_from_labels([w], [sent]) == [tags]
    # a sentence made only of such words
    [w2] = enc.windows([Sentence(["\u200b", "\u200d"], ["O", "B-PER"])])
    assert w2.input_ids == [CLS, UNK, UNK, SEP] and w2.word_index == [-1, 0, 1, -1]


def test_rejects_slow_tokenizer():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast"):
        PieceWindower(Slow(), LABELS)


# --- windows ---------------------------------------------------------------------------------------

def test_plan_windows_and_owners_known_answers():
    assert plan_windows([], 4) == []
    assert plan_windows([1, 2, 1], 4) == [(0, 3)]
    wins = plan_windows([1] * 10, 4, 0.5)
    assert wins == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert assign_owners(wins, 10) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # a single word longer than the budget gets a window of its own
    for counts in ([1, 10, 1], [1, 4, 1]):
        wins = plan_windows(counts, 4)
        assert wins == [(0, 1), (1, 2), (2, 3)]
        assert assign_owners(wins, 3) == [0, 1, 2]
    wins = plan_windows([2, 2, 2, 2, 2], 5, 0.5)
    assert wins == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert assign_owners(wins, 5) == [0, 0, 1, 2, 3]


def test_plan_windows_properties():
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.randint(1, 6) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(1, 20)
        stride = rng.choice([0.25, 0.5, 0.75, 1.0])
        wins = plan_windows(counts, budget, stride)
        assert wins[0][0] == 0 and wins[-1][1] == len(counts)
        for (a, b), (c, d) in zip(wins, wins[1:]):
            assert a < c <= b <= d  # advancing, no gap
        for a, b in wins:
            assert b > a
            assert b - a == 1 or sum(counts[a:b]) <= budget
        owners = assign_owners(wins, len(counts))
        assert all(0 <= o < len(wins) and wins[o][0] <= w < wins[o][1] for w, o in enumerate(owners))


def long_sentence(n=60, seed=0):
    rng = random.Random(seed)
    vocab = ["the", "Paris", "unaffable", "Xylophonics", "Blackburnshire", "said", "1996-08-22", "EU", "\u200b"]
    tokens = [rng.choice(vocab) for _ in range(n)]
    types = ["PER", "LOC", "ORG", "MISC"]
    tags, prev = [], None
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            tags.append("O"); prev = None
        elif r < 0.75 or prev is None:
            prev = rng.choice(types); tags.append(f"B-{prev}")
        else:
            tags.append(f"I-{prev}")
    return Sentence(tokens, tags)


@pytest.mark.parametrize("label_all_pieces", [True, False])
@pytest.mark.parametrize("max_length", [6, 12, 20])
def test_windows_round_trip(tokenizer, max_length, label_all_pieces):
    sents = [long_sentence(60, seed) for seed in range(3)] + [Sentence(["short", "one"], ["O", "B-PER"])]
    enc = PieceWindower(tokenizer, LABELS, max_length=max_length, label_all_pieces=label_all_pieces)
    windows = enc.windows(sents)
    assert all(len(w) <= max_length for w in windows)
    assert all(w.input_ids[0] == CLS and w.input_ids[-1] == SEP for w in windows)
    per_sentence = [[w for w in windows if w.sentence == i] for i in range(len(sents))]
    assert all(len(ws) > 2 for ws in per_sentence[:3])  # the long ones are split
    assert len(per_sentence[3]) == 1
    full = enc.word_pieces([s.tokens for s in sents])
    for ws in per_sentence[:3]:
        spans = [[i for i in w.word_index if i >= 0] for w in ws]
        assert all(spans)  # every window predicts at least one word
    # every word predicted exactly once (words_from_pieces raises otherwise) and the labels round-trip
    assert word_tags_from_labels(windows, sents) == [s.tags for s in sents]
    # predictions made of the word index itself come back in order
    ids = words_from_pieces(windows, [w.word_index for w in windows], [len(s) for s in sents])
    assert ids == [list(range(len(s))) for s in sents]
    # each window's pieces are a contiguous run of the sentence's pieces
    for w in windows:
        flat = [p for wp in full[w.sentence] for p in wp[:max_length - 2]]
        body = w.input_ids[1:-1]
        assert any(flat[k:k + len(body)] == body for k in range(len(flat) - len(body) + 1))


def test_windows_overlap(tokenizer):
    sent = Sentence(["word"] * 30, ["O"] * 30)  # one piece per word
    enc = PieceWindower(tokenizer, LABELS, max_length=10)  # budget 8, stride 4
    windows = enc.windows([sent])
    assert [len(w) for w in windows] == [10] * 6 + [8]
    owned = [[i for i in w.word_index if i >= 0] for w in windows]
    assert owned == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17],
                     [18, 19, 20, 21], [22, 23, 24, 25], [26, 27, 28, 29]]
    # non-owned words are in the window as context: -100, not scored
    w = windows[1]
    assert w.labels[1:3] == [-100, -100] and w.scored[1:3] == [0, 0]


def test_word_longer_than_budget(tokenizer):
    word = "supercalifragilisticexpialidocious"   # 11 pieces
    sent = Sentence(["a", word, "b"], ["O", "B-MISC", "O"])
    enc = PieceWindower(tokenizer, LABELS, max_length=6)  # budget 4
    windows = enc.windows([sent])
    assert [pieces(tokenizer, w) for w in windows] == [
        ["[CLS]", "a", "[SEP]"],
        ["[CLS]", "super", "##cal", "##if", "##rag", "[SEP]"],
        ["[CLS]", "b", "[SEP]"]]
    assert windows[1].labels == [-100, L["B-MISC"], L["I-MISC"], L["I-MISC"], L["I-MISC"], -100]
    assert word_tags_from_labels(windows, [sent]) == [sent.tags]


def test_window_without_owned_word_is_dropped(tokenizer):
    # the plan has a window nested in the previous one: it owns no word
    assert plan_windows([1, 3, 4], 4) == [(0, 2), (1, 2), (2, 3)]
    assert assign_owners([(0, 2), (1, 2), (2, 3)], 3) == [0, 0, 2]
    sent = Sentence(["a", "unaffable", "Xylophonics"], ["O", "B-PER", "B-ORG"])   # 1, 3, 5 pieces
    windows = PieceWindower(tokenizer, LABELS, max_length=6).windows([sent])   # budget 4
    assert [pieces(tokenizer, w) for w in windows] == [
        ["[CLS]", "a", "una", "##ffa", "##ble", "[SEP]"],
        ["[CLS]", "x", "##yl", "##op", "##hon", "[SEP]"]]
    assert all(any(l != -100 for l in w.labels) for w in windows)
    assert word_tags_from_labels(windows, [sent]) == [sent.tags]


def test_words_from_pieces_detects_missing_and_double():
    w = EncodedWindow(0, [1, 2, 3], [-100] * 3, [0] * 3, [-1, 0, -1], [0, 1, 0])
    with pytest.raises(AssertionError, match="not predicted"):
        words_from_pieces([w], [[0, 1, 2]], [2])
    with pytest.raises(AssertionError, match="twice"):
        words_from_pieces([w, w], [[0, 1, 2]] * 2, [1])
    assert words_from_pieces([w], [["x", "y", "z"]], [1]) == [["y"]]


# --- document context ------------------------------------------------------------------------------

def doc_sentences():
    return [
        Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], doc=0),
        Sentence(["EU", "rejects", "unaffable", "call"], ["B-ORG", "O", "O", "O"], doc=0),
        Sentence(["BRUSSELS", "1996-08-22"], ["B-LOC", "O"], doc=0),
        Sentence(["Paris", "said"], ["B-LOC", "O"], doc=1),
        Sentence(["the", "Xylophonics"], ["O", "B-ORG"], doc=None),
        Sentence(["Paris", "said"], ["B-LOC", "O"], doc=None),
    ]


def test_context_known_answer(tokenizer):
    sents = doc_sentences()
    enc = PieceWindower(tokenizer, LABELS, max_length=64, context_pieces=3)
    windows = enc.windows(sents)
    assert len(windows) == len(sents)
    got = [pieces(tokenizer, w) for w in windows]
    assert got[0] == ["[CLS]", "peter", "blackburn", "eu", "rejects", "una", "[SEP]"]           # no left: first
    assert got[1] == ["[CLS]", "peter", "blackburn", "eu", "rejects", "una", "##ffa", "##ble", "call",
                      "brussels", "1996", "-", "[SEP]"]
    assert got[2] == ["[CLS]", "##ffa", "##ble", "call", "brussels", "1996", "-", "08", "-", "22", "[SEP]"]  # doc 1 not used
    assert got[3] == ["[CLS]", "paris", "said", "[SEP]"]        # alone in doc 1
    assert got[4] == ["[CLS]", "the", "x", "##yl", "##op", "##hon", "##ics", "[SEP]"]   # doc None: no context
    assert got[5] == ["[CLS]", "paris", "said", "[SEP]"]
    w = windows[1]
    # context: labelled -100, word_index -1, not scored; casing kept
    assert w.labels[1:3] == [-100, -100] and w.labels[-4:] == [-100] * 4
    assert w.word_index == [-1, -1, -1, 0, 1, 2, -1, -1, 3, -1, -1, -1, -1]
    assert w.scored == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert w.casing[1:3] == [CASE_TITLE, CASE_TITLE] and w.casing[9] == CASE_UPPER


@pytest.mark.parametrize("max_length", [8, 14, 64])
def test_context_does_not_change_predicted_words(tokenizer, max_length):
    sents = doc_sentences() + [long_sentence(25, 1)]
    for s in sents[-1:]:
        s.doc = 1
    plain = PieceWindower(tokenizer, LABELS, max_length=max_length).windows(sents)
    ctx_enc = PieceWindower(tokenizer, LABELS, max_length=max_length, context_pieces=5)
    ctx = ctx_enc.windows(sents)
    assert len(plain) == len(ctx)
    assert sum(len(w) for w in ctx) > sum(len(w) for w in plain)  # some context was added
    full = ctx_enc.word_pieces([s.tokens for s in sents])
    for p, c in zip(plain, ctx):
        assert p.sentence == c.sentence and len(c) <= max_length
        # the scored pieces, their labels and word indices are the same, in the same order
        assert [(l, wi) for l, wi, s in zip(p.labels, p.word_index, p.scored) if s] == \
               [(l, wi) for l, wi, s in zip(c.labels, c.word_index, c.scored) if s]
        # the window's own pieces are contiguous inside the context version
        body = p.input_ids[1:-1]
        k = next(k for k in range(len(c) - len(body) + 1) if c.input_ids[k:k + len(body)] == body)
        left, right = c.input_ids[1:k], c.input_ids[k + len(body):-1]
        assert len(left) <= 5 and len(right) <= 5
        assert all(x == -100 for x in c.labels[1:k] + c.labels[k + len(body):-1])
        assert all(x == -1 for x in c.word_index[1:k] + c.word_index[k + len(body):-1])
        # context pieces come only from sentences of the same document
        doc = sents[c.sentence].doc
        same_doc = {p for j, s in enumerate(sents) if j != c.sentence and doc is not None and s.doc == doc
                    for wp in full[j] for p in wp}
        assert set(left + right) <= same_doc
    assert word_tags_from_labels(ctx, sents) == [s.tags for s in sents]


# --- casing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("word,cls", [
    ("peter", CASE_LOWER), ("Peter", CASE_TITLE), ("PETER", CASE_UPPER), ("McDonald", CASE_MIXED),
    ("iPhone", CASE_MIXED), ("1996", CASE_DIGITS), ("1996-08-22", CASE_DIGITS), (".", CASE_OTHER),
    ("", CASE_OTHER), ("\u200b", CASE_OTHER), ("I", CASE_TITLE), ("A", CASE_TITLE), ("U.S.", CASE_UPPER),
    ("ÉTAT", CASE_UPPER), ("été", CASE_LOWER), ("Jean-Marc", CASE_MIXED), ("3rd", CASE_LOWER),
    ("B-52", CASE_TITLE),
])
def test_casing_class(word, cls):
    assert casing_class(word) == cls


# --- the real data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("max_length", [512, 24])
def test_shared_valid_round_trip(tokenizer, conll_folds, max_length):
    sents = conll_folds["valid"]
    enc = PieceWindower(tokenizer, label_list(conll_folds["train"]), max_length=max_length)
    windows = enc.windows(sents)
    assert all(len(w) <= max_length for w in windows)
    if max_length == 512:
        assert len(windows) == len(sents)
    else:
        assert len(windows) > len(sents)
    preds = [[enc.labels[l] if l >= 0 else None for l in w.labels] for w in windows]
    assert words_from_pieces(windows, preds, [len(s) for s in sents]) == [s.tags for s in sents]


# --- document packing ------------------------------------------------------------------------------

def test_plan_packs_known_answer():
    docs = [0, 0, 0, 1, None, None, 2, 2, 2, 3, 3, 3]
    counts = [3, 4, 2, 5, 1, 1, 9, 2, 3, 12, 0, 4]
    # doc 0 fits whole; doc 1 is one sentence; no document: alone; doc 2: 9 fills a window alone, then 2 + 3;
    # doc 3: a sentence over the budget and an empty one are left to windows of their own
    assert plan_packs(docs, counts, budget=9) == [[0, 1, 2], [7, 8]]
    # a larger budget: doc 3's sentences 9 and 11 are not neighbours (the empty one lies between)
    assert plan_packs(docs, counts, budget=100) == [[0, 1, 2], [6, 7, 8]]


def test_packing_known_answer(tokenizer):
    sents = doc_sentences()
    windows = PieceWindower(tokenizer, LABELS, max_length=64, pack_pieces=64).windows(sents)
    got = [pieces(tokenizer, w) for w in windows]
    assert got == [["[CLS]", "peter", "blackburn", "eu", "rejects", "una", "##ffa", "##ble", "call", "brussels",
                    "1996", "-", "08", "-", "22", "[SEP]"],
                   ["[CLS]", "paris", "said", "[SEP]"], ["[CLS]", "the", "x", "##yl", "##op", "##hon", "##ics", "[SEP]"],
                   ["[CLS]", "paris", "said", "[SEP]"]]
    w = windows[0]
    assert w.sentence == 0
    assert w.word_index == [-1, 0, 1, 2, 3, 4, -1, -1, 5, 6, 7, -1, -1, -1, -1, -1]
    assert w.scored == [0] + [1] * 14 + [0]  # every piece of every sentence (label_all_pieces)
    assert [LABELS[x] if x >= 0 else None for x in w.labels] == [
        None, "B-PER", "I-PER", "B-ORG", "O", "O", "O", "O", "O", "B-LOC", "O", "O", "O", "O", "O", None]


@pytest.mark.parametrize("pack_pieces, max_length", [(12, 64), (16, 16), (40, 40), (512, 512)])
def test_packing_labels_every_word_once_within_one_document(tokenizer, pack_pieces, max_length):
    sents = doc_sentences() + [long_sentence(25, 1), Sentence(["Paris"], ["B-LOC"], doc=1),
                               Sentence(["EU", "said"], ["B-ORG", "O"], doc=2)]
    sents[-3].doc = 1
    enc = PieceWindower(tokenizer, LABELS, max_length=max_length, pack_pieces=pack_pieces)
    windows = enc.windows(sents)
    # every word labelled exactly once, with its own tag (words_from_pieces raises on a word seen twice or never)
    assert word_tags_from_labels(windows, sents) == [s.tags for s in sents]
    full = enc.word_pieces([s.tokens for s in sents])
    assert sum(sum(w.scored) for w in windows) == sum(len(p) for ps in full for p in ps)
    first = [0]
    for s in sents:
        first.append(first[-1] + len(s))
    packed = 0
    for w in windows:
        assert len(w) <= max_length
        covered = {next(j for j in range(len(sents)) if first[j] <= first[w.sentence] + i < first[j + 1])
                   for i in w.word_index if i >= 0}
        if len(covered) > 1:  # a packed window: consecutive sentences of one document, within the pack size
            packed += 1
            assert len(w) <= pack_pieces
            assert covered == set(range(min(covered), max(covered) + 1))
            assert len({sents[j].doc for j in covered}) == 1 and sents[w.sentence].doc is not None
    assert packed > 0
