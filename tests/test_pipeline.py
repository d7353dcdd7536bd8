"""The main job (``python -m pipeline``, what ``make main`` runs) end to end on tiny data: every stage, then resume.

The committed recipes are run as they are, with the sizes cut down (a tiny BERT built from a config, one epoch,
a one-layer BiLSTM), from a copy of ``train/configs`` the job is pointed at.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.__main__ as pipeline_main
from common.io import read_toml
from common.rundir import RunFolder
from common.tagdir import MANIFEST_DIR, SUMMARY_FILE, part_files

RECIPES = ("bert_conll03.toml", "bilstm_distilled.toml", "bilstm_conll03.toml")
SMALL = {"model": {"lstm_hidden": 16, "lstm_layers": 1, "pack_pieces": 32},
         "optim": {"lr": 1e-3, "head_lr": 1e-2},
         "train": {"epochs": 1, "max_tokens": 512, "progress": False, "log_every": 1}}
TEXTS = ["EU rejects German call to boycott British lamb.", "Peter Blackburn visited Brussels on Monday.",
         "", "Reuters reported that Bayer and the New York Yankees met in Japan.", "Nothing here."]


def _toml(recipe: dict) -> str:
    lines = []
    for section, options in recipe.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def tiny_recipes(tmp_path, tiny_bert_dir, monkeypatch):
    """The committed recipes with tiny sizes, in a folder the main job reads its recipes from."""
    folder = tmp_path / "configs"
    folder.mkdir()
    for name in RECIPES:
        recipe = read_toml(str(pipeline_main.CONFIGS / name))
        for section, options in SMALL.items():
            recipe.setdefault(section, {}).update(options)
        recipe["model"]["encoder"] = str(tiny_bert_dir)
        if recipe["model"]["type"] != "bert":
            recipe["model"].pop("pack_pieces", None)
        (folder / name).write_text(_toml(recipe))
    monkeypatch.setattr(pipeline_main, "CONFIGS", folder)
    return folder


def _corpus(path, rows: int = 12):
    pq.write_table(pa.table({"id": list(range(rows)), "text": [TEXTS[i % len(TEXTS)] for i in range(rows)]}), path)
    return path


def test_main_job_every_stage_then_resume(tmp_path, tiny_recipes, tiny_data_json):
    out = tmp_path / "runs"
    corpus = _corpus(tmp_path / "corpus.parquet")
    argv = ["--data", str(tiny_data_json), "--corpus", str(corpus), "--corpus-rows", "8", "--teacher-stride", "2",
            "--out", str(out)]
    assert pipeline_main.main(argv) == 0

    runs = {name: RunFolder(str(out / name)) for name in ("bert_conll03", "bilstm_distilled")}
    for run in runs.values():
        assert os.path.exists(run.metrics_path) and os.path.isdir(run.export_dir)
    assert read_toml(runs["bilstm_distilled"].config_path)["data"]["teacher"] == str(out / "teacher")
    teacher = json.loads((out / "teacher" / SUMMARY_FILE).read_text())["total"]
    assert teacher["complete"] and teacher["rows"] == 6  # every 2nd of the 12 corpus rows
    assert (out / "report" / "report.md").exists()
    tagged = pa.concat_tables(pq.read_table(p) for p in part_files(str(out / "tagged")))
    assert tagged.column("id").to_pylist() == list(range(8))  # the first --corpus-rows rows, in order
    assert "entities" in tagged.column_names

    # interrupted after training: the report and the tagged part are gone; a re-run trains nothing again
    trained = {name: os.path.getmtime(run.metrics_path) for name, run in runs.items()}
    for p in part_files(str(out / "tagged")):
        os.remove(p)
    for p in (out / "tagged" / MANIFEST_DIR).iterdir():
        p.unlink()
    (out / "report" / "report.md").unlink()
    assert pipeline_main.main(argv) == 0
    assert {name: os.path.getmtime(run.metrics_path) for name, run in runs.items()} == trained
    assert (out / "report" / "report.md").exists()
    again = pa.concat_tables(pq.read_table(p) for p in part_files(str(out / "tagged")))
    assert again.equals(tagged)


def test_main_job_without_data_says_what_to_pass(tmp_path, capsys):
    assert pipeline_main.main(["--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "make main DATA=" in err
    assert not (tmp_path / "runs").exists()
