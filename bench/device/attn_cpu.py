"""The model alone on this CPU (2 threads, committed BERT export, first 3,000 news sentences): fused (sdpa) against
eager attention, bf16 and fp32, alternating.  Run from the repository root: .venv/bin/python bench/device/attn_cpu.py bf16,fp32"""
import sys, time
import pyarrow.parquet as pq, torch
sys.path.insert(0, ".")
from infer.tagger import TextTagger
texts = pq.read_table("../shared/corpus/news_sentences.parquet", columns=["text"]).column("text").to_pylist()[:3000]
torch.set_num_threads(2)
for prec in sys.argv[1].split(","):
    for attn in ("sdpa", "eager", "sdpa", "eager"):
        tagger = TextTagger.from_export("runs/bert_conll03/export", "cpu", precision=prec)
        tagger.model.encoder.set_attn_implementation(attn)
        preps = [tagger.prepare(texts[i:i + 1000]) for i in range(0, len(texts), 1000)]
        tagger.predict(preps[0])
        t0 = time.perf_counter()
        for p in preps:
            tagger.predict(p)
        dt = time.perf_counter() - t0
        n = sum(p.num_pieces for p in preps)
        print(f"cpu {prec} {attn}: {n/dt:,.0f} pieces/s", flush=True)
