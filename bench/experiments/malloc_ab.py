"""The model alone under glibc malloc settings, one variant after the other, in rounds.

    python bench/experiments/malloc_ab.py --model RUN/export --rows 10000 --precision fp32 \\
        --variants none,16777216:131072,67108864,67108864:268435456 --rounds 2

Each run is ``bench_common.model_only``: its driver in a fresh process, ``TextTagger.predict`` over the first
``--rows`` news sentences, prepared beforehand (``--threads``, default 2).  A variant is ``none`` (glibc's
defaults, no trim) or ``MMAP[:TRIM]``: ``infer.memory.MMAP_THRESHOLD`` and ``TRIM_THRESHOLD`` (default: the
committed one; 131072 is glibc's own 128 KiB) set before ``bound_malloc``, with ``trim_malloc`` after every
buffer as in ner-tag.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from bench_common import load_sample, model_only  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", default=str(REPO.parent / "shared/corpus/news_sentences.parquet"))
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--variants", default="none,16777216:131072,67108864:268435456")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="malloc_ab_") as tmp:
        src, _, _ = load_sample(f"{args.corpus}:{args.rows}", tmp)
        for r in range(args.rounds):
            for variant in args.variants.split(","):
                prelude = ""
                if variant != "none":
                    mmap, _, trim = variant.partition(":")
                    prelude = (f"import infer.memory as m; m.MMAP_THRESHOLD = {int(mmap)}"
                               + (f"; m.TRIM_THRESHOLD = {int(trim)}" if trim else ""))
                load = os.getloadavg()[0]
                try:
                    m = model_only(args.model, src, args.precision, threads=args.threads,
                                   malloc_like_ner_tag=variant != "none", prelude=prelude)
                except RuntimeError as e:
                    sys.exit(f"{variant}: {e}")
                print(f"round {r + 1} {variant:>22}: {m['words'] / m['seconds']:8,.0f} words/s {args.precision} "
                      f"[load {load:.2f}]", flush=True)


if __name__ == "__main__":
    main()
