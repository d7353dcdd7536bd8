"""A teacher's output for distillation: what ``ner-tag --word-probs`` writes, read back as training sentences.

The folder is a batch tagger output (:mod:`common.tagdir` names its files and columns): part files with the
columns ``words`` (a row's words) and ``word_probs`` (each word's probabilities over the teacher's labels, from
the piece the teacher predicts the word from), the teacher's labels in the schema metadata, and
``_summary.json`` whose totals say whether every part is done.  Words and probabilities, not word pieces: a
student with another tokenizer (or windows, or packing) reads the same teacher output.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import numpy as np

from .data import DataError, Sentence
from .tagdir import SUMMARY_FILE, TEACHER_LABELS_KEY, WORD_PROBS, WORDS, part_files

log = logging.getLogger(__name__)


def load_teacher(path: str, labels: Sequence[str], max_rows: int = 0) -> list[Sentence]:
    """The teacher's rows (up to ``max_rows``; 0 = all) as sentences without tags whose ``extra["soft"]`` is a
    float16 [words, len(labels)] array in the order of ``labels``; rows without words are left out."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    summary_path = os.path.join(path, SUMMARY_FILE)
    try:
        with open(summary_path, encoding="utf-8") as f:
            total = json.load(f)["total"]
    except FileNotFoundError:
        raise DataError(f"data.teacher {path}: no {SUMMARY_FILE}: not a finished `ner-tag --word-probs` output "
                        "folder") from None
    except (ValueError, KeyError) as e:
        raise DataError(f"data.teacher {summary_path}: unreadable ({e})") from None
    if not total.get("complete"):
        raise DataError(f"data.teacher {path}: incomplete teacher output ({total.get('parts_done')}/"
                        f"{total.get('parts_total')} parts): run the same ner-tag command again to finish it")
    dataset = ds.dataset(part_files(path), format="parquet")
    meta = dataset.schema.metadata or {}
    if {WORDS, WORD_PROBS} - set(dataset.schema.names) or TEACHER_LABELS_KEY.encode() not in meta:
        raise DataError(f"data.teacher {path}: no words/word_probs columns: tag the corpus with "
                        "`ner-tag --word-probs`")
    teacher_labels = json.loads(meta[TEACHER_LABELS_KEY.encode()])
    if sorted(teacher_labels) != sorted(labels):
        raise DataError(f"data.teacher {path}: the teacher's labels {teacher_labels} are not the training "
                        f"labels {list(labels)}")
    order = np.array([teacher_labels.index(t) for t in labels])
    table = dataset.head(max_rows, columns=[WORDS, WORD_PROBS]) if max_rows else dataset.to_table(
        columns=[WORDS, WORD_PROBS])
    words = table.column(WORDS).combine_chunks()
    word_offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(words).fill_null(0).to_numpy(), out=word_offsets[1:])
    tokens = words.flatten().to_numpy(zero_copy_only=False)
    probs = table.column(WORD_PROBS).combine_chunks().flatten().flatten().to_numpy().reshape(-1, len(labels))
    probs = probs[:, order].astype(np.float16)
    sentences = []
    for row in range(len(table)):
        a, b = word_offsets[row], word_offsets[row + 1]
        if b > a:
            sentences.append(Sentence(tokens[a:b].tolist(), None, None, len(sentences), {"soft": probs[a:b]}))
    log.info("teacher %s: %d sentences, %d words", path, len(sentences), int(word_offsets[-1]))
    return sentences
