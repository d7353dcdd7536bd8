"""ner-tag: words with exact offsets, end-to-end tagging with both taggers, long texts in overlapping windows
(--chunking windows), nulls, errors, resume after a kill, refusal of another model's folder, sharding
(SLURM-array style and torchrun)."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from infer.__main__ import main
from tests.reference_words import sentence_chunks, split_words

REPO_ROOT = Path(__file__).resolve().parents[1]

TRICKY = [
    "EU rejects German call to boycott British lamb.",
    "Peter Blackburn visited New York on Monday; Angela Merkel met Reuters in BRUSSELS.",
    "Café Zürich: José Ñúñez met Ørsted in Kraków and São Paulo.",  # precomposed accents
    "Cafe\u0301 Jose\u0301 in Sa\u0303o Paulo",  # combining accents (decomposed)
    "Emoji 👍🏻 and family 👨\u200d👩\u200d👧 and ❤️ flags 🇩🇪 in Berlin!",
    "zero\u200bwidth\u200b \u200b joiner\u200d \ufeffBOM Zwing\u00admann soft hyphen",
    "control\x00chars\x07 and \x1b[31m escape \x7f del",
    "tabs\tand\nnewlines\r\nand  double  spaces \u00a0nbsp\u2003em-space\u3000ideographic",
    "Germany's U.S.-based AT&T paid $1,750.50 (5.93 mln) on 1996-08-22 at 10:30 -- O'Neil said.",
    "x" * 700 + " long word then Germany",
    "日本の東京で会議があった。 Москва и Санкт-Петербург. عربي نص",
    "\u0301\u0301 leading marks, trailing cf\u200b",
    "𝐌𝐚𝐭𝐡 𝐛𝐨𝐥𝐝 and ﬁ ligature",
]


def long_text(n_sentences: int = 60) -> str:
    """A document longer than the tiny model's window (128 pieces) with paragraph breaks."""
    parts = []
    for i in range(n_sentences):
        parts.append(f"Peter Blackburn said in Brussels that the European Commission met {i} times.")
        if i % 7 == 6:
            parts.append("\n    ")
    return " ".join(parts)


# ------------------------------------------------------------------ words
@pytest.mark.parametrize("text", TRICKY + [long_text(5), "", "   ", "\u200b", "a", "."])
def test_split_words_offsets_are_exact(text):
    words, starts, ends = split_words(text)
    assert len(words) == len(starts) == len(ends)
    last = 0
    for w, s, e in zip(words, starts, ends):
        assert text[s:e] == w and s < e and s >= last
        assert not w[0].isspace() and not w[-1].isspace()
        last = e
    # nothing but whitespace, control/format characters and stray marks falls between words
    import unicodedata

    covered = set()
    for s, e in zip(starts, ends):
        covered.update(range(s, e))
    for i, ch in enumerate(text):
        if i not in covered:
            assert ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Mn", "Me"), (i, ch)


def test_split_words_conll_rules():
    words, _, _ = split_words("Germany's U.S. AT&T paid $1,750.50 on 1996-08-22 (O'Neil) -- 5.93 mln. "
                              "They're here\u2019s")
    assert words == ["Germany", "'s", "U.S.", "AT&T", "paid", "$", "1,750.50", "on", "1996-08-22", "(",
                     "O'Neil", ")", "-", "-", "5.93", "mln", ".", "They", "'re", "here", "\u2019s"]
    assert split_words("cafe\u0301 x\u200by \u200b 👍🏻")[0] == ["cafe\u0301", "x\u200by", "👍", "🏻"]


def test_sentence_chunks_cover_all_words():
    text = long_text(40) + " Mr. Smith met Dr. Jones at U.S. Steel Inc. in Jan. and left."
    words, starts, ends = split_words(text)
    chunks = sentence_chunks(text, words, starts, ends, 50)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(words)
    assert all(a < b for a, b in chunks) and all(b == c for (_, b), (c, _) in zip(chunks, chunks[1:]))
    assert all(b - a <= 50 for a, b in chunks)
    for a, _ in chunks[1:]:  # every cut is after a sentence end or at a paragraph break
        assert words[a - 1] in (".", "!", "?") or "\n" in text[ends[a - 1]:starts[a]]
    assert sentence_chunks(text, words, starts, ends, 0) == [(0, len(words))]
    assert sentence_chunks("", [], [], [], 10) == []


# ------------------------------------------------------------------ helpers
def write_input(path: Path, texts, row_group_size: int = 8, **extra_columns) -> Path:
    table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string()),
                      **{k: v for k, v in extra_columns.items()}})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def read_output(out: Path) -> pa.Table:
    return ds.dataset(str(out), format="parquet").to_table()


def sample_texts() -> list:
    texts = TRICKY + [None, "", "   \n\t", long_text(30), long_text(3)]
    texts += [f"Angela Merkel visited Japan {i} times with the European Commission ." for i in range(20)]
    return texts


def run_tag(export: Path, inputs, out: Path, *extra: str) -> int:
    args = ["--model", str(export), "--input", *map(str, inputs if isinstance(inputs, list) else [inputs]),
            "--output", str(out), "--threads", "1", "--no-progress", "--rows-per-part", "10",
            "--buffer-rows", "6", *extra]
    return main(args)


def check_output(out: Path, texts, ids=None):
    table = read_output(out)
    ids = list(range(len(texts))) if ids is None else ids
    assert sorted(table.column("id").to_pylist()) == ids
    by_id = dict(zip(table.column("id").to_pylist(), table.column("entities").to_pylist()))
    for i, text in zip(ids, texts):
        ents = by_id[i]
        if not text or not text.strip():
            assert ents == []
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"]
            assert e["text"] and not e["text"][0].isspace() and not e["text"][-1].isspace()
            assert e["label"] in ("PER", "ORG", "LOC", "MISC") and 0.0 < e["score"] <= 1.0
        starts = [e["start"] for e in ents]
        assert starts == sorted(starts)
        assert all(a["end"] <= b["start"] for a, b in zip(ents, ents[1:]))
    return table


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory) -> tuple[Path, list]:
    texts = sample_texts()
    path = write_input(tmp_path_factory.mktemp("infer_in") / "sample.parquet", texts)
    return path, texts


@pytest.fixture(scope="module")
def bert_reference(tiny_exports, sample_input, tmp_path_factory) -> Path:
    """One uninterrupted single-process output of the HF-compatible BERT export."""
    out = tmp_path_factory.mktemp("infer_ref") / "out"
    assert run_tag(tiny_exports["bert"] / "export", sample_input[0], out) == 0
    return out


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("name", ["bert", "bert_extras", "bilstm"])
def test_tag_parquet_end_to_end(tiny_exports, sample_input, tmp_path, name, bert_reference):
    path, texts = sample_input
    out = bert_reference if name == "bert" else tmp_path / "out"
    if name != "bert":
        assert run_tag(tiny_exports[name] / "export", path, out) == 0
    table = check_output(out, texts)
    # parts hold the input's order; the folder reads back in input order
    assert table.column("id").to_pylist() == list(range(len(texts)))
    assert table.column_names == ["id", "entities"]
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(parts) == -(-len(texts) // 8)  # whole row groups of 8 rows (<= 10 rows per part)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["total"]["complete"] and summary["total"]["rows"] == len(texts)
    run = summary["this_run"]
    assert run["rows"] == len(texts) and run["words"] == sum(len(split_words(t or "")[0]) for t in texts)
    n_ents = sum(len(e) for e in table.column("entities").to_pylist())
    assert n_ents > 0 and sum(run["entities"].values()) == n_ents and run["words_per_s"] > 0
    manifest = sorted((out / "_manifest").glob("part-*.json"))
    entry = json.loads(manifest[0].read_text())
    assert entry["file"].endswith("sample.parquet") and entry["rows"] == [0, 8] and entry["row_groups"] == [0, 1]


def test_library_long_texts_are_predicted_whole(tiny_exports):
    """A text far longer than the model's window: every word predicted (windows), offsets exact."""
    from infer.tagger import TextTagger

    tagger = TextTagger.from_export(str(tiny_exports["bilstm"] / "export"), "cpu", chunking="windows",
                                    batch_tokens=512)
    text = long_text(40)
    prep = tagger.prepare([text, None])
    assert prep.num_words == len(split_words(text)[0])
    assert max(b["input_ids"].shape[1] for b in prep.batches) <= tagger.windower.max_length
    assert sum(b["input_ids"].shape[0] for b in prep.batches) > 1  # several windows
    preds, _ = tagger.predict(prep)
    assert (preds >= 0).all()
    (ents, none) = tagger.tag([text, None])
    assert none == [] and all(text[e["start"]:e["end"]] == e["text"] for e in ents)
    # sentence chunking: chunks of up to one window, every piece computed once (no overlap)
    chunked = TextTagger.from_export(str(tiny_exports["bilstm"] / "export"), "cpu", chunking="sentences",
                                     batch_tokens=512)
    prep2 = chunked.prepare([text])
    pieces = sum(len(p) for p in chunked.windower.word_pieces([split_words(text)[0]])[0])
    n_windows = sum(b["input_ids"].shape[0] for b in prep2.batches)
    assert n_windows > 1 and prep2.num_pieces == pieces + 2 * n_windows < prep.num_pieces
    assert max(b["input_ids"].shape[1] for b in prep2.batches) <= chunked.windower.max_length
    assert all(text[e["start"]:e["end"]] == e["text"] for e in chunked.tag([text])[0])


def test_chunking_windows_tags_a_long_text_whole(tiny_exports, tmp_path):
    """``ner-tag --chunking windows``: a text several windows long is tagged whole by the model's overlapping
    windows: every row written in order, every word of the long text in ``words`` with its probabilities and
    the model's spans over the whole text; the same words as the default sentence chunks, with more pieces computed (the
    windows overlap, the chunks do not)."""
    from infer.tagger import TextTagger

    export = tiny_exports["bert"] / "export"
    window = TextTagger.from_export(str(export), "cpu").windower.max_length
    text = long_text(60)
    texts = [text, "Peter Blackburn met Angela Merkel in Berlin .", None, long_text(3)]
    path = write_input(tmp_path / "in.parquet", texts, row_group_size=2)
    words = split_words(text)[0]
    tables, runs = {}, {}
    for chunking in ("windows", "sentences"):
        out = tmp_path / chunking
        assert run_tag(export, path, out, "--chunking", chunking, "--word-probs") == 0
        tables[chunking] = check_output(out, texts)
        runs[chunking] = json.loads((out / "_summary.json").read_text())["this_run"]
        assert json.loads((out / "_run.json").read_text())["input"]["chunking"] == chunking
    table = tables["windows"]
    assert table.column("id").to_pylist() == list(range(len(texts)))
    assert len(words) > 3 * window  # several windows, whatever the word pieces
    assert table.column("words").to_pylist()[0] == words
    probs = table.column("word_probs").to_pylist()[0]
    assert len(probs) == len(words) and all(abs(sum(p) - 1.0) < 1e-3 for p in probs)
    # the spans written are the model's over the whole text, whatever a tiny model finds in it
    spans = [(e["start"], e["end"], e["label"]) for e in table.column("entities").to_pylist()[0]]
    whole = TextTagger.from_export(str(export), "cpu", chunking="windows").tag([text])[0]
    assert spans == [(e["start"], e["end"], e["label"]) for e in whole]
    assert table.column("words").to_pylist() == tables["sentences"].column("words").to_pylist()
    assert runs["windows"]["words"] == runs["sentences"]["words"] == sum(len(split_words(t or "")[0]) for t in texts)
    assert runs["windows"]["ranks"][0]["pieces"] > runs["sentences"]["ranks"][0]["pieces"]


def test_keep_columns_hive_and_glob(tiny_exports, tmp_path):
    root = tmp_path / "hive"
    for year, texts in ((2020, ["Peter met Angela .", None]), (2021, ["Japan won ."])):
        (root / f"year={year}").mkdir(parents=True)
        pq.write_table(pa.table({"doc": [f"{year}-{i}" for i in range(len(texts))], "body": texts,
                                 "extra": [1.5] * len(texts)}), root / f"year={year}" / "data.parquet")
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", root, out, "--text-column", "body") == 0
    table = read_output(out)
    assert table.column_names == ["doc", "extra", "year", "entities"]
    assert table.column("year").to_pylist() == [2020, 2020, 2021]
    out2 = tmp_path / "out2"
    assert run_tag(tiny_exports["bert"] / "export", str(root / "*" / "*.parquet"), out2, "--text-column", "body",
                   "--id-column", "doc", "--keep-columns", "extra") == 0
    assert read_output(out2).column_names == ["doc", "extra", "entities"]


# ------------------------------------------------------------------ errors and refusals
def test_non_string_text_column_is_a_clear_error(tiny_exports, sample_input, tmp_path, capsys):
    good, texts = sample_input
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [0, 1], "text": [1, 2]}), bad)
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", good, out, "--text-column", "text") == 0
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    capsys.readouterr()
    assert run_tag(tiny_exports["bert"] / "export", [good, bad], out) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'text'" in err and "int64" in err and "string" in err
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before  # nothing lost
    assert run_tag(tiny_exports["bert"] / "export", good, tmp_path / "o2", "--text-column", "nope") == 2
    assert "nope" in capsys.readouterr().err


def test_refuses_folder_of_another_model(tiny_exports, sample_input, bert_reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(bert_reference, out)
    capsys.readouterr()
    assert run_tag(tiny_exports["bilstm"] / "export", sample_input[0], out) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "--overwrite" in err
    assert read_output(out).equals(read_output(bert_reference))  # untouched
    # the same model and input resumes (nothing to do); --overwrite replaces
    assert run_tag(tiny_exports["bert"] / "export", sample_input[0], out) == 0
    assert json.loads((out / "_summary.json").read_text())["this_run"]["rows"] == 0
    assert run_tag(tiny_exports["bilstm"] / "export", sample_input[0], out, "--overwrite") == 0
    check_output(out, sample_input[1])
    # a non-empty folder ner-tag did not make
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_tag(tiny_exports["bert"] / "export", sample_input[0], foreign) == 2
    assert "not made by ner-tag" in capsys.readouterr().err


# ------------------------------------------------------------------ resume and sharding
# ner-tag, killed with SIGKILL when its output stage is about to write a buffer after KILL_AFTER rows were written
_KILLED_TAGGER = """
import os, signal, sys
from infer import tagger
written_rows = 0
write_buffer = tagger.TextTagger.entities
def entities(self, prep, *args):
    global written_rows
    if written_rows >= int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    written_rows += prep.num_rows
    return write_buffer(self, prep, *args)
tagger.TextTagger.entities = entities
from infer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args: str, env_extra: dict | None = None, launcher=None, timeout=120,
         entry=("-m", "infer")) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = (launcher or [sys.executable]) + [*entry, *args, "--threads", "1", "--no-progress"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_killed_run_resumes_without_duplicates(tiny_exports, sample_input, bert_reference, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(tiny_exports["bert"] / "export"), "--input", str(sample_input[0]), "--output", str(out),
            "--rows-per-part", "10", "--buffer-rows", "6"]
    # killed in the middle of the second part (after 14 rows: part 0 has 8, part 1 is half written)
    r = _cli(*args, env_extra={"KILL_AFTER": "14"}, entry=("-c", _KILLED_TAGGER))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [p.name for p in out.glob("part-*.parquet")] == ["part-000000.parquet"]
    assert list(out.glob(".part-000001.parquet.tmp-*"))  # the torn part is only a temporary file
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["rows"] == len(sample_input[1]) - 8 and summary["total"]["complete"]
    assert not list(out.glob(".part-*"))
    assert read_output(out).equals(read_output(bert_reference))


def test_shard_takes_its_own_parts_first_then_the_others(tiny_exports, sample_input, bert_reference, tmp_path,
                                                        monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # shard 1 of 2
    assert run_tag(tiny_exports["bert"] / "export", sample_input[0], out) == 0
    s1 = json.loads((out / "_summary.json").read_text())
    assert s1["total"]["complete"] and s1["this_run"]["shard_index"] == 1
    # its own parts (1, 3) first, then shard 0's from the end (4, 2, 0): no other task ran, it did them all
    entries = [json.loads(p.read_text()) for p in (out / "_manifest").glob("part-*.json")]
    assert [e["part"] for e in sorted(entries, key=lambda e: e["finished_at"])] == [1, 3, 4, 2, 0]
    assert s1["this_run"]["parts"] == 5 and s1["this_run"]["parts_stolen"] == 3
    assert run_tag(tiny_exports["bert"] / "export", sample_input[0], out, "--shard-index", "0") == 0
    assert json.loads((out / "_summary.json").read_text())["this_run"]["rows"] == 0  # nothing left for shard 0
    assert read_output(out).equals(read_output(bert_reference))


@pytest.mark.parametrize("env, expected", [
    ({}, (1, 0)),
    ({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "2"}, (4, 2)),
    ({"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_ID": "4"}, (2, 1)),
    # --array=0-14:2: tasks 0, 2, ..., 14 are shards 0..7 of 8
    ({"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_ID": "14"}, (8, 7)),
    ({"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_STEP": "5",
      "SLURM_ARRAY_TASK_ID": "10"}, (3, 1)),
])
def test_shard_from_env_honours_the_array_step(monkeypatch, env, expected):
    from infer.options import shard_from_env

    for name in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert shard_from_env(None, None) == expected
    assert shard_from_env(2, 1) == (2, 1)  # the options win


def test_work_order_own_shard_first_then_the_others_from_the_end():
    from infer.shares import work_order
    from infer.sources import Part

    parts = [Part(i, "f", (i, i + 1), (i, i + 1)) for i in range(7)]
    assert [p.index for p in work_order(parts, 3, 1)] == [1, 4, 6, 5, 3, 2, 0]
    assert [p.index for p in work_order(parts, 1, 0)] == list(range(7))


@pytest.mark.distributed
def test_torchrun_two_ranks_equal_single_process(tiny_exports, sample_input, bert_reference, tmp_path):
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = _cli("--model", str(tiny_exports["bert"] / "export"), "--input", str(sample_input[0]), "--output", str(out),
             "--rows-per-part", "10", "--buffer-rows", "6", "--device", "cpu", launcher=launcher, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "_summary.json").read_text())
    ranks = summary["this_run"]["ranks"]
    assert len(ranks) == 2 and all(r["rows"] > 0 for r in ranks)
    assert sum(r["rows"] for r in ranks) == len(sample_input[1])
    assert read_output(out).equals(read_output(bert_reference))
