"""The Ray Data entry point (:mod:`infer.ray`): on a real local Ray cluster, read_parquet -> map_batches(NerTagger)
-> write_parquet gives ner-tag's spans row by row; bad rows and a broken model as in ner-tag."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from infer.__main__ import main
from infer.ray import NerTagger, buffer_bounds
from infer.sources import InputError
from taggers.export import ExportError

REPO_ROOT = Path(__file__).resolve().parents[1]
NEWS = REPO_ROOT.parent / "shared" / "corpus" / "news_sentences.parquet"
ROWS = 2000
BUFFER_ROWS = 500  # several buffers per batch: the next one is prepared while the model runs
BAD_ROWS = [None, "", "   \n\t", "\u200b", "Peter Blackburn visited New York .", "x" * 700 + " Germany"]


def test_buffer_bounds_cut_as_ner_tag_does():
    sizes = np.array([5, 5, 5, 5, 5])
    assert buffer_bounds(sizes, 2, 1000) == [(0, 2), (2, 4), (4, 5)]
    assert buffer_bounds(sizes, 100, 10) == [(0, 2), (2, 4), (4, 5)]  # a buffer ends once it holds 10 bytes
    assert buffer_bounds(np.array([50, 1, 1]), 100, 10) == [(0, 1), (1, 3)]  # a long row alone
    assert buffer_bounds(np.zeros(0, np.int64), 4, 4) == []


def _spans(entities):
    return [[(e["start"], e["end"], e["label"], e["text"]) for e in row] for row in entities]


def _scores(entities):
    return [e["score"] for row in entities for e in row]


def _ner_tag(export, table: pa.Table, tmp) -> pa.Table:
    """ner-tag's output of ``table``'s rows, by id (its real entry point, one thread)."""
    path = tmp / "in.parquet"
    pq.write_table(table, path, row_group_size=500)
    out = tmp / "ner-tag"
    assert main(["--model", str(export), "--input", str(path), "--output", str(out), "--threads", "1",
                 "--no-progress", "--buffer-rows", str(BUFFER_ROWS)]) == 0
    return ds.dataset(str(out), format="parquet").to_table().sort_by("id")


def test_tagger_without_ray_keeps_the_batch_and_refuses_bad_columns(tiny_exports):
    """The callable itself (what each actor runs): several buffers, word_probs, pandas batches, and ner-tag's
    refusals of a non-string or missing text column."""
    tagger = NerTagger(str(tiny_exports["bert"] / "export"), threads=1, buffer_rows=2, word_probs=True)
    batch = pa.table({"id": list(range(len(BAD_ROWS))), "text": BAD_ROWS})
    out = tagger(batch)
    assert out.column_names == ["id", "text", "entities", "words", "word_probs"]
    assert out.select(["id", "text"]).equals(batch)
    ents = out.column("entities").to_pylist()
    assert ents[:4] == [[], [], [], []]
    assert all(text[e["start"]:e["end"]] == e["text"] for text, row in zip(BAD_ROWS, ents) for e in row)
    assert out.schema.metadata[b"ner_teacher_labels"]
    # pandas batches come back as pandas; the same spans
    back = NerTagger(str(tiny_exports["bert"] / "export"), threads=1)(batch.to_pandas())
    assert _spans(back["entities"].tolist()) == _spans(ents)
    with pytest.raises(InputError, match="text column 'text' has type int64, expected a string column"):
        tagger(pa.table({"text": [1, 2]}))
    with pytest.raises(InputError, match="text column 'text'"):  # a non-string value in a pandas batch
        tagger(batch.to_pandas().assign(text=["a", 3, None, "", " ", "b"]))
    with pytest.raises(InputError, match="no text column 'text'"):
        tagger(pa.table({"body": ["a"]}))
    with pytest.raises(InputError, match="entities"):
        tagger(pa.table({"text": ["a"], "entities": [1]}))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install .[ray])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install .[ray])")
    # workers import this checkout (not an installed copy) and compute on one thread, as the test process does
    env = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 ** 2, log_to_driver=False)
    yield ray
    ray.shutdown()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_ray_pipeline_gives_ner_tag_spans(ray_cluster, tiny_exports, tmp_path):
    """The first 2,000 news rows (and bad rows) through read_parquet -> map_batches -> write_parquet on a local
    Ray cluster: row by row the spans of ner-tag's output of the same rows."""
    if not NEWS.exists():
        pytest.skip(f"shared corpus absent: {NEWS} not found (expected at ../shared from the repo root)")
    from infer.ray import tag_dataset

    ray = ray_cluster
    export = tiny_exports["bert"] / "export"
    news = pq.ParquetFile(NEWS).iter_batches(batch_size=ROWS, columns=["text"])
    texts = pa.Table.from_batches([next(news)]).column("text").to_pylist()[:ROWS] + BAD_ROWS
    table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())})
    reference = _ner_tag(export, table, tmp_path)

    src = tmp_path / "ray_in"
    src.mkdir()
    pq.write_table(table, src / "rows.parquet", row_group_size=500)
    out = tmp_path / "ray_out"
    tagged = tag_dataset(ray.data.read_parquet(str(src)), str(export), actors=1, threads=1, buffer_rows=BUFFER_ROWS)
    tagged.write_parquet(str(out))
    got = ds.dataset(str(out), format="parquet").to_table().sort_by("id")

    assert got.column("id").to_pylist() == list(range(len(texts)))
    assert got.column("text").to_pylist() == texts
    assert got.schema.field("entities").type == reference.schema.field("entities").type
    want, have = reference.column("entities").to_pylist(), got.column("entities").to_pylist()
    assert sum(map(len, want)) > 100
    for i, (a, b) in enumerate(zip(_spans(want), _spans(have))):
        assert a == b, (i, texts[i], a, b)
    np.testing.assert_allclose(_scores(have), _scores(want), rtol=1e-5)
    assert have[ROWS:ROWS + 4] == [[], [], [], []]  # None, empty, whitespace, a format character

    # a model that cannot be loaded: one ExportError naming it, on the driver, before any work
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=f"{broken}: model.safetensors is missing"):
        tag_dataset(ray.data.read_parquet(str(src)), str(broken))
    # and in the actors (NerTagger used directly): the same line ends Ray's error
    with pytest.raises(Exception, match="model.safetensors is missing"):
        ray.data.read_parquet(str(src)).map_batches(
            NerTagger, fn_constructor_kwargs={"model": str(broken)}, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1)).materialize()
