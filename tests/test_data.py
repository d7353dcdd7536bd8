"""common.data: JSON and CoNLL reading, scheme conversion, repair, label sets and errors."""

from __future__ import annotations

import logging
import re

import pytest

from common.data import (
    DataError,
    SCHEMES,
    Sentence,
    assign_documents,
    detect_scheme,
    load_folds,
    normalise_scheme,
    read_conll,
    read_json,
    split_tag,
    to_iob2,
)
from common.labels import check_fold_labels, label_list, labels_for_types
from common.spans import tags_to_spans


# --- reading ---------------------------------------------------------------------------------------

def test_read_json_fields(tiny_conll_json):
    folds = read_json(str(tiny_conll_json))
    assert list(folds) == ["train", "valid", "test"]
    assert [len(folds[f]) for f in folds] == [4, 2, 2]
    s = folds["train"][1]
    assert isinstance(s, Sentence)
    assert s.tokens == ["Peter", "Blackburn"]
    assert s.tags == ["B-PER", "I-PER"]
    assert s.doc == 0 and s.index == 1 and len(s) == 2
    assert s.extra == {"pos": ["NNP", "NNP"]}
    assert [s.doc for s in folds["train"]] == [0, 0, 1, 1]
    assert [s.index for s in folds["train"]] == [0, 1, 2, 3]
    # no "doc" field -> None
    assert [s.doc for s in folds["test"]] == [None, None]


def test_read_json_subset_of_folds(tiny_conll_json):
    folds = load_folds(str(tiny_conll_json), folds=("test",))
    assert list(folds) == ["test"]
    assert folds["test"][1].tokens == ["Nadim", "Ladki"]


def test_read_json_without_tags_when_not_required(write_json):
    path = write_json({"test": [{"tokens": ["a", "b"]}]})
    s = read_json(str(path), folds=("test",), require_tags=False)["test"][0]
    assert s.tokens == ["a", "b"] and s.tags is None


def test_read_conll_docstart_and_columns(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n\n"   # two blank lines: still one break
        "-DOCSTART- -X- -X- O\n\n"
        "BRUSSELS NNP B-NP B-LOC\n1996-08-22 CD I-NP O\n",      # no final blank line
        encoding="utf-8")
    sents = read_conll(str(path), "train")
    assert [s.tokens for s in sents] == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
    assert [s.tags for s in sents] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    assert [s.doc for s in sents] == [0, 0, 1]
    assert [s.index for s in sents] == [0, 1, 2]
    assert sents[0].extra == {"columns": [["NNP", "B-NP"], ["VBZ", "B-VP"]]}


def test_read_conll_without_docstart_has_no_doc(tmp_path, tiny_data, write_conll):
    path = write_conll(tmp_path / "x.conll", tiny_data["train"], docstart=False, extra_cols=False)
    sents = read_conll(str(path), "train")
    assert [s.doc for s in sents] == [None] * 4
    assert [s.tokens for s in sents] == [r["tokens"] for r in tiny_data["train"]]
    assert sents[0].extra == {}


def test_load_folds_conll_folder_equals_json(tiny_conll_dir, tiny_conll_json):
    from_dir = load_folds(str(tiny_conll_dir))
    from_json = load_folds(str(tiny_conll_json))
    assert list(from_dir) == ["train", "valid", "test"]
    for fold in from_json:
        assert [s.tokens for s in from_dir[fold]] == [s.tokens for s in from_json[fold]]
        assert [s.tags for s in from_dir[fold]] == [s.tags for s in from_json[fold]]
    assert [s.doc for s in from_dir["train"]] == [0, 0, 1, 1]
    assert [s.doc for s in from_dir["test"]] == [None, None]


def test_load_folds_single_conll_file(tiny_conll_dir):
    folds = load_folds(str(tiny_conll_dir / "valid.txt"), folds=("valid",))
    assert [s.tokens[0] for s in folds["valid"]] == ["Germany", "Werner"]
    with pytest.raises(DataError, match="single CoNLL file holds one fold"):
        load_folds(str(tiny_conll_dir / "valid.txt"))


# --- schemes ---------------------------------------------------------------------------------------

IOB1_TAGS = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], ["O", "I-ORG", "I-MISC", "I-MISC"]]
IOB1_AS_IOB2 = [["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], ["O", "B-ORG", "B-MISC", "I-MISC"]]
BIOES_TAGS = [["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "S-LOC", "S-LOC"], ["B-MISC", "E-MISC", "O"]]
BIOES_AS_IOB2 = [["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "B-LOC"], ["B-MISC", "I-MISC", "O"]]


def test_detect_scheme():
    assert detect_scheme(IOB1_TAGS) == "IOB1"
    assert detect_scheme(BIOES_TAGS) == "BIOES"
    assert detect_scheme(IOB1_AS_IOB2) == "IOB2"
    assert detect_scheme([["O", "O"]]) == "IOB2"
    # an IOB2 fold with one ill-formed I- is still IOB2 (B- after O occurs)
    assert detect_scheme([["B-PER", "O"], ["O", "I-LOC"]]) == "IOB2"


@pytest.mark.parametrize("scheme", ["auto", "IOB1"])
def test_iob1_input_converted(write_json, scheme, caplog):
    path = write_json({"train": [{"tokens": ["w"] * len(t), "tags": t} for t in IOB1_TAGS]})
    with caplog.at_level(logging.WARNING, logger="common.data"):
        folds = read_json(str(path), folds=("train",), scheme=scheme)
    assert [s.tags for s in folds["train"]] == IOB1_AS_IOB2
    assert "ill-formed" not in caplog.text  # I- starts are normal in IOB1, not repairs


@pytest.mark.parametrize("scheme", ["auto", "BIOES"])
def test_bioes_input_converted(write_json, scheme):
    path = write_json({"train": [{"tokens": ["w"] * len(t), "tags": t} for t in BIOES_TAGS]})
    folds = read_json(str(path), folds=("train",), scheme=scheme)
    assert [s.tags for s in folds["train"]] == BIOES_AS_IOB2


def test_bioes_conll_file_converted(tmp_path, write_conll):
    sents = [{"tokens": ["w"] * len(t), "tags": t} for t in BIOES_TAGS]
    path = write_conll(tmp_path / "train.txt", sents, docstart=False, extra_cols=False)
    assert [s.tags for s in read_conll(str(path), "train")] == BIOES_AS_IOB2


def test_to_iob2_direct():
    assert to_iob2(["I-PER", "I-PER", "B-PER"], "IOB1") == (["B-PER", "I-PER", "B-PER"], 0)
    assert to_iob2(["B-PER", "I-PER"], "IOB2") == (["B-PER", "I-PER"], 0)
    assert to_iob2(["O", "I-PER", "B-LOC", "I-ORG"], "IOB2") == (["O", "B-PER", "B-LOC", "B-ORG"], 2)
    assert to_iob2(["S-PER", "E-PER", "O"], "BIOES") == (["B-PER", "B-PER", "O"], 1)
    with pytest.raises(ValueError):
        to_iob2(["S-PER"], "IOB2")


def test_ill_formed_iob2_repaired_and_counted(write_json, caplog):
    data = {"train": [
        {"tokens": ["a", "b", "c"], "tags": ["B-PER", "I-PER", "O"]},
        {"tokens": ["a", "b", "c", "d"], "tags": ["O", "I-PER", "B-LOC", "I-ORG"]},   # 2 repairs
        {"tokens": ["a", "b"], "tags": ["I-MISC", "I-MISC"]},                          # 1 repair
    ]}
    path = write_json(data)
    with caplog.at_level(logging.WARNING, logger="common.data"):
        folds = read_json(str(path), folds=("train",), scheme="IOB2")
    assert [s.tags for s in folds["train"]] == [
        ["B-PER", "I-PER", "O"], ["O", "B-PER", "B-LOC", "B-ORG"], ["B-MISC", "I-MISC"]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "3 ill-formed" in msg and str(path) in msg and "'train'" in msg
    # the repair reads the tags the way conlleval does: same spans before and after
    for rec, s in zip(data["train"], folds["train"]):
        assert tags_to_spans(rec["tags"]) == tags_to_spans(s.tags)
    # auto detection also sees IOB2 here (B- after O occurs) and repairs the same way
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="common.data"):
        auto = read_json(str(path), folds=("train",))
    assert [s.tags for s in auto["train"]] == [s.tags for s in folds["train"]]
    assert "3 ill-formed" in caplog.text


def test_well_formed_data_does_not_warn(tiny_conll_json, caplog):
    with caplog.at_level(logging.WARNING, logger="common.data"):
        read_json(str(tiny_conll_json))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- label sets ------------------------------------------------------------------------------------

def test_label_list_stable_order(tiny_conll_json):
    folds = read_json(str(tiny_conll_json))
    expected = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert label_list(folds["train"]) == expected
    assert label_list(reversed(folds["train"])) == expected
    assert label_list(folds["valid"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert label_list([Sentence(["a"], ["O"])]) == ["O"]
    assert labels_for_types(["A", "B"]) == ["O", "B-A", "I-A", "B-B", "I-B"]


def test_split_tag():
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-B-X") == ("I", "B-X")
    assert split_tag("O") == ("O", None)
    for bad in ("PER", "X-LOC", "B-", "o", ""):
        with pytest.raises(ValueError):
            split_tag(bad)


def test_labels_restrict_types(write_json):
    path = write_json({"train": [{"tokens": ["a", "b"], "tags": ["B-PER", "B-GPE"]}]})
    with pytest.raises(DataError, match=r"fold 'train', sentence 0: unknown tag 'B-GPE' at token 1"):
        read_json(str(path), folds=("train",), labels=["O", "B-PER", "I-PER"])
    ok = read_json(str(path), folds=("train",), labels=["O", "B-PER", "I-PER", "B-GPE", "I-GPE"])
    assert ok["train"][0].tags == ["B-PER", "B-GPE"]


def test_assign_documents():
    no_docs = [Sentence(["a"]), Sentence(["b"])]
    assert [s.doc for s in assign_documents(no_docs)] == [0, 0]
    some = [Sentence(["a"], doc=3), Sentence(["b"]), Sentence(["c"], doc=4), Sentence(["d"])]
    assert [s.doc for s in assign_documents(some)] == [3, 3, 4, 4]


# --- errors ----------------------------------------------------------------------------------------

def good(n=2):
    return {"tokens": ["w"] * n, "tags": ["O"] * n}


@pytest.mark.parametrize("fold,records,idx,problem", [
    ("train", [good(), {"tokens": ["a", "b", "c"], "tags": ["O", "O"]}], 1, r"3 tokens but 2 tags"),
    ("valid", [{"tokens": ["Paris"], "tags": ["PER"]}], 0, r"unknown tag 'PER' at token 0 \('Paris'\)"),
    ("test", [good(), good(), {"tokens": ["a", "Rome"], "tags": ["O", "X-LOC"]}], 2,
     r"unknown tag 'X-LOC' at token 1 \('Rome'\)"),
    ("train", [good(), {"tokens": [], "tags": []}], 1, r"empty sentence"),
    ("train", [{"tokens": ["a", 7], "tags": ["O", "O"]}], 0, r"token 1 is int 7, expected a string"),
    ("train", [{"tokens": ["a", None], "tags": ["O", "O"]}], 0, r"token 1 is NoneType"),
    ("valid", [{"tokens": ["a"], "tags": [3]}], 0, r"tag 0 is int"),
    ("train", [good(), {"tokens": ["a"]}], 1, r"no 'tags'"),
    ("train", [["a", "b"]], 0, r"expected an object with 'tokens'"),
    ("train", [{"tokens": "a b", "tags": ["O", "O"]}], 0, r"'tokens' must be a list"),
])
def test_json_errors_name_file_fold_sentence_problem(write_json, fold, records, idx, problem):
    data = {f: [good()] for f in ("train", "valid", "test")}
    data[fold] = records
    path = write_json(data)
    with pytest.raises(DataError) as err:
        load_folds(str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert f"fold '{fold}', sentence {idx}" in msg
    assert re.search(problem, msg), msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match=re.escape(f"{path}: file not found")):
        read_json(str(path))
    with pytest.raises(DataError, match=re.escape(str(path)) + r": data not found"):
        load_folds(str(path))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'x.txt'}: file not found")):
        read_conll(str(tmp_path / "x.txt"))


def test_unreadable_file(tmp_path):
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(DataError, match=re.escape(str(folder)) + r": cannot read file"):
        read_json(str(folder))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"train": [\xff\xfe\x00]}')
    with pytest.raises(DataError, match=re.escape(str(binary)) + r": cannot read file"):
        read_json(str(binary))
    with pytest.raises(DataError, match=re.escape(str(binary)) + r": cannot read file"):
        read_conll(str(binary))


def test_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"train": [{"tokens": ["a"], "tags": ["O"]},', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + r": not valid JSON"):
        load_folds(str(path))
    path.write_text('[1, 2]', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + r": expected a JSON object"):
        load_folds(str(path))


def test_missing_fold(write_json, tiny_data, tiny_conll_dir):
    del tiny_data["valid"]
    path = write_json(tiny_data)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": missing fold 'valid' \(found \['test', 'train'\]\)"):
        load_folds(str(path))
    (tiny_conll_dir / "test.txt").unlink()
    with pytest.raises(DataError, match=re.escape(str(tiny_conll_dir)) + r": missing fold 'test'"):
        load_folds(str(tiny_conll_dir))


def test_conll_errors(tmp_path):
    path = tmp_path / "valid.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU B-ORG\n\nPeter PER\nBlackburn I-PER\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_conll(str(path), "valid")
    msg = str(err.value)
    assert str(path) in msg and "fold 'valid', sentence 1 (line 5)" in msg and "unknown tag 'PER'" in msg

    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + r": line 2: expected 'token ... tag'"):
        read_conll(str(path), "valid")

    path.write_text("-DOCSTART- -X- -X- O\n\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + r": fold 'valid' has no sentences"):
        read_conll(str(path), "valid")

    path.write_text("a O\n\nb S-PER\nc I-PER\n\nd B-LOC\n", encoding="utf-8")   # E/S tag in declared IOB2
    with pytest.raises(DataError, match=r"fold 'valid', sentence 1: tag 'S-PER' is not valid in IOB2"):
        read_conll(str(path), "valid", scheme="IOB2")


# --- empty folds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("empty,named", [
    (["test"], "fold 'test' has no sentences"),
    (["valid"], "fold 'valid' has no sentences"),
    (["train"], "fold 'train' has no sentences"),
    (["train", "valid", "test"], "folds 'train', 'valid', 'test' have no sentences"),
])
def test_empty_json_fold_refused_at_load(write_json, tiny_data, empty, named):
    for fold in empty:
        tiny_data[fold] = []
    path = write_json(tiny_data)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: {named}") + "$"):
        load_folds(str(path))


def test_empty_json_fold_refused_only_when_requested(write_json, tiny_data):
    tiny_data["train"] = []
    path = write_json(tiny_data)
    assert [s.tokens[0] for s in load_folds(str(path), folds=("test",))["test"]] == ["Japan", "Nadim"]
    with pytest.raises(DataError, match=re.escape(f"{path}: fold 'train' has no sentences")):
        load_folds(str(path), folds=("train", "test"))


@pytest.mark.parametrize("content", ["", "\n\n", "-DOCSTART- -X- -X- O\n\n"])
def test_empty_conll_fold_refused_with_fold_named(tiny_conll_dir, content):
    path = tiny_conll_dir / "test.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: fold 'test' has no sentences") + "$"):
        load_folds(str(tiny_conll_dir))


# --- byte order mark -------------------------------------------------------------------------------

def _same_sentences(a, b):
    assert list(a) == list(b)
    for fold in a:
        assert [(s.tokens, s.tags, s.doc, s.index, s.extra) for s in a[fold]] == \
            [(s.tokens, s.tags, s.doc, s.index, s.extra) for s in b[fold]]


def test_json_with_bom_loads_like_without(tiny_conll_json, tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + tiny_conll_json.read_bytes())
    _same_sentences(load_folds(str(bom)), load_folds(str(tiny_conll_json)))


def test_conll_with_bom_loads_like_without(tiny_conll_dir, tmp_path):
    bom_dir = tmp_path / "bom"
    bom_dir.mkdir()
    for f in tiny_conll_dir.iterdir():
        (bom_dir / f.name).write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    with_bom, without = load_folds(str(bom_dir)), load_folds(str(tiny_conll_dir))
    _same_sentences(with_bom, without)
    assert [s.doc for s in with_bom["train"]] == [0, 0, 1, 1]   # the first -DOCSTART- is still seen
    assert with_bom["train"][0].tokens[0] == "EU"


# --- labels of valid/test against the model's label set --------------------------------------------

def test_check_fold_labels_accepts_known_tags(tiny_conll_json):
    folds = load_folds(str(tiny_conll_json))
    check_fold_labels(folds, label_list(folds["train"]), str(tiny_conll_json))
    check_fold_labels({"test": folds["test"]}, ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"], "x.json")


def test_check_fold_labels_names_fold_sentence_and_suggests_labels(write_json, tiny_data):
    tiny_data["test"].append({"tokens": ["The", "United", "Nations", "met", "in", "New", "York", "today"],
                              "tags": ["O", "B-GPE", "I-GPE", "O", "O", "B-LOC", "I-LOC", "O"]})
    tiny_data["test"].append({"tokens": ["x"], "tags": ["B-FAC"]})
    path = write_json(tiny_data)
    folds = load_folds(str(path))
    with pytest.raises(DataError) as err:
        check_fold_labels(folds, label_list(folds["train"]), str(path))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: fold 'test', sentence 2 ('The United Nations met in New ...'): "
                          "tag 'B-GPE' at token 1 ('United') never occurs in fold 'train'")
    assert msg.endswith('set data.labels=["O","B-FAC","I-FAC","B-GPE","I-GPE","B-LOC","I-LOC",'
                        '"B-MISC","I-MISC","B-ORG","I-ORG","B-PER","I-PER"]')


def test_check_fold_labels_with_given_label_set(write_json, tiny_data):
    path = write_json(tiny_data)
    folds = load_folds(str(path))
    labels = ["O", "B-LOC", "I-LOC", "B-PER"]     # no I-PER: the model cannot tag "Peter Blackburn"
    with pytest.raises(DataError, match="^" + re.escape(
            f"{path}: fold 'train', sentence 1 ('Peter Blackburn'): tag 'I-PER' at token 1 ('Blackburn') "
            f"is not in the label set {labels}") + "$"):
        check_fold_labels({"train": folds["train"][1:2], "valid": folds["valid"]}, labels, str(path))


def test_check_fold_labels_hints_at_case(write_json):
    path = write_json({"train": [{"tokens": ["Paris"], "tags": ["B-LOC"]}],
                       "valid": [{"tokens": ["Rome"], "tags": ["B-loc"]}]})
    folds = load_folds(str(path), folds=("train", "valid"))
    with pytest.raises(DataError, match=r"fold 'valid', sentence 0 \('Rome'\): tag 'B-loc' at token 0 \('Rome'\) "
                       r"never occurs in fold 'train', which gives the label set \(the label set has type "
                       r"'LOC', which differs only in case\)"):
        check_fold_labels(folds, label_list(folds["train"]), str(path))


def test_types_differing_in_case_warn_once(write_json, caplog):
    path = write_json({
        "train": [{"tokens": ["Paris", "Rome"], "tags": ["B-LOC", "B-loc"]}] * 5,
        "valid": [{"tokens": ["Paris", "Ann"], "tags": ["B-loc", "B-Per"]}] * 5,
        "test": [{"tokens": ["Paris", "Bob"], "tags": ["B-LOC", "B-PER"]}] * 5,
    })
    folds = load_folds(str(path))
    labels = label_list(folds["train"]) + ["B-PER", "I-PER", "B-Per", "I-Per"]
    with caplog.at_level(logging.WARNING, logger="common.data"):
        check_fold_labels(folds, labels, str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{path}: entity types that differ only in case: 'LOC' and 'loc'; "
                                  "'PER' and 'Per'")


def test_types_differing_in_case_warn_before_error(write_json, caplog):
    path = write_json({"train": [{"tokens": ["Paris"], "tags": ["B-LOC"]}],
                       "valid": [{"tokens": ["Rome"], "tags": ["B-loc"]}] * 3})
    folds = load_folds(str(path), folds=("train", "valid"))
    with caplog.at_level(logging.WARNING, logger="common.data"), pytest.raises(DataError):
        check_fold_labels(folds, label_list(folds["train"]), str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'LOC' and 'loc'" in warnings[0]


def test_invalid_given_labels_refused(write_json, tiny_data):
    path = write_json(tiny_data)
    with pytest.raises(DataError, match="^" + re.escape(
            f"{path}: the given label set ['O', 'PER'] has 'PER', which is not a tag") + r" \(O or"):
        load_folds(str(path), labels=["O", "PER"])


# --- scheme names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,canonical", [
    ("iob2", "IOB2"), ("Iob1", "IOB1"), ("bioes", "BIOES"), ("BIOES", "BIOES"), ("auto", "auto"), ("AUTO", "auto")])
def test_normalise_scheme(value, canonical):
    assert normalise_scheme(value) == canonical
    assert canonical in SCHEMES


@pytest.mark.parametrize("bad", ["iob3", "BIO", "", None, 2])
def test_normalise_scheme_refuses_unknown(bad):
    with pytest.raises(DataError, match=re.escape(f"unknown tagging scheme {bad!r}: expected one of "
                                                  "auto, IOB1, IOB2, BIOES (any case)")):
        normalise_scheme(bad)


@pytest.mark.parametrize("scheme", ["bioes", "Bioes", "auto", "AUTO"])
def test_scheme_any_case_in_loaders(write_json, tmp_path, write_conll, scheme):
    records = [{"tokens": ["w"] * len(t), "tags": t} for t in BIOES_TAGS]
    path = write_json({"train": records})
    assert [s.tags for s in read_json(str(path), folds=("train",), scheme=scheme)["train"]] == BIOES_AS_IOB2
    assert [s.tags for s in load_folds(str(path), folds=("train",), scheme=scheme)["train"]] == BIOES_AS_IOB2
    conll = write_conll(tmp_path / "train.txt", records, docstart=False, extra_cols=False)
    assert [s.tags for s in read_conll(str(conll), "train", scheme=scheme)] == BIOES_AS_IOB2


def test_scheme_iob2_any_case_counts_repairs(write_json, caplog):
    path = write_json({"train": [{"tokens": ["a", "b"], "tags": ["O", "I-PER"]},
                                 {"tokens": ["a"], "tags": ["I-LOC"]}]})
    with caplog.at_level(logging.WARNING, logger="common.data"):
        folds = load_folds(str(path), folds=("train",), scheme="iob2")
    assert [s.tags for s in folds["train"]] == [["O", "B-PER"], ["B-LOC"]]
    assert "2 ill-formed" in caplog.text


def test_unknown_scheme_refused_by_loaders(tiny_conll_json, tiny_conll_dir):
    allowed = "expected one of auto, IOB1, IOB2, BIOES (any case)"
    for path in (tiny_conll_json, tiny_conll_dir, tiny_conll_dir / "nope"):
        with pytest.raises(DataError, match="^" + re.escape(f"{path}: unknown tagging scheme 'iob3': {allowed}")):
            load_folds(str(path), scheme="iob3")
    with pytest.raises(DataError, match="^" + re.escape(f"{tiny_conll_json}: unknown tagging scheme 'BIO'")):
        read_json(str(tiny_conll_json), scheme="BIO")
    conll = tiny_conll_dir / "train.txt"
    with pytest.raises(DataError, match="^" + re.escape(f"{conll}: unknown tagging scheme 'BIO'")):
        read_conll(str(conll), "train", scheme="BIO")


# --- the real shared data --------------------------------------------------------------------------

def test_shared_json_counts(conll_folds):
    assert {f: len(s) for f, s in conll_folds.items()} == {"train": 14041, "valid": 3250, "test": 3453}
    assert {f: sum(map(len, s)) for f, s in conll_folds.items()} == {"train": 203621, "valid": 51362, "test": 46435}
    assert {f: len({x.doc for x in s}) for f, s in conll_folds.items()} == {"train": 946, "valid": 216, "test": 231}
    assert label_list(conll_folds["train"]) == labels_for_types(["LOC", "MISC", "ORG", "PER"])
    counts = {}
    for s in conll_folds["train"]:
        for _, _, t in tags_to_spans(s.tags):
            counts[t] = counts.get(t, 0) + 1
    assert counts == {"PER": 6600, "ORG": 6321, "LOC": 7140, "MISC": 3438}
    assert "pos" in conll_folds["train"][0].extra


@pytest.mark.slow
def test_shared_conll_folder_matches_json(conll_folds, conll_dir_path):
    from_dir = load_folds(str(conll_dir_path))
    for fold, sents in conll_folds.items():
        other = from_dir[fold]
        assert len(other) == len(sents)
        assert [s.tokens for s in other] == [s.tokens for s in sents]
        assert [s.tags for s in other] == [s.tags for s in sents]
        assert [s.doc for s in other] == [s.doc for s in sents]
