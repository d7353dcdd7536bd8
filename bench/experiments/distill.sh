#!/bin/bash
# Distillation (issue 12): a teacher export tags unlabelled news sentences with its word probabilities
# (`ner-tag --word-probs`), then a student recipe trains on the gold training fold plus those rows
# (`data.teacher`), side by side with the recipe alone in bench_train's table.
#   bash bench/experiments/distill.sh TEACHER_EXPORT OUT [STRIDE] [STUDENT]
# STRIDE: every STRIDE-th row of ../shared/corpus/news_sentences.parquet (default 4: 53,768 sentences drawn
# from all its sources); STUDENT: bench_train.py --which entries (default: the BiLSTM recipe, 3 epochs).
set -eu
TEACHER=$1
OUT=$2
STRIDE=${3:-4}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
STUDENT=${4:-bilstm@data.teacher=\"$OUT/teacher\"@train.epochs=3}
"$PY" - "$OUT/corpus.parquet" "$STRIDE" <<'PY'
import sys
import pyarrow.parquet as pq
table = pq.read_table("../shared/corpus/news_sentences.parquet")
table = table.take(list(range(0, len(table), int(sys.argv[2]))))
pq.write_table(table, sys.argv[1])
print(f"{len(table):,} sentences -> {sys.argv[1]}")
PY
"$PY" -m infer --model "$TEACHER" --input "$OUT/corpus.parquet" --output "$OUT/teacher" --word-probs \
    --threads 2 --no-progress
"$PY" bench/bench_train.py --data ../shared/data/conll03-iob-pos.json --out "$OUT/runs" --threads 2 \
    --which "$STUDENT"
