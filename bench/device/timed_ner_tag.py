"""``ner-tag`` with timers around each of its stages' functions, summed per stage over all threads; started by
``measure.py`` (``tag``) as ``python bench/device/timed_ner_tag.py NER_TAG_OPTIONS...``.

Environment: ``MEASURE_T0``, the launcher's ``time.time()`` just before the start (the first batch is timed from
it, so that the process's start and the model's loading count); ``MEASURE_STAGES``, the JSON file that gets
``{"first_batch_s", "stages_s"}`` when the process exits.
"""
import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the checkout, not this folder, as ``python -c`` from it

T0 = float(os.environ["MEASURE_T0"])
stages, first, lock = {}, [], threading.Lock()


def add(key, seconds):
    with lock:
        stages[key] = stages.get(key, 0.0) + seconds


def timed(owner, name, key, mark_first=False):
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        if mark_first and not first:
            first.append(time.time() - T0)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            add(key, time.perf_counter() - t)

    setattr(owner, name, wrapper)


def timed_reads(read_buffers):
    def wrapper(*a, **k):
        it = read_buffers(*a, **k)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                add("host: read Parquet", time.perf_counter() - t)
            yield item

    return wrapper


def dump():
    with open(os.environ["MEASURE_STAGES"], "w") as f:
        json.dump({"first_batch_s": first[0] if first else None, "stages_s": stages}, f)


if __name__ == "__main__":
    import infer.host_encoder as he
    import infer.parts as out
    import infer.runner as rn
    import infer.tagger as tg

    timed(he.HostEncoder, "encode", "host: words, pieces, batches")
    timed(tg.TextTagger, "attach", "host: tensors (pinned on a GPU)")
    timed(tg.TextTagger, "_predict", "main: model + decode (queued)", mark_first=True)
    timed(tg, "find_spans", "main: spans + one copy (waits for the GPU)")
    timed(tg.TextTagger, "entities", "output: spans to Arrow")
    timed(out.PartWriter, "write", "output: Parquet")
    timed(out.PartWriter, "commit", "output: commit")
    rn.read_buffers = timed_reads(rn.read_buffers)
    atexit.register(dump)
    from infer.__main__ import main

    sys.exit(main(sys.argv[1:]))
