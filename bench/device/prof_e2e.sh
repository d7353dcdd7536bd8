#!/bin/bash
# On the GPU machine, right after run_gpu_check.sh (its exports in /tmp/gpu_check): where ner-tag's end-to-end time
# goes at scale (cProfile, bf16, 65,536-token batches, 100,000 news rows), and the CRF recipe's export (trained
# 100 steps by stage b) against the CRF-less benchmark export on the same rows.
set -u
. bench/device/prepare.sh >/dev/null
SRC=/tmp/scale_src.parquet
python3 -c "import pyarrow.dataset as ds, pyarrow.parquet as pq; pq.write_table(ds.dataset('../shared/corpus/news_sentences.parquet').head(100000), '$SRC')"
for m in bench_minilm/export train_bert_conll03/export; do
  python3 -c "import json,sys; c=json.load(open('/tmp/gpu_check/$m/config.json')); print('$m', {k: v for k, v in c.items() if 'crf' in k.lower() or 'pack' in k.lower()})"
  rm -rf /tmp/o; python3 -m infer --model /tmp/gpu_check/$m --input $SRC --output /tmp/o --precision bf16 --batch-tokens 65536 --no-progress 2>&1 | tail -2
done
rm -rf /tmp/o; python3 -m cProfile -s tottime -m infer --model /tmp/gpu_check/bench_minilm/export --input $SRC --output /tmp/o --precision bf16 --batch-tokens 65536 --no-progress 2>&1 | head -60
