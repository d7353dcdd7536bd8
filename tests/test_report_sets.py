"""Tests of ``ner-report``'s statistics and evaluation sets: partial-match scores, bootstrap intervals,
several ``--data`` sets (shared types), and ``--tagged`` comparisons of two ``ner-tag`` outputs.

Runs are written by hand (no training); tagging "with the export" is replaced by a fake tagger
(:func:`fake_time_export`) that predicts the gold entities of the types in its labels, with per-run
overrides, so every expected number is known.
"""

from __future__ import annotations

import json
import os

import pytest

from common.bootstrap import f1_interval, paired_difference
from common.metrics import entity_scores
from common.partial_match import partial_match_scores, partial_match_span_scores
from report import runs as report_runs
from report import sets as report_sets
from report.__main__ import main
from report.sections_stats import difference_sentence
from taggers.export import FORMAT_VERSION


def tags(n, *spans):
    out = ["O"] * n
    for a, b, t in spans:
        out[a:b] = [f"B-{t}"] + [f"I-{t}"] * (b - a - 1)
    return out


def fold(rows):
    return [{"tokens": toks, "tags": tags(len(toks), *spans)} for toks, spans in rows]


SET_A_TEST = [
    (["Peter", "Blackburn", "visited", "Paris", "."], [(0, 2, "PER"), (3, 4, "LOC")]),
    (["The", "European", "Commission", "met", "in", "Berlin"], [(1, 3, "ORG"), (5, 6, "LOC")]),
    (["German", "beef", "is", "banned"], [(0, 1, "MISC")]),
    (["Angela", "Merkel", "spoke"], [(0, 2, "PER")]),
    (["Reuters", "reported", "from", "Tokyo"], [(0, 1, "ORG"), (3, 4, "LOC")]),
]
SET_A_TRAIN = [(["Peter", "Blackburn", "met", "Reuters"], [(0, 2, "PER"), (3, 4, "ORG")]),
               (["German", "Paris"], [(0, 1, "MISC"), (1, 2, "LOC")])]
# a second set: no MISC, an extra type EVENT
SET_B_TEST = [
    (["Maria", "Lopez", "ran", "the", "Boston", "Marathon"], [(0, 2, "PER"), (4, 6, "EVENT")]),
    (["Berlin", "hosted", "Bayer"], [(0, 1, "LOC"), (2, 3, "ORG")]),
    (["John", "left", "Tokyo"], [(0, 1, "PER"), (2, 3, "LOC")]),
    (["The", "Olympic", "Games", "opened"], [(1, 3, "EVENT")]),
]
SET_B_TRAIN = [(["Bayer", "sponsors", "the", "Olympic", "Games"], [(0, 1, "ORG"), (3, 5, "EVENT")])]
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
# what each fake export gets wrong: word -> tag (gold entities of other words are predicted right)
OVERRIDES = {
    "alpha": {"Berlin": "B-MISC", "Olympic": "B-MISC", "Games": "I-MISC", "Tokyo": "B-ORG"},
    "beta": {"Merkel": "O"},
}


def fake_predict(name, tokens, gold):
    keep = {t.partition("-")[2] for t in LABELS if t != "O"}
    pred = [g if g == "O" or g.partition("-")[2] in keep else "O" for g in gold]
    return [OVERRIDES[name].get(w, p) for w, p in zip(tokens, pred)]


def fake_time_export(export_dir, sentences, args):
    name = os.path.basename(os.path.dirname(export_dir))
    tags_out = [fake_predict(name, s.tokens, s.tags) for s in sentences]
    words = sum(len(s.tokens) for s in sentences)
    return {"words_per_s": 1000.0, "sentences_per_s": 100.0, "words": words, "sentences": len(sentences),
            "seconds": words / 1000.0, "device": "cpu", "threads": 1, "max_tokens": args.max_tokens}, tags_out


@pytest.fixture
def fake_exports(monkeypatch):
    monkeypatch.setattr(report_runs, "time_export", fake_time_export)


def write_set(path, test_rows, train_rows):
    path.write_text(json.dumps({"train": fold(train_rows), "valid": fold(test_rows[:1]), "test": fold(test_rows)}))
    return str(path)


def write_run(root, name, data_path, test_rows=SET_A_TEST, export=True, predictions=True):
    """A run folder trained on ``data_path`` (config), with saved test predictions and/or a (fake) export."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'[model]\ntype = "bilstm"\n\n[data]\npath = "{data_path}"\n')
    (run / "metrics.json").write_text(json.dumps({"model_type": "bilstm", "num_parameters": 1000}))
    if predictions:
        (run / "predictions").mkdir()
        with open(run / "predictions" / "test.jsonl", "w") as f:
            for i, (toks, spans) in enumerate(test_rows):
                gold = tags(len(toks), *spans)
                f.write(json.dumps({"index": i, "tokens": toks, "gold": gold,
                                    "pred": fake_predict(name, toks, gold)}) + "\n")
    if export:
        (run / "export").mkdir()
        (run / "export" / "ner_config.json").write_text(
            json.dumps({"format_version": FORMAT_VERSION, "model_type": "bilstm", "labels": LABELS, "model": {}}))
    return str(run)


@pytest.fixture
def two_sets(tmp_path, fake_exports):
    """``(runs, set_a, set_b)``: alpha and beta trained on set A (saved predictions + fake exports)."""
    a = write_set(tmp_path / "news.json", SET_A_TEST, SET_A_TRAIN)
    b = write_set(tmp_path / "sports.json", SET_B_TEST, SET_B_TRAIN)
    runs = [write_run(tmp_path / "runs", n, a) for n in ("alpha", "beta")]
    return runs, a, b


def gold_pred(rows, name, keep=None):
    gold = [tags(len(t), *s) for t, s in rows]
    pred = [fake_predict(name, t, g) for (t, _), g in zip(rows, gold)]
    if keep is not None:
        gold = [report_sets.keep_types(g, set(keep)) for g in gold]
        pred = [report_sets.keep_types(p, set(keep)) for p in pred]
    return gold, pred


def assert_close(got, want, path="report"):
    """Nested dicts/lists equal, floats to 1e-9 (``pytest.approx`` does not nest)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-9), path
    else:
        assert got == want, path


def run_report(args, out):
    assert main(args + ["--out", str(out), "--no-speed"]) == 0
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


# --- 1. partial-match scores -----------------------------------------------------------------------------

def test_partial_match_scores_in_report(two_sets, tmp_path):
    runs, a, _ = two_sets
    rep, md = run_report(runs + ["--data", a, "--bootstrap", "0"], tmp_path / "r")
    for name in ("alpha", "beta"):
        gold, pred = gold_pred(SET_A_TEST, name)
        pm = rep["models"][name]["partial_match"]
        assert_close(pm, partial_match_scores(gold, pred))
        assert pm["strict"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
        assert set(pm["partial"]["per_type"]) == {"LOC", "MISC", "ORG", "PER"}
    # alpha: Berlin LOC -> MISC (wrong type, same boundaries), Tokyo LOC -> ORG: strict 6/8, exact 8/8
    assert rep["models"]["alpha"]["partial_match"]["strict"]["correct"] == 6
    assert rep["models"]["alpha"]["partial_match"]["exact"]["f1"] == pytest.approx(1.0)
    # the caveat: a wrong-type prediction counts against the gold type's (LOC) precision, not ORG's
    pt = rep["models"]["alpha"]["partial_match"]["strict"]["per_type"]
    assert pt["LOC"]["precision"] == pytest.approx(1 / 3) and pt["ORG"]["precision"] == pytest.approx(1.0)
    assert "Partial-match scores (SemEval-2013)" in md and "*partial*: correct with the gold boundaries" in md
    assert "lowers the *gold* type's precision" in md and "Per type (strict and partial)" in md
    assert "F1 95% CI" not in md and rep["models"]["alpha"]["f1_interval"] is None and rep["f1_differences"] == []
    assert rep["bootstrap"]["resamples"] == 0 and "partial_match" in rep["definitions"]


# --- 2. bootstrap intervals ---------------------------------------------------------------------------------

def test_bootstrap_numbers_equal_f1_interval(two_sets, tmp_path):
    runs, a, _ = two_sets
    rep, md = run_report(runs + ["--data", a], tmp_path / "r")
    assert rep["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95, "unit": "sentence",
                                "interval": "percentile"}
    preds = {}
    for name in ("alpha", "beta"):
        gold, preds[name] = gold_pred(SET_A_TEST, name)
        ref = f1_interval(gold, preds[name], 1000, 0, 0.95, per_type=True)
        assert_close(rep["models"][name]["f1_interval"], ref)
        assert rep["models"][name]["f1_interval"]["f1"] == pytest.approx(rep["models"][name]["scores"]["f1"])
    (d,) = rep["f1_differences"]
    ref = paired_difference(gold, preds["alpha"], preds["beta"], 1000, 0)
    assert (d["a"], d["b"]) == ("alpha", "beta")
    assert {k: d[k] for k in ref} == pytest.approx(ref)
    assert d["more_than_noise"] == (ref["low"] > 0 or ref["high"] < 0)
    assert "| F1 95% CI |" in md and "Is the difference more than noise?" in md
    assert "F1 of **alpha** minus **beta**" in md
    # one set: no cross-set section, no set names in the headings
    assert "Scores across evaluation sets" not in md and "— set" not in md
    assert sum(line.startswith("## ") for line in md.splitlines()) == 8
    assert list(rep["sets"]) == ["news.json"] and rep["sets"]["news.json"]["models"] == rep["models"]
    # deterministic: the same command gives the same numbers; another seed and count other ones
    rep2, md2 = run_report(runs + ["--data", a], tmp_path / "r2")
    assert md2.split("\n", 3)[3] == md.split("\n", 3)[3]    # all but the "Generated <time>" line
    assert {k: v for k, v in rep2.items() if k != "generated"} == {k: v for k, v in rep.items() if k != "generated"}
    rep3, _ = run_report(runs + ["--data", a, "--bootstrap", "200", "--bootstrap-seed", "5"], tmp_path / "r3")
    gold, pred = gold_pred(SET_A_TEST, "beta")
    assert_close(rep3["models"]["beta"]["f1_interval"], f1_interval(gold, pred, 200, 5, per_type=True))


def test_clear_difference_is_more_than_noise(tmp_path, fake_exports, monkeypatch):
    d = {"a": "A", "b": "B", "diff": 0.02, "low": 0.005, "high": 0.031, "p_value": 0.0, "more_than_noise": True}
    s = difference_sentence(d, 1000)
    assert "+2.00 points" in s and "[+0.50, +3.10]" in s and "p < 0.001" in s and "**A** is better" in s
    d.update(diff=-0.01, low=-0.03, high=0.01, p_value=0.31, more_than_noise=False)
    assert "p = 0.310" in difference_sentence(d, 1000) and "within the noise" in difference_sentence(d, 1000)
    # 40 sentences: delta (perfect) beats gamma (wrong on every LOC) everywhere: the interval excludes 0
    rows = [(["Paris", "and", "Peter"], [(0, 1, "LOC"), (2, 3, "PER")])] * 40
    data = write_set(tmp_path / "d.json", rows, rows[:2])
    monkeypatch.setitem(OVERRIDES, "gamma", {"Paris": "B-ORG"})
    monkeypatch.setitem(OVERRIDES, "delta", {})
    runs = [write_run(tmp_path / "runs", n, data, rows) for n in ("gamma", "delta")]
    rep, md = run_report(runs + ["--data", data], tmp_path / "r")
    (d,) = rep["f1_differences"]
    assert d["diff"] == pytest.approx(0.5 - 1.0) and d["high"] < 0 and d["more_than_noise"]
    assert "so **delta** is better by more than the noise" in md


# --- 3. several evaluation sets -----------------------------------------------------------------------------

def test_set_specs_names_and_the_scoring_rule(tmp_path):
    assert report_sets.parse_data_spec("wnut=data/wnut.json") == ("wnut", "data/wnut.json")
    assert report_sets.parse_data_spec("data/wnut.json") == (None, "data/wnut.json")
    assert report_sets.split_fold("data/wnut.json#valid", "test") == ("data/wnut.json", "valid")
    assert report_sets.split_fold("data/wnut.json", "test") == ("data/wnut.json", "test")
    odd = tmp_path / "a=b.json"
    odd.write_text("{}")
    assert report_sets.parse_data_spec(str(odd)) == (None, str(odd))      # an existing path wins
    assert report_sets.set_names([(None, "x/news.json"), ("b", "y"), (None, "z/news.json")]) == [
        "news.json", "b", "news.json_2"]
    with pytest.raises(report_runs.ReportError, match="given twice"):
        report_sets.set_names([("a", "x"), ("a", "y")])
    scored, left = report_sets.scored_types(["EVENT", "LOC", "PER"], {"m": ["LOC", "MISC", "PER"]})
    assert scored == ["EVENT", "LOC", "PER"]   # every type of the set, whatever the model knows
    assert left == {"not_in_models": {"EVENT": ["m"]}, "not_in_set": {"MISC": ["m"]}}
    assert report_sets.scored_types(["LOC"], {"m": ["LOC"]}) == (None, {})
    assert report_sets.keep_types(["B-PER", "I-MISC", "I-PER", "O"], {"PER"}) == ["B-PER", "O", "I-PER", "O"]


def test_two_sets(two_sets, tmp_path):
    runs, a, b = two_sets
    rep, md = run_report(runs + ["--data", a, "--data", f"sports={b}"], tmp_path / "r")
    assert list(rep["sets"]) == ["news.json", "sports"]
    news, sports = rep["sets"]["news.json"], rep["sets"]["sports"]
    # the first set is the main one, scored on the saved predictions (the runs were trained on it)
    assert rep["models"] == news["models"] and rep["data"] == a
    assert news["sources"] == {"alpha": "predictions", "beta": "predictions"} and news["left_out"] == {}
    # the second set: tagged by the exports, scored as the first (EVENT missed, MISC predictions false positives)
    assert sports["sources"] == {"alpha": "export", "beta": "export"}
    assert sports["types_annotated"] == ["EVENT", "LOC", "ORG", "PER"]
    assert sports["types_scored"] == ["EVENT", "LOC", "ORG", "PER"]
    assert sports["left_out"] == {"not_in_models": {"EVENT": ["alpha", "beta"]},
                                  "not_in_set": {"MISC": ["alpha", "beta"]}}
    keep = None
    for name in ("alpha", "beta"):
        gold, pred = gold_pred(SET_B_TEST, name, keep)
        m = sports["models"][name]
        assert m["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
        assert_close(m["f1_interval"], f1_interval(gold, pred, 1000, 0, per_type=True))
        assert_close(m["partial_match"], partial_match_scores(gold, pred))
        assert rep["cross_set"][name]["sports"]["f1"] == pytest.approx(m["scores"]["f1"])
        assert rep["cross_set"][name]["news.json"]["low"] == pytest.approx(rep["models"][name]["f1_interval"]["low"])
    # alpha on sports: Berlin LOC -> MISC, Tokyo LOC -> ORG, a MISC on the EVENT Olympic Games;
    # both EVENTs missed by both models
    assert sports["models"]["alpha"]["errors"]["num_gold"] == 7 and sports["models"]["alpha"]["errors"]["num_pred"] == 6
    assert sports["models"]["beta"]["scores"]["f1"] == pytest.approx(2 * 5 / 12)
    assert "EVENT" in sports["types"] and "MISC" in sports["types"]
    (d,) = sports["f1_differences"]
    (gold, pa), (_, pb) = gold_pred(SET_B_TEST, "alpha", keep), gold_pred(SET_B_TEST, "beta", keep)
    assert {k: d[k] for k in ("diff", "low", "high", "p_value")} == pytest.approx(paired_difference(gold, pa, pb))
    # the document: the cross-set table on top, the first set in full, a section for the second
    assert md.index("1. Scores across evaluation sets") < md.index("2. Headline — set **news.json**")
    assert "| Model | news.json F1 [95% CI] | sports F1 [95% CI] |" in md
    assert "Set **sports**" in md and "Partial-match scores (SemEval-2013)" in md.split("Set **sports**")[1]
    assert "EVENT is not in the labels of **alpha**, **beta** (counted as missed); MISC is predicted by **alpha**, " \
           "**beta** but not annotated in the set (counted as false positives)" in md
    assert report_sets.SCORING_RULE in md and rep["scoring_rule"] == report_sets.SCORING_RULE
    assert md.index("Set **sports**") < md.index("Improvement hints")
    assert md.count("Where the models disagree") == 1   # the error analysis is the first set's


def test_home_set_follows_the_config_and_runs_without_export(two_sets, tmp_path, monkeypatch):
    runs, a, b = two_sets
    # gamma was trained on the sports set (its predictions are of sports); delta has no export
    monkeypatch.setitem(OVERRIDES, "gamma", {"Bayer": "B-LOC"})
    monkeypatch.setitem(OVERRIDES, "delta", {})
    gamma = write_run(tmp_path / "runs", "gamma", b, SET_B_TEST)
    delta = write_run(tmp_path / "runs", "delta", a, export=False)
    rep, md = run_report([runs[0], gamma, delta, "--data", a, "--data", b], tmp_path / "r")
    news, sports = rep["sets"]["news.json"], rep["sets"]["sports.json"]
    assert news["sources"] == {"alpha": "predictions", "gamma": "export", "delta": "predictions"}
    assert sports["sources"] == {"alpha": "export", "gamma": "predictions"}
    assert "delta" in sports["not_scored"] and rep["cross_set"]["delta"]["sports.json"] is None
    assert "| **delta** | **" in md and "| n/a |" in md and "**delta** not scored" in md
    # gamma's saved predictions on sports are scored by the same rule as alpha's tagging: all of the set's types
    assert sports["types_scored"] == ["EVENT", "LOC", "ORG", "PER"]
    assert sports["left_out"]["not_in_models"] == {"EVENT": ["alpha", "gamma"]}
    gold, pred = gold_pred(SET_B_TEST, "gamma")
    assert sports["models"]["gamma"]["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])


def test_conll_folder_set_and_single_fold(two_sets, tmp_path):
    runs, a, _ = two_sets
    folder = tmp_path / "conll"
    folder.mkdir()
    with open(folder / "test.txt", "w") as f:
        for toks, spans in SET_B_TEST:
            f.writelines(f"{w} {t}\n" for w, t in zip(toks, tags(len(toks), *spans)))
            f.write("\n")
    rep, md = run_report(runs + ["--data", a, "--data", f"cn={folder}"], tmp_path / "r")
    cn = rep["sets"]["cn"]   # no train fold: no seen/unseen breakdown there, the rest as for JSON
    assert cn["sentences"] == 4 and cn["types_scored"] == ["EVENT", "LOC", "ORG", "PER"]
    assert "seen_in_train" not in cn["models"]["alpha"]["breakdowns"]
    gold, pred = gold_pred(SET_B_TEST, "beta")
    assert cn["models"]["beta"]["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])


def test_two_folds_of_one_file(two_sets, tmp_path):
    """``PATH#FOLD`` scores another fold of the same file as a set of its own."""
    runs, a, _ = two_sets
    rep, md = run_report(runs + ["--data", f"test={a}", "--data", f"valid={a}#valid"], tmp_path / "r")
    assert rep["sets"]["test"]["fold"] == "test" and rep["sets"]["valid"]["fold"] == "valid"
    assert rep["sets"]["valid"]["sentences"] == 1  # write_set puts the first test sentence in valid
    gold, pred = gold_pred(SET_A_TEST[:1], "beta")
    assert rep["sets"]["valid"]["models"]["beta"]["scores"]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
    assert "folds `test`, `valid`" in md.splitlines()[0]


def test_one_scoring_rule_for_every_set(two_sets, tmp_path, monkeypatch):
    """The same file given twice is scored the same way twice: the saved predictions (first set) and the
    export's tagging (second) both on every type of the set, the types the model lacks stated for both."""
    runs, a, b = two_sets
    monkeypatch.setitem(OVERRIDES, "gamma", {})
    gamma = write_run(tmp_path / "runs", "gamma", b, SET_B_TEST)  # trained on sports: labels without EVENT
    rep, md = run_report([gamma, "--data", f"one={b}", "--data", f"two={b}"], tmp_path / "r")
    one, two = rep["sets"]["one"], rep["sets"]["two"]
    assert one["sources"] == {"gamma": "predictions"} and two["sources"] == {"gamma": "export"}
    assert one["types_scored"] == two["types_scored"] == ["EVENT", "LOC", "ORG", "PER"]
    assert one["left_out"] == two["left_out"] == {"not_in_models": {"EVENT": ["gamma"]},
                                                  "not_in_set": {"MISC": ["gamma"]}}
    for key in ("precision", "recall", "f1"):
        assert one["models"]["gamma"]["scores"][key] == pytest.approx(two["models"]["gamma"]["scores"][key])
    assert md.count("EVENT is not in the labels of **gamma** (counted as missed)") == 3  # both sets' lines + section


# --- 4. two ner-tag outputs of one unlabelled input ----------------------------------------------------------

TEXTS = ["Peter Blackburn visited Paris.", "The European Commission met in Berlin.", "Nothing here.",
         "Angela Merkel spoke to Reuters.", "Bonn is nice."]
ENTS_A = [[(0, 15, "PER"), (24, 29, "LOC")], [(4, 23, "ORG"), (31, 37, "LOC")], [],
          [(0, 13, "PER"), (23, 30, "ORG")], [(0, 4, "LOC")]]
ENTS_B = [[(0, 15, "PER"), (24, 29, "ORG")],     # Paris: same span, other label
          [(4, 12, "ORG"), (31, 37, "LOC")],     # European (Commission): other boundaries
          [(0, 7, "MISC")],                      # only in B
          [(0, 13, "PER")],                      # Reuters only in A
          [(0, 4, "LOC")]]                       # identical row


def write_tagged(out, ents, splits, input_path, fingerprint="f" * 64, run_json=True):
    """A ner-tag output folder: parts of ``splits`` rows each (columns id, entities) and a ``_run.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from common.tagdir import ENTITIES_TYPE

    out.mkdir()
    plan, first = [], 0
    for k, n in enumerate(splits):
        rows = range(first, first + n)
        col = [[{"start": s, "end": e, "label": t, "text": TEXTS[r][s:e], "score": 0.9} for s, e, t in ents[r]]
               for r in rows]
        pq.write_table(pa.table({"id": [f"doc{r}" for r in rows], "entities": pa.array(col, ENTITIES_TYPE)}),
                       out / f"part-{k:06d}.parquet")
        plan.append({"index": k, "file": input_path, "row_groups": [0, 1], "rows": [first, first + n], "num_rows": n})
        first += n
    if run_json:
        (out / "_run.json").write_text(json.dumps({
            "format": 1, "tool": "ner-tag", "model": {"path": f"/models/{out.name}/export", "model_type": "bert"},
            "input": {"fingerprint": fingerprint, "text_column": "text", "chunking": "sentences",
                      "files": [{"path": input_path, "size": 1, "rows": len(TEXTS)}]}, "parts": plan}))
    return str(out)


@pytest.fixture
def tagged_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"doc{r}" for r in range(len(TEXTS))], "text": TEXTS}), path)
    return str(path)


def test_tagged_comparison_known_agreement(tmp_path, tagged_input):
    a = write_tagged(tmp_path / "tag_a", ENTS_A, [3, 2], tagged_input)
    b = write_tagged(tmp_path / "tag_b", ENTS_B, [3, 2], tagged_input)
    out = tmp_path / "cmp"
    assert main(["--tagged", a, b, "--out", str(out), "--examples", "2"]) == 0
    rep, md = json.loads((out / "report.json").read_text()), (out / "report.md").read_text()
    assert rep["kind"] == "tagged_comparison" and rep["reference"] == "tag_a" and rep["rows"] == 5
    ag = rep["agreement"]
    # strict: Peter, Berlin, Angela, Bonn agree (4 of 7 each side); partial: + Paris (same span) + half of European
    assert (ag["strict"]["correct"], ag["strict"]["incorrect"], ag["strict"]["missed"], ag["strict"]["spurious"]) == (
        4, 2, 1, 1)
    assert ag["strict"]["f1"] == pytest.approx(4 / 7) and ag["exact"]["f1"] == pytest.approx(5 / 7)
    assert ag["partial"]["f1"] == pytest.approx(5.5 / 7) and ag["partial"]["partial"] == 1
    ref = partial_match_span_scores(ENTS_A, ENTS_B)
    assert_close(ag, ref)
    assert rep["rows_identical"] == 1 and rep["entities"] == {"tag_a": 7, "tag_b": 7}
    assert rep["entity_counts"] == {"LOC": {"tag_a": 3, "tag_b": 2}, "MISC": {"tag_a": 0, "tag_b": 1},
                                    "ORG": {"tag_a": 2, "tag_b": 2}, "PER": {"tag_a": 2, "tag_b": 2}}
    assert rep["disagreements"] == {"label": 1, "boundary": 1, "only_a": 1, "only_b": 1}
    (lab,) = rep["examples"]["label"]
    assert lab["row"] == 0 and lab["id"] == "doc0" and (lab["a"]["label"], lab["b"]["label"]) == ("LOC", "ORG")
    assert lab["context"] == {"start": 0, "text": TEXTS[0], "cut_end": False}
    assert "Exact agreement (strict F1): **57.14**%" in md
    assert "tag\\_a: Peter Blackburn visited **[Paris]{LOC}**." in md
    assert "tag\\_b: The **[European]{ORG}** Commission met in Berlin." in md
    assert "| MISC | 0 | 1 | +1 | n/a |" in md and "| **all** | **7** | **7** | +0 | 1.00 |" in md


def test_tagged_parts_split_differently_without_run_json(tmp_path, tagged_input, monkeypatch):
    from report import tagged

    monkeypatch.setattr(tagged, "CHUNK_ROWS", 2)      # scores summed over chunks of rows
    a = write_tagged(tmp_path / "a", ENTS_A, [2, 2, 1], tagged_input, run_json=False)
    b = write_tagged(tmp_path / "b", ENTS_B, [5], tagged_input)
    assert main(["--tagged", a, b, "--out", str(tmp_path / "o")]) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["agreement"]["strict"]["f1"] == pytest.approx(4 / 7)
    assert any("no _run.json" in n for n in rep["notes"])
    assert all("context" not in x for xs in rep["examples"].values() for x in xs)   # A (the reference) has no _run.json
    text = "x" * 200 + "Paris" + "y" * 200
    ctx = tagged.context_window(text, [{"start": 200, "end": 205, "text": "Paris"}], margin=10)
    assert ctx == {"start": 190, "text": "x" * 10 + "Paris" + "y" * 10, "cut_end": True}
    assert tagged.context_window("short", [{"start": 0, "end": 5, "text": "other"}]) is None   # another text


def test_tagged_refuses_other_inputs(tmp_path, tagged_input, capsys):
    a = write_tagged(tmp_path / "a", ENTS_A, [5], tagged_input)
    shorter = write_tagged(tmp_path / "short", ENTS_B[:4], [4], tagged_input)
    assert main(["--tagged", a, shorter, "--out", str(tmp_path / "o")]) == 2
    assert "5 rows" in capsys.readouterr().err
    other = write_tagged(tmp_path / "other", ENTS_B, [5], tagged_input, fingerprint="0" * 64)
    assert main(["--tagged", a, other, "--out", str(tmp_path / "o")]) == 2
    assert "not outputs of the same input" in capsys.readouterr().err
    incomplete = write_tagged(tmp_path / "inc", ENTS_B, [3, 2], tagged_input)
    os.remove(os.path.join(incomplete, "part-000001.parquet"))
    assert main(["--tagged", a, incomplete, "--out", str(tmp_path / "o")]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert main(["--tagged", a, a, str(tmp_path), "--out", str(tmp_path / "o")]) == 2   # run folders too
    assert not (tmp_path / "o").exists()

