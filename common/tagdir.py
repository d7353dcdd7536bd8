"""The output folder written by ``ner-tag``: every file name and column type it holds is named here.

::

    OUT/
      _run.json                   model and input fingerprints, options, the part plan
      part-000000.parquet ...     one file per part (named by the part's global number): the input's carried
                                  columns, ``entities`` and, with ``--word-probs``, ``words`` and ``word_probs``
      _manifest/part-000000.json  one entry per finished part: source file, row groups, rows, words,
                                  entities per type, seconds
      _summary.json               totals (``total.complete``: every part done) and this run's speed
      .lock                       taken while a process checks or initialises _run.json
      _claims/part-000000.lock    held (flock) by the process tagging that part

Columns: ``entities`` is ``list<struct<start, end, label, text, score>>`` (character offsets into the row's
text, ``text == original[start:end]``); ``words`` is ``list<string>``; ``word_probs`` is
``list<fixed_size_list<float32, labels>>`` with the labels' order as JSON in the schema metadata under
:data:`TEACHER_LABELS_KEY`.

The tagger (``infer.output``, ``infer.parts``, ``infer.tagger``), the teacher reader (``common.teacher``) and
the report (``report.tagged``) use this module rather than names of their own.
"""

from __future__ import annotations

import glob
import os
import re

import pyarrow as pa

RUN_FILE = "_run.json"
MANIFEST_DIR = "_manifest"
SUMMARY_FILE = "_summary.json"
LOCK_FILE = ".lock"
CLAIMS_DIR = "_claims"

ENTITIES = "entities"
WORDS = "words"
WORD_PROBS = "word_probs"
TEACHER_LABELS_KEY = "ner_teacher_labels"

ENTITY_STRUCT = pa.struct([
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
    pa.field("label", pa.string()),
    pa.field("text", pa.string()),
    pa.field("score", pa.float32()),
])
ENTITIES_TYPE = pa.list_(pa.field("item", ENTITY_STRUCT))
WORDS_TYPE = pa.list_(pa.string())

_PART = re.compile(r"part-(\d+)\.parquet")


def word_probs_type(num_labels: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float32(), num_labels))


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def part_files(out_dir: str) -> list[str]:
    """The finished part files of a folder in part order (temporary ``.part-*`` files are not parts)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(out_dir, "part-*.parquet"))
             if (m := _PART.fullmatch(os.path.basename(p)))]
    return [p for _, p in sorted(found)]
