"""common.bootstrap: sentence-level bootstrap intervals for F1 and paired F1 differences."""

from __future__ import annotations

import random

import numpy as np
import pytest

from common.bootstrap import f1_interval, paired_difference, sentence_counts
from common.metrics import entity_scores

# three sentences, counts (tp, n_pred, n_gold) by hand
GOLD = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"], ["O", "O"]]
PRED = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"], ["B-PER", "O"]]
HAND = [(1, 1, 1),    # PER found
        (1, 1, 2),    # LOC found, ORG missed
        (0, 1, 0)]    # spurious PER


def test_sentence_counts_by_hand():
    types, counts = sentence_counts(GOLD, PRED)
    assert types == ["LOC", "ORG", "PER"]
    assert counts.shape == (3, 4, 3)
    assert counts[:, 0].tolist() == [list(c) for c in HAND]
    assert counts[:, 1].tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]     # LOC
    assert counts[:, 2].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]     # ORG
    assert counts[:, 3].tolist() == [[1, 1, 1], [0, 0, 0], [0, 1, 0]]     # PER


# F1 of a resample by how often it drew sentence (0, 1, 2), by hand from HAND:
# tp = c0 + c1, n_pred = c0 + c1 + c2, n_gold = c0 + 2 c1, F1 = 2 tp / (n_pred + n_gold)
HAND_F1 = {(3, 0, 0): 1.0, (0, 3, 0): 6 / 9, (0, 0, 3): 0.0, (2, 1, 0): 6 / 7, (2, 0, 1): 4 / 5,
           (1, 2, 0): 6 / 8, (0, 2, 1): 4 / 7, (1, 0, 2): 2 / 4, (0, 1, 2): 2 / 5, (1, 1, 1): 4 / 6}


def test_f1_interval_small_case_by_hand():
    resamples, seed = 9, 3
    idx = np.random.default_rng(seed).integers(0, 3, size=(resamples, 3))   # the module's documented draw
    expected = [HAND_F1[tuple(np.bincount(row, minlength=3))] for row in idx]
    r = f1_interval(GOLD, PRED, resamples=resamples, seed=seed, confidence=0.8)
    assert r["f1"] == pytest.approx(2 * 2 / (3 + 3))                        # P = R = 2/3
    assert r["low"] == pytest.approx(np.percentile(expected, 10))
    assert r["high"] == pytest.approx(np.percentile(expected, 90))
    assert r["low"] < r["high"]                                              # the draw is not degenerate
    # per type from the same resamples: ORG is never found
    pt = f1_interval(GOLD, PRED, resamples=resamples, seed=seed, per_type=True)["per_type"]
    assert pt["ORG"] == {"f1": 0.0, "low": 0.0, "high": 0.0}
    assert pt["LOC"]["f1"] == 1.0 and pt["PER"]["f1"] == pytest.approx(2 / 3)


def test_paired_difference_small_case_by_hand():
    # model b finds nothing: F1 0 in every resample, so each resample's difference is HAND_F1;
    # it is <= 0 only when the resample drew sentence 2 three times
    nothing = [["O"] * len(g) for g in GOLD]
    resamples, seed = 200, 0
    idx = np.random.default_rng(seed).integers(0, 3, size=(resamples, 3))
    diffs = np.array([HAND_F1[tuple(np.bincount(row, minlength=3))] for row in idx])
    d = paired_difference(GOLD, PRED, nothing, resamples=resamples, seed=seed)
    assert d["diff"] == pytest.approx(2 / 3)
    assert (d["low"], d["high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    n_zero = int(np.sum(np.all(idx == 2, axis=1)))
    assert n_zero > 0                                              # the case is not degenerate
    assert d["p_value"] == pytest.approx(2 * n_zero / resamples)
    swapped = paired_difference(GOLD, nothing, PRED, resamples=resamples, seed=seed)
    assert swapped["diff"] == pytest.approx(-2 / 3) and swapped["p_value"] == d["p_value"]


def _random_tags(rng, n, keep=0.7):
    tagset = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(tagset) for _ in range(rng.randint(1, 12))] for _ in range(n)]
    pred = [[t if rng.random() < keep else rng.choice(tagset) for t in g] for g in gold]
    return gold, pred


def test_point_estimates_equal_seqeval():
    rng = random.Random(1)
    gold, pred_a = _random_tags(rng, 300)
    pred_b = [[t if rng.random() < 0.8 else "O" for t in p] for p in pred_a]
    ref_a, ref_b = entity_scores(gold, pred_a), entity_scores(gold, pred_b)
    r = f1_interval(gold, pred_a, resamples=200, per_type=True)
    assert r["f1"] == pytest.approx(ref_a["f1"])
    assert r["low"] <= r["f1"] <= r["high"]
    assert set(r["per_type"]) == set(ref_a["per_type"])
    for t, v in ref_a["per_type"].items():
        assert r["per_type"][t]["f1"] == pytest.approx(v["f1"])
    d = paired_difference(gold, pred_a, pred_b, resamples=200)
    assert d["diff"] == pytest.approx(ref_a["f1"] - ref_b["f1"])
    assert 0.0 <= d["p_value"] <= 1.0


def test_same_seed_same_answer():
    gold, pred = _random_tags(random.Random(2), 50)
    assert f1_interval(gold, pred, seed=5) == f1_interval(gold, pred, seed=5)
    assert f1_interval(gold, pred, seed=5) != f1_interval(gold, pred, seed=6)


def test_identical_models():
    gold, pred = _random_tags(random.Random(3), 100)
    assert paired_difference(gold, pred, pred) == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_right_everywhere_against_wrong_everywhere():
    rng = random.Random(4)
    gold = [["O"] * rng.randint(0, 3) + ["B-PER", "I-PER"] + ["O"] * rng.randint(0, 3) for _ in range(60)]
    wrong = [[t.replace("PER", "ORG") for t in g] for g in gold]             # every entity mistyped
    d = paired_difference(gold, gold, wrong)
    assert d["diff"] == 1.0 and d["low"] > 0 and d["p_value"] < 0.01
    d = paired_difference(gold, wrong, gold)
    assert d["diff"] == -1.0 and d["high"] < 0 and d["p_value"] < 0.01


def test_paired_difference_antisymmetric():
    rng = random.Random(5)
    gold, a = _random_tags(rng, 200, keep=0.8)
    b = [[t if rng.random() < 0.8 else "O" for t in g] for g in gold]
    ab = paired_difference(gold, a, b, resamples=300, seed=7)
    ba = paired_difference(gold, b, a, resamples=300, seed=7)
    assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["diff"] != 0
    assert (ab["low"], ab["high"]) == pytest.approx((-ba["high"], -ba["low"]))
    assert ab["p_value"] == pytest.approx(ba["p_value"])
    assert ab["low"] <= ab["diff"] <= ab["high"]


def test_errors():
    with pytest.raises(ValueError, match="no sentences"):
        f1_interval([], [])
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        f1_interval([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 1 gold tags but 2"):
        paired_difference([["O"]], [["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="confidence"):
        f1_interval(GOLD, PRED, confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        f1_interval(GOLD, PRED, resamples=0)
