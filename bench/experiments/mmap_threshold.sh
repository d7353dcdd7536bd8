#!/bin/bash
# glibc mmap threshold of ner-tag (infer.memory.MMAP_THRESHOLD, or MMAP:TRIM to set infer.memory.TRIM_THRESHOLD
# too; "dynamic": glibc's own, no mallopt): peak RSS
# of ner-tag on the first 1,000 and 10,000 news rows and its words/s while tagging (bf16, --buffer-rows 256
# --rows-per-part 500, 2 threads), one threshold after the other:
#   THRESHOLDS="dynamic 262144 4194304 16777216" [EXPORT=RUN/export] bash bench/experiments/mmap_threshold.sh
# EXPORT defaults to the BERT export of `make main OUT=/tmp/main_crf`.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
$PY -c "import pyarrow.dataset as ds, pyarrow.parquet as pq
for n in (1000, 10000): pq.write_table(ds.dataset('../shared/corpus/news_sentences.parquet').head(n), f'/tmp/mm_{n}.parquet')"
EXPORT=${EXPORT:-/tmp/main_crf/bert_conll03/export}
for T in $THRESHOLDS; do
  for n in 1000 10000; do
    rm -rf /tmp/mm_out
    $PY - "$T" "$n" "$EXPORT" <<'PY'
import json, os, resource, subprocess, sys
T, n, export = sys.argv[1:4]
mmap, _, trim = T.partition(":")
patch = ("import ctypes; m._TRIM = ctypes.CDLL('libc.so.6').malloc_trim; m.bound_malloc = lambda: None" if T == "dynamic"
         else f"m.MMAP_THRESHOLD = {mmap}" + (f"; m.TRIM_THRESHOLD = {trim}" if trim else ""))
code = f"import infer.memory as m; {patch}; from infer.__main__ import main; import sys; sys.exit(main(sys.argv[1:]))"
r = subprocess.run([sys.executable, "-c", code, "--model", export, "--input", f"/tmp/mm_{n}.parquet", "--output", "/tmp/mm_out",
                    "--precision", "bf16", "--buffer-rows", "256", "--rows-per-part", "500", "--threads", "2", "--no-progress"],
                   capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
assert r.returncode == 0, r.stderr[-2000:]
s = json.load(open("/tmp/mm_out/_summary.json"))["this_run"]
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"threshold {T:>18} rows {int(n):6,}: peak RSS {rss:7.1f} MiB, {s['tag_words_per_s']:7,.0f} words/s while tagging [load {os.getloadavg()[0]:.2f}]", flush=True)
PY
  done
done
