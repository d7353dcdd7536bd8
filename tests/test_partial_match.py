"""common.partial_match: SemEval-2013 9.1 strict/exact/partial/type scores, worked by hand."""

from __future__ import annotations

import random

import pytest

from common.metrics import entity_scores
from common.partial_match import (OUTCOMES, SCHEMES, match_spans, partial_match_scores,
                                  partial_match_span_scores)
from common.spans import tags_to_spans

ZERO = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "correct": 0, "incorrect": 0, "partial": 0,
        "missed": 0, "spurious": 0, "possible": 0, "actual": 0}


def counts(scores: dict) -> tuple:
    """(COR, INC, PAR, MIS, SPU) of one scheme's (or type's) scores."""
    return tuple(scores[k] for k in OUTCOMES)


# The SemEval/nervaluate README scenario table, one scenario per sentence:
# (gold tags, pred tags, {scheme: outcome}).  MIS/SPU rows have one entity, the others one pair.
SCENARIOS = {
    "III missed": (["O", "B-BRAND"], ["O", "O"],                       # TIKOSYN
                   dict.fromkeys(SCHEMES, "missed")),
    "II spurious": (["O", "O"], ["O", "B-BRAND"],                      # healthy
                    dict.fromkeys(SCHEMES, "spurious")),
    "V boundary": (["O", "B-DRUG"], ["B-DRUG", "I-DRUG"],              # (of) warfarin
                   {"type": "correct", "partial": "partial", "exact": "incorrect", "strict": "incorrect"}),
    "IV type": (["B-DRUG"], ["B-BRAND"],                               # propranolol
                {"type": "incorrect", "partial": "correct", "exact": "correct", "strict": "incorrect"}),
    "I correct": (["B-DRUG"], ["B-DRUG"],                              # phenytoin
                  dict.fromkeys(SCHEMES, "correct")),
    "VI both": (["O", "B-GROUP"], ["B-DRUG", "I-DRUG"],                # (oral) contraceptives
                {"type": "incorrect", "partial": "partial", "exact": "incorrect", "strict": "incorrect"}),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_outcomes(name):
    gold, pred, expected = SCENARIOS[name]
    s = partial_match_scores([gold], [pred])
    for scheme in SCHEMES:
        got = {k: s[scheme][k] for k in OUTCOMES if s[scheme][k]}
        assert got == {expected[scheme]: 1}, scheme


# The whole table as one sentence:
#   patient TIKOSYN , healthy of warfarin and propranolol , phenytoin or oral contraceptives
CLASSIC_GOLD = ["O", "B-BRAND", "O", "O", "O", "B-DRUG", "O", "B-DRUG", "O", "B-DRUG", "O", "O", "B-GROUP"]
CLASSIC_PRED = ["O", "O", "O", "B-BRAND", "B-DRUG", "I-DRUG", "O", "B-BRAND", "O", "B-DRUG", "O", "B-DRUG",
                "I-DRUG"]


def test_classic_table_totals():
    assert tags_to_spans(CLASSIC_GOLD) == [(1, 2, "BRAND"), (5, 6, "DRUG"), (7, 8, "DRUG"), (9, 10, "DRUG"),
                                           (12, 13, "GROUP")]
    assert tags_to_spans(CLASSIC_PRED) == [(3, 4, "BRAND"), (4, 6, "DRUG"), (7, 8, "BRAND"), (9, 10, "DRUG"),
                                           (11, 13, "DRUG")]
    s = partial_match_scores([CLASSIC_GOLD], [CLASSIC_PRED])
    # Columns of the scenario table summed by hand (5 gold, 5 predicted entities).  The README's
    # own "putting all together" table does not add up (e.g. 3 COR + 2 INC + 1 MIS = 6 gold for type).
    #                      COR INC PAR MIS SPU   P = R = F1
    expected = {"strict": ((1, 3, 0, 1, 1), 1 / 5),
                "exact": ((2, 2, 0, 1, 1), 2 / 5),
                "partial": ((2, 0, 2, 1, 1), (2 + 0.5 * 2) / 5),
                "type": ((2, 2, 0, 1, 1), 2 / 5)}
    for scheme, (c, prf) in expected.items():
        sc = s[scheme]
        assert counts(sc) == c, scheme
        assert (sc["possible"], sc["actual"]) == (5, 5)
        assert (sc["precision"], sc["recall"], sc["f1"]) == pytest.approx((prf, prf, prf)), scheme
    # per type: pairs and MIS under the gold type, SPU under the predicted type
    pt = {scheme: s[scheme]["per_type"] for scheme in SCHEMES}
    for scheme in SCHEMES:
        assert set(pt[scheme]) == {"BRAND", "DRUG", "GROUP"}
        assert counts(pt[scheme]["BRAND"]) == (0, 0, 0, 1, 1)       # TIKOSYN missed, healthy spurious
    assert counts(pt["strict"]["DRUG"]) == (1, 2, 0, 0, 0)           # phenytoin; warfarin, propranolol
    assert counts(pt["exact"]["DRUG"]) == (2, 1, 0, 0, 0)            # phenytoin, propranolol; warfarin
    assert counts(pt["partial"]["DRUG"]) == (2, 0, 1, 0, 0)
    assert pt["partial"]["DRUG"]["precision"] == pytest.approx(2.5 / 3)
    assert counts(pt["type"]["DRUG"]) == (2, 1, 0, 0, 0)             # warfarin, phenytoin; propranolol
    assert counts(pt["partial"]["GROUP"]) == (0, 0, 1, 0, 0)
    assert pt["partial"]["GROUP"]["f1"] == pytest.approx(0.5)
    for scheme in ("strict", "exact", "type"):
        assert counts(pt[scheme]["GROUP"]) == (0, 1, 0, 0, 0)
        assert pt[scheme]["GROUP"]["f1"] == 0.0


def test_one_prediction_over_two_gold_counted_once():
    # gold: PER [0,1), PER [2,3); one prediction PER [0,3) overlaps both by one word: tie -> leftmost gold
    gold, pred = ["B-PER", "O", "B-PER"], ["B-PER", "I-PER", "I-PER"]
    assert match_spans(tags_to_spans(gold), tags_to_spans(pred)) == ([(0, 0)], [1], [])
    s = partial_match_scores([gold], [pred])
    for scheme in SCHEMES:
        assert (s[scheme]["possible"], s[scheme]["actual"]) == (2, 1), scheme
        assert s[scheme]["missed"] == 1 and s[scheme]["spurious"] == 0
    assert counts(s["strict"]) == (0, 1, 0, 1, 0) and s["strict"]["f1"] == 0.0
    assert counts(s["exact"]) == (0, 1, 0, 1, 0)
    assert counts(s["partial"]) == (0, 0, 1, 1, 0)
    assert (s["partial"]["precision"], s["partial"]["recall"]) == pytest.approx((0.5, 0.25))
    assert counts(s["type"]) == (1, 0, 0, 1, 0)
    assert (s["type"]["precision"], s["type"]["recall"], s["type"]["f1"]) == pytest.approx((1, 0.5, 2 / 3))


def test_largest_overlap_wins():
    # PER [0,4) overlaps gold PER [0,1) by 1 word and gold LOC [2,4) by 2: paired with LOC
    gold, pred = ["B-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "I-PER", "I-PER", "I-PER"]
    assert match_spans(tags_to_spans(gold), tags_to_spans(pred)) == ([(1, 0)], [0], [])
    s = partial_match_scores([gold], [pred])
    assert counts(s["type"]["per_type"]["LOC"]) == (0, 1, 0, 0, 0)
    assert counts(s["type"]["per_type"]["PER"]) == (0, 0, 0, 1, 0)
    # two predictions over one gold entity: the larger overlap is paired, the other is spurious
    gold, pred = ["B-PER", "I-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]
    assert match_spans(tags_to_spans(gold), tags_to_spans(pred)) == ([(0, 1)], [], [0])
    s = partial_match_scores([gold], [pred])
    assert counts(s["partial"]) == (0, 0, 1, 0, 1)
    assert counts(s["type"]) == (1, 0, 0, 0, 1)


def test_exact_boundaries_paired_before_overlaps():
    # Only matters for span input with nested entities (tag input has no overlaps within a side).
    # PER [2,4) overlaps gold ORG [0,10) as much as gold PER [2,4); overlap alone would pick the
    # leftmost (ORG), the exact-boundary rule pairs it with PER
    assert match_spans([(0, 10, "ORG"), (2, 4, "PER")], [(2, 4, "PER")]) == ([(1, 0)], [0], [])
    # same boundaries twice: the same-type gold entity first
    assert match_spans([(0, 2, "LOC"), (0, 2, "PER")], [(0, 2, "PER")]) == ([(1, 0)], [0], [])


def test_wrong_type_covering_gold():
    gold = ["O", "B-PER", "I-PER", "O"]
    pred = ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]           # ORG [0,4) covers PER [1,3)
    s = partial_match_scores([gold], [pred])
    assert counts(s["strict"]) == (0, 1, 0, 0, 0)
    assert counts(s["exact"]) == (0, 1, 0, 0, 0)
    assert counts(s["partial"]) == (0, 0, 1, 0, 0) and s["partial"]["f1"] == pytest.approx(0.5)
    assert counts(s["type"]) == (0, 1, 0, 0, 0) and s["type"]["f1"] == 0.0
    for scheme in SCHEMES:
        # counted once, under the gold type; ORG is listed with nothing counted under it
        assert (s[scheme]["per_type"]["PER"]["possible"], s[scheme]["per_type"]["PER"]["actual"]) == (1, 1)
        assert s[scheme]["per_type"]["ORG"] == ZERO


def test_empty_inputs():
    for gold, pred in [([], []), ([["O", "O"]], [["O", "O"]]), ([[]], [[]])]:
        s = partial_match_scores(gold, pred)
        for scheme in SCHEMES:
            assert s[scheme] == {**ZERO, "per_type": {}}
    s = partial_match_scores([["B-PER"]], [["O"]])                 # nothing predicted
    assert counts(s["strict"]) == (0, 0, 0, 1, 0) and s["strict"]["precision"] == 0.0
    s = partial_match_scores([["O"]], [["B-PER"]])                 # nothing to find
    assert counts(s["partial"]) == (0, 0, 0, 0, 1) and s["partial"]["recall"] == 0.0
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        partial_match_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1"):
        partial_match_scores([["O"], ["O", "O"]], [["O"], ["O"]])


PER_GOLD = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-PER"], ["B-PER", "I-PER", "I-PER"]]
PER_PRED = [["B-PER", "I-PER", "O", "O"], ["B-PER", "I-PER"], ["B-PER", "O", "B-PER"]]


def test_per_type_independent_of_other_types():
    base = partial_match_scores(PER_GOLD, PER_PRED)
    # LOC entities added to both sides (a correct one, a boundary error, a missed and a spurious one),
    # in their own words and in a new sentence
    extra_gold = ["O", "B-LOC", "O", "B-LOC", "I-LOC", "O", "B-LOC", "O"]
    extra_pred = ["O", "B-LOC", "O", "O", "B-LOC", "O", "O", "B-LOC"]
    gold = [g + extra_gold for g in PER_GOLD] + [extra_gold]
    pred = [p + extra_pred for p in PER_PRED] + [extra_pred]
    more = partial_match_scores(gold, pred)
    for scheme in SCHEMES:
        assert more[scheme]["per_type"]["PER"] == base[scheme]["per_type"]["PER"], scheme
        assert set(more[scheme]["per_type"]) == {"PER", "LOC"}
    # hand-worked PER, strict: 4 gold, 4 predicted; s0 [0,2) COR, [3,4) MIS; s1 [1,2) vs [0,2) INC;
    # s2 [0,3) paired with [0,1) (tie, leftmost) INC, pred [2,3) SPU
    assert counts(base["strict"]["per_type"]["PER"]) == (1, 2, 0, 1, 1)
    assert base["strict"]["per_type"]["PER"]["f1"] == pytest.approx(0.25)
    # type: the same pairs, all of the same type: 3 COR
    assert counts(base["type"]["per_type"]["PER"]) == (3, 0, 0, 1, 1)


def test_per_type_independent_of_other_types_random():
    rng = random.Random(1)
    per = ["O", "O", "B-PER", "I-PER"]
    loc = ["O", "O", "B-LOC", "I-LOC"]
    gold = [[rng.choice(per) for _ in range(rng.randint(1, 10))] for _ in range(200)]
    pred = [[t if rng.random() < 0.6 else rng.choice(per) for t in g] for g in gold]
    base = partial_match_scores(gold, pred)
    # LOC words appended after an O, so no LOC entity touches a PER one
    extra = [["O"] + [rng.choice(loc) for _ in range(rng.randint(0, 8))] for _ in gold]
    extra_pred = [[t if rng.random() < 0.6 else rng.choice(loc) for t in e] for e in extra]
    more = partial_match_scores([g + e for g, e in zip(gold, extra)], [p + e for p, e in zip(pred, extra_pred)])
    assert more["strict"]["per_type"]["LOC"]["possible"] > 0
    for scheme in SCHEMES:
        assert more[scheme]["per_type"]["PER"] == base[scheme]["per_type"]["PER"], scheme


def _random_tags(rng, n):
    tagset = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(tagset) for _ in range(rng.randint(1, 12))] for _ in range(n)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tagset) for t in g] for g in gold]
    return gold, pred


def test_strict_equals_seqeval_and_each_entity_counted_once():
    """Random ill-formed tags: strict = seqeval default mode; POS/ACT = number of gold/predicted entities."""
    gold, pred = _random_tags(random.Random(0), 300)
    s = partial_match_scores(gold, pred)
    ref = entity_scores(gold, pred)
    st = s["strict"]
    assert (st["precision"], st["recall"], st["f1"]) == pytest.approx((ref["precision"], ref["recall"], ref["f1"]))
    assert st["possible"] == ref["support"]
    for t, v in ref["per_type"].items():   # per type only recall agrees (wrong-type predictions: see module)
        assert st["per_type"][t]["recall"] == pytest.approx(v["recall"])
    n_gold = sum(len(tags_to_spans(g)) for g in gold)
    n_pred = sum(len(tags_to_spans(p)) for p in pred)
    for scheme in SCHEMES:
        sc = s[scheme]
        assert (sc["possible"], sc["actual"]) == (n_gold, n_pred), scheme
        for k in OUTCOMES:   # per-type counts partition the overall counts
            assert sum(v[k] for v in sc["per_type"].values()) == sc[k]
        if scheme != "partial":
            assert sc["partial"] == 0
    # strict <= exact <= partial and strict <= type, entity by entity
    assert s["strict"]["correct"] <= min(s["exact"]["correct"], s["type"]["correct"])
    assert s["exact"]["correct"] == s["partial"]["correct"]
    assert s["exact"]["f1"] <= s["partial"]["f1"]


def test_span_level_character_spans():
    # character offsets, two documents
    gold = [[(0, 5, "PER"), (10, 16, "LOC")], [(3, 9, "ORG")]]
    pred = [[(0, 5, "PER"), (11, 16, "LOC")], [(3, 9, "PER"), (20, 25, "ORG")]]
    s = partial_match_span_scores(gold, pred)
    assert counts(s["strict"]) == (1, 2, 0, 0, 1)
    assert counts(s["partial"]) == (2, 0, 1, 0, 1)
    assert s["partial"]["precision"] == pytest.approx(2.5 / 4) and s["partial"]["recall"] == pytest.approx(2.5 / 3)
    assert counts(s["type"]["per_type"]["ORG"]) == (0, 1, 0, 0, 1)   # ORG gold vs PER pred; ORG spurious
    assert partial_match_span_scores([[]], [[]])["strict"]["f1"] == 0.0
    with pytest.raises(ValueError, match="empty or reversed gold span"):
        partial_match_span_scores([[(4, 4, "PER")]], [[]])
    with pytest.raises(ValueError, match="1 gold sentences but 0"):
        partial_match_span_scores([[]], [])
