#!/bin/bash
# The model alone on the GPU (TextTagger.predict over buffers prepared beforehand): fused (sdpa) against eager attention, bf16 and fp32, two batch sizes. Needs /tmp/minilm/export from run_gpu_scale.sh.
export PYTHONPATH=$PWD:$PWD/.devcarry/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - 2>&1 <<'PY' | grep -v Warn
import time
import pyarrow.parquet as pq, torch
from infer.tagger import TextTagger
texts = pq.read_table("../shared/corpus/news_sentences.parquet", columns=["text"]).column("text").to_pylist()[:30000]
for prec in ("bf16", "fp32"):
    for attn in ("sdpa", "eager"):
        for bt in (16384, 65536):
            tagger = TextTagger.from_export("/tmp/minilm/export", "cuda", precision=prec, batch_tokens=bt)
            try:
                tagger.model.encoder.set_attn_implementation(attn)
            except Exception as e:
                tagger.model.encoder.config._attn_implementation = attn
            preps = [tagger.prepare(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
            tagger.predict(preps[0]); torch.cuda.synchronize()
            t0 = time.perf_counter()
            for p in preps:
                tagger.predict(p)
            torch.cuda.synchronize(); dt = time.perf_counter() - t0
            n = sum(p.num_pieces for p in preps)
            print(f"{prec} {attn} batch {bt}: {n/dt:,.0f} pieces/s  ({tagger.model.encoder.config._attn_implementation})", flush=True)
PY
echo done
