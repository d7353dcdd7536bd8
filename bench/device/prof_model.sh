#!/bin/bash
# cProfile of the model alone on the GPU (bf16 and fp32, first 30,000 news sentences) -> $OUT/model_profile.txt
# (default /tmp/prof_model_out).  Needs /tmp/minilm/export from run_gpu_scale.sh.
export PYTHONPATH=$PWD:$PWD/.devcarry/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/prof_model_out}
mkdir -p "$OUT"
python3 - <<'PY' > $OUT/model_profile.txt 2>&1
import cProfile, pstats, sys, time
import pyarrow.parquet as pq, torch
from infer.tagger import TextTagger
texts = pq.read_table("../shared/corpus/news_sentences.parquet", columns=["text"]).column("text").to_pylist()[:30000]
for prec in ("bf16", "fp32"):
    tagger = TextTagger.from_export("/tmp/minilm/export", "cuda", precision=prec)
    preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tagger.predict(preps[0])
    pr = cProfile.Profile(); pr.enable(); t0 = time.perf_counter()
    for p in preps:
        tagger.predict(p)
    dt = time.perf_counter() - t0; pr.disable()
    print(prec, "seconds", dt, "batches", sum(len(p.batches) for p in preps), "pieces", sum(p.num_pieces for p in preps))
    pstats.Stats(pr, stream=sys.stdout).sort_stats("tottime").print_stats(25)
PY
echo done
