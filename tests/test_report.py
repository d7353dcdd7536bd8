"""Tests of ``ner-report`` (report/): error classes, breakdowns, rendering, end to end."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

from common.metrics import entity_scores
from common.spans import tags_to_spans
from report import analysis, errors
from report.__main__ import main
from report.render import highlight, inline_html, md_escape

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tags(n, *spans):
    """IOB2 tags of length n from (start, end, type) spans."""
    out = ["O"] * n
    for a, b, t in spans:
        for i in range(a, b):
            out[i] = ("B-" if i == a else "I-") + t
    return out


def classes(gold, pred):
    """``(class, gold, pred, partner)`` of each outcome, in a canonical order (compare with :func:`S`)."""
    return S(*((o.cls, o.gold, o.pred, o.partner) for o in errors.classify_spans(gold, pred)))


def S(*items):
    return sorted(items, key=str)


def assert_partition(gold_spans, pred_spans, outcomes):
    """Every gold and every predicted entity is owned by exactly one outcome."""
    owned_gold = [o.gold for o in outcomes if o.gold is not None]
    owned_pred = [o.pred for o in outcomes if o.pred is not None]
    assert sorted(owned_gold) == sorted(set(gold_spans))
    assert sorted(owned_pred) == sorted(set(pred_spans))
    for o in outcomes:
        assert o.cls in errors.CLASSES
        if o.cls == errors.MISSED:
            assert o.pred is None and o.partner is None
        if o.cls == errors.SPURIOUS:
            assert o.gold is None and o.partner is None


# --- error classifier: one known answer per class --------------------------------------------------

def test_correct():
    assert classes([(0, 2, "PER")], [(0, 2, "PER")]) == S(("correct", (0, 2, "PER"), (0, 2, "PER"), None))


def test_wrong_type():
    assert classes([(0, 2, "PER")], [(0, 2, "ORG")]) == S(("wrong_type", (0, 2, "PER"), (0, 2, "ORG"), None))


def test_wrong_boundary():
    assert classes([(1, 3, "LOC")], [(1, 2, "LOC")]) == S(("wrong_boundary", (1, 3, "LOC"), (1, 2, "LOC"), None))
    assert classes([(1, 3, "LOC")], [(0, 4, "LOC")]) == S(("wrong_boundary", (1, 3, "LOC"), (0, 4, "LOC"), None))


def test_wrong_type_and_boundary():
    assert classes([(0, 2, "PER")], [(1, 3, "LOC")]) == S(
        ("wrong_type_boundary", (0, 2, "PER"), (1, 3, "LOC"), None))


def test_missed_and_spurious():
    assert classes([(0, 1, "PER")], []) == S(("missed", (0, 1, "PER"), None, None))
    assert classes([], [(2, 3, "MISC")]) == S(("spurious", None, (2, 3, "MISC"), None))
    # adjacent but not overlapping: one missed, one spurious
    assert classes([(0, 2, "ORG")], [(2, 3, "ORG")]) == S(
        ("missed", (0, 2, "ORG"), None, None), ("spurious", None, (2, 3, "ORG"), None))


def test_one_gold_split_into_two_predictions():
    # gold [New York Stock Exchange]ORG predicted as [New York]ORG [Stock Exchange]ORG
    gold, pred = [(0, 4, "ORG")], [(0, 2, "ORG"), (2, 4, "ORG")]
    out = errors.classify_spans(gold, pred)
    assert classes(gold, pred) == S(
        ("wrong_boundary", None, (2, 4, "ORG"), (0, 4, "ORG")),  # leftover fragment, partner = gold
        ("wrong_boundary", (0, 4, "ORG"), (0, 2, "ORG"), None),  # tie on overlap -> leftmost pairs
    )
    assert_partition(gold, pred, out)


def test_two_gold_merged_into_one_prediction():
    gold, pred = [(0, 1, "PER"), (1, 2, "PER")], [(0, 2, "PER")]
    out = errors.classify_spans(gold, pred)
    assert classes(gold, pred) == S(
        ("wrong_boundary", (0, 1, "PER"), (0, 2, "PER"), None),
        ("wrong_boundary", (1, 2, "PER"), None, (0, 2, "PER")),
    )
    assert_partition(gold, pred, out)


def test_one_to_many_prefers_largest_overlap_then_same_type():
    # gold ORG over words 0-2; predictions ORG on word 0 and LOC on words 1-2: LOC shares more words
    gold, pred = [(0, 3, "ORG")], [(0, 1, "ORG"), (1, 3, "LOC")]
    assert classes(gold, pred) == S(
        ("wrong_boundary", None, (0, 1, "ORG"), (0, 3, "ORG")),
        ("wrong_type_boundary", (0, 3, "ORG"), (1, 3, "LOC"), None),
    )
    # equal overlap: the same-type prediction is paired
    gold, pred = [(0, 2, "ORG")], [(0, 1, "LOC"), (1, 2, "ORG")]
    assert classes(gold, pred) == S(
        ("wrong_boundary", (0, 2, "ORG"), (1, 2, "ORG"), None),
        ("wrong_type_boundary", None, (0, 1, "LOC"), (0, 2, "ORG")),
    )


def test_exact_boundaries_win_over_overlaps():
    # the prediction on 0-2 matches gold 0-2 exactly (other type); gold 2-3 then only overlaps nothing
    gold, pred = [(0, 2, "PER"), (2, 3, "LOC")], [(0, 2, "ORG"), (3, 4, "LOC")]
    assert classes(gold, pred) == S(
        ("missed", (2, 3, "LOC"), None, None),
        ("spurious", None, (3, 4, "LOC"), None),
        ("wrong_type", (0, 2, "PER"), (0, 2, "ORG"), None),
    )


def test_ill_formed_iob2_read_as_conlleval():
    out = errors.classify_sentence(["O", "I-PER", "I-PER"], ["O", "B-PER", "I-PER"])
    assert [(o.cls, o.gold) for o in out] == [("correct", (1, 3, "PER"))]


def test_classes_add_up_and_match_seqeval_on_random_tags():
    rng = random.Random(7)
    vocab = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-MISC"]
    for _ in range(60):
        gold = [[rng.choice(vocab) for _ in range(rng.randint(1, 14))] for _ in range(15)]
        pred = [[rng.choice(vocab) for _ in g] for g in gold]
        outcomes = errors.classify_corpus(gold, pred)
        for i, (g, p) in enumerate(zip(gold, pred)):
            assert_partition(tags_to_spans(g), tags_to_spans(p), [o for o in outcomes if o.sentence == i])
        counts = errors.error_counts(outcomes)
        n_gold = sum(len(tags_to_spans(g)) for g in gold)
        n_pred = sum(len(tags_to_spans(p)) for p in pred)
        assert counts["num_gold"] == n_gold and counts["num_pred"] == n_pred
        assert sum(counts["gold"].values()) == n_gold and sum(counts["pred"].values()) == n_pred
        assert counts["gold"]["spurious"] == 0 and counts["pred"]["missed"] == 0
        scores = entity_scores(gold, pred)
        ours = analysis.prf(counts["outcomes"]["correct"], n_pred, n_gold)
        assert ours["precision"] == pytest.approx(scores["precision"])
        assert ours["recall"] == pytest.approx(scores["recall"])
        assert ours["f1"] == pytest.approx(scores["f1"])
        conf = errors.confusion_matrix(outcomes, ["LOC", "MISC", "ORG", "PER"])
        for t, row in zip(conf["rows"][:-1], conf["matrix"][:-1]):
            assert sum(row) == sum(1 for g in gold for s in tags_to_spans(g) if s[2] == t)
        assert sum(conf["matrix"][-1]) == counts["outcomes"]["spurious"]


def test_confusion_matrix_known_answer():
    gold = [tags(4, (0, 1, "PER"), (2, 4, "ORG")), tags(3, (0, 1, "LOC"))]
    pred = [tags(4, (0, 1, "ORG"), (2, 3, "ORG")), tags(3, (2, 3, "PER"))]
    conf = errors.confusion_matrix(errors.classify_corpus(gold, pred), ["LOC", "ORG", "PER"])
    assert conf["rows"] == ["LOC", "ORG", "PER", "spurious"]
    assert conf["cols"] == ["LOC", "ORG", "PER", "missed"]
    assert conf["matrix"] == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


# --- breakdowns ------------------------------------------------------------------------------------

def test_bucket_names_and_casing():
    assert [analysis.bucket_name(n) for n in (1, 5, 6, 10, 11, 40, 41, 200)] == [
        "1-5", "1-5", "6-10", "6-10", "11-20", "21-40", "41+", "41+"]
    assert analysis.bucket_name(3, analysis.ENT_LEN_BUCKETS) == "3"
    assert analysis.bucket_name(7, analysis.ENT_LEN_BUCKETS) == "4+"
    assert analysis.is_all_caps(["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", "."])
    assert not analysis.is_all_caps(["Peter", "Blackburn"])
    assert not analysis.is_all_caps(["1996-08-22"]) and not analysis.is_all_caps(["A", "."])


def test_breakdowns_known_answers():
    tokens = [["Peter", "Blackburn", "visited", "Paris"], ["BONN", "WINS"]]
    gold = [tags(4, (0, 2, "PER"), (3, 4, "LOC")), tags(2, (0, 1, "LOC"))]
    pred = [tags(4, (0, 2, "PER"), (3, 4, "ORG")), tags(2, (0, 1, "LOC"))]
    seen = analysis.training_entities([(["Paris", "is", "nice"], tags(3, (0, 1, "LOC"))),
                                 (["Bonn"], tags(1, (0, 1, "LOC")))])
    assert seen == {("Paris", "LOC"), ("Bonn", "LOC")}
    bd = analysis.breakdowns(tokens, gold, pred, seen)
    su = bd["seen_in_train"]
    # gold: Peter Blackburn/PER unseen, Paris/LOC seen, BONN/LOC unseen (case matters)
    assert (su["seen"]["num_gold"], su["unseen"]["num_gold"]) == (1, 2)
    assert (su["seen"]["tp"], su["unseen"]["tp"]) == (0, 2)
    assert su["unseen"]["f1"] == pytest.approx(0.8)
    assert su["unseen"]["num_pred"] == 3  # Peter Blackburn/PER, Paris/ORG, BONN/LOC
    assert su["unseen"]["precision"] == pytest.approx(2 / 3)
    cs = bd["casing"]
    assert cs["all caps"]["sentences"] == 1 and cs["all caps"]["f1"] == 1.0
    assert cs["mixed case"]["precision"] == 0.5 and cs["mixed case"]["recall"] == 0.5
    el = bd["entity_length"]
    assert el["2"]["f1"] == 1.0 and el["1"]["num_gold"] == 2 and el["1"]["tp"] == 1
    sl = bd["sentence_length"]
    assert sl["1-5"]["sentences"] == 2 and sl["1-5"]["words"] == 6 and sl["6-10"]["sentences"] == 0


def test_disagreements():
    gold = [tags(3, (0, 1, "PER"), (2, 3, "LOC"))]
    pa = [tags(3, (0, 1, "PER"), (2, 3, "ORG"))]
    pb = [tags(3, (2, 3, "LOC"))]
    d = analysis.disagreements(errors.classify_corpus(gold, pa), errors.classify_corpus(gold, pb))
    assert d["a_only"] == [(0, (0, 1, "PER"), "missed")]
    assert d["b_only"] == [(0, (2, 3, "LOC"), "wrong_type")]
    assert d["both"] == 0 and d["neither"] == 0


# --- rendering --------------------------------------------------------------------------------------

def test_highlight_and_html():
    toks = ["Peter", "Blackburn", "said", "*", "in", "[Brussels]"]
    md = highlight(toks, [(0, 2, "PER"), (5, 6, "LOC")], focus=[(0, 2, "PER")])
    assert md == r"**[Peter Blackburn]{PER}** said \* in [\[Brussels\]]{LOC}"
    h = inline_html(md)
    assert "<strong><mark" in h and "Peter Blackburn<sub>PER</sub></mark></strong>" in h
    assert "[Brussels]<sub>LOC</sub>" in h and " * in " in h
    assert inline_html(md_escape("a_b <x> | y")) == "a_b &lt;x&gt; | y"
    assert highlight(list("abcdef"), [(0, 2, "X")], window=(1, 4)) == "… [b]{X} c d …"


# --- end to end ---------------------------------------------------------------------------------------

TEST_FOLD = [
    (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    (["The", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with", "German", "advice"],
     ["O", "B-ORG", "I-ORG", "O", "O", "O", "O", "O", "O", "B-MISC", "O"]),
    (["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", ",", "CHINA", "IN", "SURPRISE", "DEFEAT", "."],
     ["O", "O", "B-LOC", "O", "O", "O", "O", "B-PER", "O", "O", "O", "O"]),
    (["Nadim", "Ladki", "lives", "in", "New", "York", "City", "."],
     ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"]),
]

# deliberate errors per model (sentence -> predicted tags); other sentences are predicted right
ERRORS = {
    "alpha": {
        0: ["B-ORG", "O", "B-ORG", "O", "O", "O", "B-MISC", "O", "O"],          # wrong type (German MISC->ORG)
        1: ["B-PER", "O"],                                                     # wrong boundary
        4: ["O", "O", "O", "O", "O", "O", "O", "B-PER", "O", "O", "O", "O"],    # JAPAN missed
        5: ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "B-LOC", "B-MISC"],   # split LOC + spurious "."
    },
    "beta": {
        2: ["O", "O"],                                                         # missed
        3: ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "O", "O", "O", "B-MISC", "O"],  # wrong boundary
        4: ["O", "O", "B-LOC", "O", "O", "O", "O", "B-LOC", "O", "O", "O", "O"],  # wrong type (CHINA)
        5: ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "O"],           # wrong type and boundary
    },
}
EXPECTED_CLASSES = {
    "alpha": {"correct": 7, "wrong_type": 1, "wrong_boundary": 3, "wrong_type_boundary": 0, "missed": 1,
              "spurious": 1},
    "beta": {"correct": 7, "wrong_type": 1, "wrong_boundary": 1, "wrong_type_boundary": 1, "missed": 1,
             "spurious": 0},
}


def _write_synthetic_run(run, name, model_type):
    os.makedirs(os.path.join(run, "predictions"))
    with open(os.path.join(run, "config.toml"), "w") as f:
        f.write(f'[model]\ntype = "{model_type}"\n')
    with open(os.path.join(run, "train_log.jsonl"), "w") as f:
        for step in range(0, 101, 10):
            f.write(json.dumps({"event": "step", "step": step, "epoch": 0, "loss": 2.0 / (1 + step / 10),
                                "lr": 1e-3, "tokens_per_s": 500.0, "elapsed_s": step * 0.5}) + "\n")
            if step and step % 50 == 0:
                f1 = 0.4 + step / 200
                f.write(json.dumps({"event": "eval", "step": step, "epoch": 0, "fold": "valid",
                                    "token_accuracy": 0.9, "precision": f1, "recall": f1, "f1": f1,
                                    "per_type": {}, "strict": {}, "elapsed_s": step * 0.5}) + "\n")
    with open(os.path.join(run, "metrics.json"), "w") as f:
        json.dump({"model_type": model_type, "num_parameters": 12345 if model_type == "bilstm" else 4_400_000,
                   "train_wall_s": 50.0, "train_tokens_per_s": 1234.5, "best_step": 100}, f)
    with open(os.path.join(run, "predictions", "test.jsonl"), "w") as f:
        for i, (toks, gold) in enumerate(TEST_FOLD):
            f.write(json.dumps({"index": i, "tokens": toks, "gold": gold, "pred": ERRORS[name].get(i, gold)}) + "\n")


@pytest.fixture
def synthetic_runs(tmp_path):
    """``(run_dirs, data_path)``: two synthetic run folders (saved predictions with the errors above)."""
    data = {
        "train": [{"tokens": ["Peter", "Blackburn", "met", "EU", "officials"],
                   "tags": ["B-PER", "I-PER", "O", "B-ORG", "O"]},
                  {"tokens": ["German", "beef"], "tags": ["B-MISC", "O"]}],
        "valid": [{"tokens": list(t), "tags": list(g)} for t, g in TEST_FOLD[:2]],
        "test": [{"tokens": list(t), "tags": list(g)} for t, g in TEST_FOLD],
    }
    data_path = tmp_path / "data.json"
    data_path.write_text(json.dumps(data))
    runs = []
    for name, mt in (("alpha", "bilstm"), ("beta", "bert")):
        run = tmp_path / "runs" / name
        _write_synthetic_run(str(run), name, mt)
        runs.append(str(run))
    return runs, str(data_path)


@pytest.fixture(params=["synthetic", pytest.param("trained", marks=pytest.mark.slow)])
def report_runs(request):
    """``(run_dirs, data_path)`` for the end-to-end tests: the synthetic runs, and two real tiny training runs
    (``tiny_exports`` from tests/tiny_models.py: BiLSTM and BERT, with predictions and exports)."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_runs")
    exports = request.getfixturevalue("tiny_exports")
    return [str(exports["bilstm"]), str(exports["bert"])], str(request.getfixturevalue("tiny_data_json"))


def _predictions(run):
    with open(os.path.join(run, "predictions", "test.jsonl")) as f:
        recs = sorted((json.loads(line) for line in f), key=lambda r: r["index"])
    return [r["gold"] for r in recs], [r["pred"] for r in recs]


def test_end_to_end(report_runs, tmp_path):
    runs, data = report_runs
    out = tmp_path / "report"
    assert main(runs + ["--data", data, "--fold", "test", "--out", str(out), "--examples", "2"]) == 0
    for rel in ("report.md", "report.html", "report.json", "figures/per_type.png", "figures/learning_curves.png",
                "figures/error_classes.png", "figures/confusion.png", "figures/breakdowns.png"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["models"]) == [os.path.basename(r) for r in runs]
    for run in runs:
        name = os.path.basename(run)
        m = rep["models"][name]
        gold, pred = _predictions(run)
        ref = entity_scores(gold, pred)
        for key in ("precision", "recall", "f1", "support"):
            assert m["scores"][key] == pytest.approx(ref[key])
            assert m["scores"]["strict"][key] == pytest.approx(ref["strict"][key])
        for t, v in ref["per_type"].items():
            assert m["scores"]["per_type"][t]["f1"] == pytest.approx(v["f1"])
        words = sum(len(g) for g in gold)
        assert m["scores"]["token_accuracy"] == pytest.approx(
            sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / words)
        err = m["errors"]
        n_gold = sum(len(tags_to_spans(g)) for g in gold)
        n_pred = sum(len(tags_to_spans(p)) for p in pred)
        assert err["num_gold"] == n_gold == sum(err["gold"].values())
        assert err["num_pred"] == n_pred == sum(err["pred"].values())
        if name in EXPECTED_CLASSES:  # the synthetic runs' known answer
            assert err["outcomes"] == EXPECTED_CLASSES[name]
        assert err["outcomes"]["correct"] / n_pred == pytest.approx(ref["precision"])
        conf = m["confusion"]
        assert sum(map(sum, conf["matrix"][:-1])) == n_gold
        assert m["num_parameters"] is not None and m["train_wall_s"] is not None
        assert "seen_in_train" in m["breakdowns"]
        if name in EXPECTED_CLASSES:
            assert m["learning"]["best_valid_f1"] == pytest.approx(0.9)
        else:  # a real run: its export was timed
            assert m["learning"]["evals_logged"] > 0
            assert m["tagging"]["words_per_s"] > 0
            assert not m["notes"]
    assert rep["disagreements"][0]["comparable"]
    assert rep["hints"] and all(any(ch.isdigit() for ch in h) for h in rep["hints"])
    md = (out / "report.md").read_text()
    for needle in ("Headline", "Learning curves", "wrong type and boundary", "Where the models disagree",
                   "seen vs unseen", "Improvement hints", "](figures/confusion.png)"):
        assert needle in md, needle
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<mark" in html


def test_known_examples_in_markdown(synthetic_runs, tmp_path):
    runs, data = synthetic_runs
    out = tmp_path / "r"
    assert main(runs + ["--data", data, "--out", str(out), "--no-speed"]) == 0
    md = (out / "report.md").read_text()
    assert "**[German]{MISC}**" in md and "**[German]{ORG}**" in md  # alpha's wrong type, highlighted
    assert "[New York]{LOC} **[City]{LOC}**" in md  # alpha's split entity: the leftover fragment in bold


def test_console_script(synthetic_runs, tmp_path):
    runs, data = synthetic_runs
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    exe = shutil.which("ner-report")
    cmd = [exe] if exe else [sys.executable, "-m", "report"]
    res = subprocess.run(cmd + runs + ["--data", data, "--fold", "test", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "best F1" in res.stdout
    assert (out / "report.json").is_file()


def test_run_without_predictions_or_usable_export(synthetic_runs, tmp_path):
    runs, data = synthetic_runs
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    assert main([str(empty), "--data", data, "--out", str(tmp_path / "x")]) == 2
    (empty / "export").mkdir()  # an export folder that cannot be loaded: a clean error, not a traceback
    assert main([str(empty), "--data", data, "--out", str(tmp_path / "x")]) == 2
    # with saved predictions, an unusable export only costs the speed measurement
    shutil.copytree(os.path.join(runs[0], "predictions"), empty / "predictions")
    assert main([str(empty), "--data", data, "--out", str(tmp_path / "y")]) == 0
    rep = json.loads((tmp_path / "y" / "report.json").read_text())
    m = rep["models"]["empty"]
    assert m["tagging"] is None and any("speed not measured" in n for n in m["notes"])
    assert m["num_parameters"] is None  # no metrics.json: shown as n/a
    assert "| n/a |" in (tmp_path / "y" / "report.md").read_text()


def test_single_run_without_data(synthetic_runs, tmp_path):
    runs, _ = synthetic_runs
    out = tmp_path / "one"
    assert main([runs[1], "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert "seen_in_train" not in rep["models"]["beta"]["breakdowns"] and rep["disagreements"] == []
    assert "Seen/unseen: n/a" in (out / "report.md").read_text()


def _export_only(tiny_exports, tmp_path):
    """A copy of the tiny BiLSTM run without its saved predictions (the report scores its export)."""
    run = tmp_path / "bilstm_export_only"
    shutil.copytree(tiny_exports["bilstm"], run, ignore=shutil.ignore_patterns("predictions", "checkpoints"))
    return run


@pytest.mark.slow
def test_export_scores_fold_when_predictions_are_missing(tiny_exports, tiny_data_json, tmp_path):
    run = _export_only(tiny_exports, tmp_path)
    out = tmp_path / "rep"
    assert main([str(tiny_exports["bilstm"]), str(run), "--data", str(tiny_data_json), "--out", str(out),
                 "--names", "saved,export"]) == 0
    rep = json.loads((out / "report.json").read_text())
    saved, export = rep["models"]["saved"], rep["models"]["export"]
    assert saved["source"] == "predictions" and export["source"] == "export"
    assert export["scores"]["f1"] == pytest.approx(saved["scores"]["f1"])
    assert export["errors"] == saved["errors"]
    gold, pred = _predictions(str(tiny_exports["bilstm"]))
    assert export["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
    assert export["tagging"]["sentences"] == len(gold) and export["tagging"]["words_per_s"] > 0
    d = rep["disagreements"][0]
    assert d["comparable"] and d["a_only_correct"] == d["b_only_correct"] == 0


@pytest.mark.slow
def test_precision_check(tiny_exports, tiny_data_json, tmp_path):
    """--precision-check: each export scored with fp32 and bf16 weights; its fp32 F1 is the headline F1."""
    out = tmp_path / "rep"
    assert main([str(tiny_exports["bilstm"]), "--data", str(tiny_data_json), "--out", str(out), "--no-speed",
                 "--precision-check"]) == 0
    rep = json.loads((out / "report.json").read_text())
    check = rep["precision_check"]["bilstm"]
    assert check["fp32_f1"] == pytest.approx(rep["models"]["bilstm"]["scores"]["f1"])
    assert 0 <= check["bf16_f1"] <= 1 and 0 <= check["identical_spans"] <= 1
    assert "Precision check (fp32 against bf16)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_max_tokens_batches_the_export_without_changing_its_tags(tiny_exports, tiny_data_json, tmp_path):
    """--max-tokens 8 (a window or two a batch): the export's tags equal the run's saved predictions."""
    run = _export_only(tiny_exports, tmp_path)
    out = tmp_path / "rep"
    assert main([str(tiny_exports["bilstm"]), str(run), "--data", str(tiny_data_json), "--out", str(out),
                 "--names", "saved,export", "--max-tokens", "8"]) == 0
    rep = json.loads((out / "report.json").read_text())
    saved, export = rep["models"]["saved"], rep["models"]["export"]
    assert export["source"] == "export" and export["tagging"]["max_tokens"] == 8
    assert export["scores"] == saved["scores"] and export["errors"] == saved["errors"]
    assert "batches of ≤8 pieces" in (out / "report.md").read_text()


@pytest.mark.slow
def test_speed_sentences_times_the_first_n_and_scores_the_whole_fold(tiny_exports, tiny_data_json, tmp_path):
    from common.data import load_folds

    out = tmp_path / "rep"
    assert main([str(tiny_exports["bilstm"]), "--data", str(tiny_data_json), "--out", str(out),
                 "--speed-sentences", "5"]) == 0
    m = json.loads((out / "report.json").read_text())["models"]["bilstm"]
    words = sum(len(s.tokens) for s in load_folds(str(tiny_data_json), folds=("test",))["test"][:5])
    assert m["tagging"]["sentences"] == 5 and m["tagging"]["words"] == words
    gold, pred = _predictions(str(tiny_exports["bilstm"]))
    assert len(gold) > 5 and m["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
    assert f"**bilstm** 5 sentences / {words:,} words in" in (out / "report.md").read_text()


def test_no_html_embed_links_the_figure_files(synthetic_runs, tmp_path):
    runs, data = synthetic_runs
    out = tmp_path / "linked"
    assert main(runs + ["--data", data, "--out", str(out), "--no-speed", "--no-html-embed"]) == 0
    html = (out / "report.html").read_text()
    figures = json.loads((out / "report.json").read_text())["figures"]
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert "data:image" not in html
    assert figures and sorted(sources) == sorted(figures.values())
    assert all(s.startswith("figures/") for s in sources)
    for src in sources:
        assert (out / src).read_bytes().startswith(b"\x89PNG"), src
    assert not (tmp_path / "linked.tmp").exists()
