"""The model alone on the GPU: ``TextTagger.predict`` over buffers of 4,096 rows prepared beforehand, one warm-up
buffer, ``torch.cuda.synchronize`` around the timed loop; pieces/s per setting.  Used by attn.sh and dec.sh:

    python3 bench/device/model_only.py EXPORT PRECISION:ATTENTION:BATCH_TOKENS[:CONSTRAINED] ...

(CONSTRAINED 0/1 overrides the export's decoding; the first 30,000 rows of ../shared news_sentences.)
"""
import sys
import time

import pyarrow.parquet as pq
import torch

from infer.tagger import TextTagger
from taggers.precision import use_attention

texts = pq.read_table("../shared/corpus/news_sentences.parquet", columns=["text"]).column("text").to_pylist()[:30000]
for setting in sys.argv[2:]:
    precision, attention, batch_tokens, *constrained = setting.split(":")
    tagger = TextTagger.from_export(sys.argv[1], "cuda", precision=precision, batch_tokens=int(batch_tokens))
    use_attention(tagger.model, attention)
    if constrained:
        tagger.model.constrained_decoding = constrained[0] == "1"
    preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tagger.predict(preps[0])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for prep in preps:
        tagger.predict(prep)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(f"{setting}: {sum(p.num_pieces for p in preps) / seconds:,.0f} pieces/s", flush=True)
