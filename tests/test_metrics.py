"""common.metrics and common.spans: entity scores (default and strict), token accuracy, spans."""

from __future__ import annotations

import random

import pytest

from common.metrics import entity_scores, score_words
from common.spans import tags_to_spans

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"], ["O", "B-MISC", "I-MISC"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"], ["O", "B-MISC", "O"]]


def test_entity_scores_known_answer():
    s = entity_scores(GOLD, PRED)
    # gold: PER, LOC, ORG, MISC(2 words); pred: PER, ORG(wrong), ORG, MISC(1 word, wrong)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(0.5)
    assert s["support"] == 4
    pt = s["per_type"]
    assert set(pt) == {"PER", "LOC", "ORG", "MISC"}
    assert pt["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert pt["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert pt["ORG"]["precision"] == pytest.approx(0.5) and pt["ORG"]["recall"] == 1.0
    assert pt["ORG"]["f1"] == pytest.approx(2 / 3) and pt["ORG"]["support"] == 1
    assert pt["MISC"]["f1"] == 0.0
    # well-formed IOB2 everywhere: strict gives the same numbers
    st = s["strict"]
    assert (st["precision"], st["recall"], st["f1"], st["support"]) == pytest.approx((0.5, 0.5, 0.5, 4))
    assert st["per_type"]["ORG"]["precision"] == pytest.approx(0.5)
    # plain floats/ints that json can write
    import json
    json.dumps(s)


def test_default_and_strict_differ_on_i_start():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]   # PER entity opened by I-
    s = entity_scores(gold, pred)
    assert s["f1"] == 1.0 and s["precision"] == 1.0                   # conlleval reading counts it
    st = s["strict"]
    assert st["precision"] == 1.0 and st["recall"] == pytest.approx(0.5)   # strict: the I- entity is not one
    assert st["f1"] == pytest.approx(2 / 3)
    assert st["per_type"]["PER"]["recall"] == 0.0 and st["per_type"]["LOC"]["f1"] == 1.0
    # I-X after B-Y: default opens a new X entity
    s = entity_scores([["B-LOC", "B-ORG"]], [["B-LOC", "I-ORG"]])
    assert s["f1"] == 1.0 and s["strict"]["f1"] == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # seqeval's macro average of no entity is nan
def test_entity_scores_edge_cases():
    s = entity_scores([["O", "O"]], [["O", "O"]])
    assert (s["precision"], s["recall"], s["f1"], s["support"]) == (0.0, 0.0, 0.0, 0)
    s = entity_scores([["B-PER"]], [["O"]])
    assert s["recall"] == 0.0 and s["support"] == 1
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])
    # tuples are accepted as well as lists
    assert entity_scores([("B-PER",)], [("B-PER",)])["f1"] == 1.0


def test_score_words():
    s = score_words(GOLD, PRED)
    assert s["word_accuracy"] == pytest.approx(7 / 9)
    assert s["f1"] == pytest.approx(0.5)


@pytest.mark.parametrize("tags,spans", [
    (["O", "O"], []),
    (["B-PER", "I-PER", "O", "B-LOC"], [(0, 2, "PER"), (3, 4, "LOC")]),
    (["O", "I-PER", "I-PER"], [(1, 3, "PER")]),                       # I- after O opens
    (["B-LOC", "I-ORG", "I-ORG"], [(0, 1, "LOC"), (1, 3, "ORG")]),     # I- of another type opens
    (["B-PER", "B-PER", "I-PER"], [(0, 1, "PER"), (1, 3, "PER")]),     # B- always opens
    (["I-MISC"], [(0, 1, "MISC")]),
    (["B-ORG", "I-ORG"], [(0, 2, "ORG")]),                             # closed at the end
    (["S-PER", "B-ORG", "E-ORG", "I-ORG"], [(0, 1, "PER"), (1, 3, "ORG"), (3, 4, "ORG")]),  # BIOES reading
])
def test_tags_to_spans(tags, spans):
    assert tags_to_spans(tags) == spans


def test_default_mode_agrees_with_tags_to_spans():
    """seqeval's default mode and the project's span reading count the same entities (random, ill-formed tags)."""
    rng = random.Random(0)
    tagset = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [[rng.choice(tagset) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tagset) for t in g] for g in gold]
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred):
        gs, ps = {tuple(x) for x in tags_to_spans(g)}, {tuple(x) for x in tags_to_spans(p)}
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    s = entity_scores(gold, pred)
    assert s["support"] == n_gold
    assert s["precision"] == pytest.approx(tp / n_pred)
    assert s["recall"] == pytest.approx(tp / n_gold)
