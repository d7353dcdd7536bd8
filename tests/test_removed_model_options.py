"""``model.head_hidden`` and ``model.freeze_layers`` were removed: an export's ``ner_config.json`` or a run's
``config.toml`` written before may still hold them. At the value that left them off (0) they are ignored;
any other value describes a model that cannot be rebuilt and is refused with one line naming the file."""

from __future__ import annotations

import json
import shutil

import pytest

from common.io import read_toml
from common.rundir import RunFolder
from taggers.export import NER_CONFIG, ExportError, load_tagger
from tests.tiny_models import tiny_train_args
from train.__main__ import main as train_main
from train.evaluate import main as evaluate_main


def _with_model_options(export, **options):
    meta = json.loads((export / NER_CONFIG).read_text())
    meta["model"].update(options)
    (export / NER_CONFIG).write_text(json.dumps(meta))


@pytest.mark.parametrize("kind", ["bert", "bilstm"])
def test_an_export_with_the_removed_options_off_scores_as_before(kind, tiny_exports, tiny_data_json, tmp_path,
                                                                   capsys):
    original = tiny_exports[kind] / "export"
    export = tmp_path / "export"
    shutil.copytree(original, export)
    _with_model_options(export, head_hidden=0, freeze_layers=0)
    assert evaluate_main(["--model", str(original), "--data", str(tiny_data_json), "--device", "cpu"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert evaluate_main(["--model", str(export), "--data", str(tiny_data_json), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == before


@pytest.mark.parametrize("option, value", [("head_hidden", 64), ("freeze_layers", 2)])
def test_an_export_with_a_removed_option_set_is_one_line(option, value, tiny_exports, tiny_data_json, tmp_path,
                                                         capsys):
    export = tmp_path / "export"
    shutil.copytree(tiny_exports["bilstm"] / "export", export)
    _with_model_options(export, **{option: value})
    with pytest.raises(ExportError) as info:
        load_tagger(str(export))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{export / NER_CONFIG}: model.{option}={value}: this option was removed")
    assert evaluate_main(["--model", str(export), "--data", str(tiny_data_json)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"ner-evaluate: error: {message}"]


def test_a_run_config_with_the_removed_options_resumes_only_when_they_are_off(tiny_bert_dir, tiny_data_json,
                                                                             tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, "train.max_steps=2")
    assert train_main(args) == 0
    run = RunFolder(str(out))
    saved = read_toml(run.config_path)
    saved["model"].update(head_hidden=0, freeze_layers=0)
    run.write_config(saved)
    assert train_main([*args, "--resume"]) == 0
    assert (out / "export" / NER_CONFIG).is_file()

    saved["model"]["freeze_layers"] = 2
    run.write_config(saved)
    capsys.readouterr()
    assert train_main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ner-train: error: {run.config_path}: model.freeze_layers=2: this option was removed and a "
                   "model made with it cannot be rebuilt (only 0, off, is accepted)"]
