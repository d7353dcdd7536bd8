"""A broken export is refused with one line naming the file and the problem, by every tool that loads it."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from taggers.export import NER_CONFIG, ExportError, load_tagger
from taggers.models import WEIGHTS


@pytest.fixture(params=["bert", "bilstm"])
def export_copy(request, tiny_exports, tmp_path):
    path = tmp_path / "export"
    shutil.copytree(tiny_exports[request.param] / "export", path)
    return path


def _edit_config(path, **changes):
    meta = json.loads((path / NER_CONFIG).read_text())
    meta.update(changes)
    (path / NER_CONFIG).write_text(json.dumps(meta))


def _refused(path, *expected: str) -> str:
    with pytest.raises(ExportError) as info:
        load_tagger(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for text in expected:
        assert text in message, message
    return message


def test_export_without_tokenizer_files_is_refused(export_copy):
    for name in os.listdir(export_copy):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            os.remove(export_copy / name)
    with pytest.raises(ExportError, match="tokenizer"):
        load_tagger(str(export_copy))


def test_foreign_tokenizer_is_refused(export_copy):
    _edit_config(export_copy, tokenizer_size=json.loads((export_copy / NER_CONFIG).read_text())["tokenizer_size"] + 7)
    _refused(export_copy, "tokenizer files hold", "another model")


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "corrupt_data"])
def test_damaged_weights_are_refused(export_copy, damage):
    weights = export_copy / WEIGHTS
    data = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
        _refused(export_copy, WEIGHTS, "missing")
        return
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:  # the header is intact, a tensor's bytes are not: only the checksum can tell
        weights.write_bytes(data[:-64] + bytes(64))
    _refused(export_copy, WEIGHTS, "checksum")


def test_malformed_config_is_refused(export_copy):
    (export_copy / NER_CONFIG).write_text('{"format_version": 1, "labels": [')
    _refused(export_copy, NER_CONFIG, "JSON")


@pytest.mark.parametrize("changes,expected", [
    ({"model_type": "crf"}, "model_type 'crf'"),
    ({"labels": ["O", "B-PER", "X-PER"]}, "labels"),
    ({"labels": ["B-PER", "I-PER"]}, "labels"),
    ({"model": None}, "'model'"),
])
def test_hand_edited_config_is_refused(export_copy, changes, expected):
    _edit_config(export_copy, **changes)
    _refused(export_copy, expected)


def test_labels_that_do_not_fit_the_weights_are_refused(export_copy):
    meta = json.loads((export_copy / NER_CONFIG).read_text())
    n = len(meta["labels"])
    _edit_config(export_copy, labels=meta["labels"] + ["B-EXTRA", "I-EXTRA"])
    message = _refused(export_copy, "cannot load the model", WEIGHTS, NER_CONFIG, f"({n + 2} labels)",
                       "size mismatch", f"[{n}] in the weights, [{n + 2}] in the model")
    assert not message.endswith(":")  # the reason in full, not torch's first line


@pytest.mark.parametrize("kind", ["bert_extras", "bilstm"])
def test_export_without_ner_config_names_it(kind, tiny_exports, tmp_path):
    """Not read as a Hugging Face model (whose loader says only "look at the above report")."""
    path = tmp_path / "export"
    shutil.copytree(tiny_exports[kind] / "export", path)
    (path / NER_CONFIG).unlink()
    message = _refused(path, f"{NER_CONFIG} is missing", WEIGHTS)
    assert "ignore_mismatched_sizes" not in message and "above" not in message


def test_hf_folder_whose_labels_do_not_fit_names_the_tensors(tiny_exports, tmp_path):
    path = tmp_path / "hf"
    shutil.copytree(tiny_exports["bert"] / "export", path)
    (path / NER_CONFIG).unlink()
    config = json.loads((path / "config.json").read_text())
    n = len(config["id2label"])
    config["id2label"].update({str(n): "B-EXTRA", str(n + 1): "I-EXTRA"})
    config["label2id"].update({"B-EXTRA": n, "I-EXTRA": n + 1})
    (path / "config.json").write_text(json.dumps(config))
    message = _refused(path, "does not fit config.json", f"classifier.bias: [{n}] in the weights, [{n + 2}]")
    assert "ignore_mismatched_sizes" not in message


def test_export_files_are_readable_by_others(tiny_exports):
    for kind in ("bert", "bilstm"):
        for path in (tiny_exports[kind] / "export").iterdir():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & stat.S_IROTH and mode & stat.S_IRGRP, (path, oct(mode))


def test_tools_print_one_line(export_copy, tiny_data_json, capsys):
    """train.evaluate and ner-tag print `error:` and the problem, no traceback."""
    from infer.__main__ import main as tag_main
    from train.evaluate import main as evaluate_main

    (export_copy / WEIGHTS).write_bytes(b"")
    assert evaluate_main(["--model", str(export_copy), "--data", str(tiny_data_json)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ner-evaluate: error:") and err.count("\n") == 1 and WEIGHTS in err
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = export_copy.parent / "in.parquet"
    pq.write_table(pa.table({"text": ["Peter lives in Paris."]}), source)
    assert tag_main(["--model", str(export_copy), "--input", str(source), "--output",
                     str(export_copy.parent / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ner-tag: error:" in err and WEIGHTS in err and "Traceback" not in err
