#!/bin/bash
# As attn.sh, batch 65536, bf16: eager/sdpa with constrained decoding off, and eager with it on (the export is trained for 60 steps only, so many rows need the Viterbi pass).
export PYTHONPATH=$PWD:$PWD/.devcarry/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - 2>&1 <<'PY' | grep -v Warn
import time
import pyarrow.parquet as pq, torch
from infer.tagger import TextTagger
texts = pq.read_table("../shared/corpus/news_sentences.parquet", columns=["text"]).column("text").to_pylist()[:30000]
for prec, attn, constrained in (("bf16", "eager", False), ("bf16", "sdpa", False), ("bf16", "eager", True)):
    tagger = TextTagger.from_export("/tmp/minilm/export", "cuda", precision=prec, batch_tokens=65536)
    tagger.model.encoder.set_attn_implementation(attn)
    tagger.model.constrained_decoding = constrained
    preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tagger.predict(preps[0]); torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in preps:
        tagger.predict(p)
    torch.cuda.synchronize(); dt = time.perf_counter() - t0
    n = sum(p.num_pieces for p in preps)
    print(f"{prec} {attn} constrained={constrained} batch 65536: {n/dt:,.0f} pieces/s", flush=True)
PY
echo done
