"""Helper for tests/test_distributed_metrics.py, launched by torchrun on gloo (CPU).

Each rank scores its share of a synthetic evaluation set (sentence i goes to rank i % world_size; sentences 0
and N-1 also go to a second rank, as duplicates), gathers the word-level predictions with
``common.metrics.gather_predictions``, scores them, sums counts with ``all_reduce_sum`` and writes what it
got to ``OUT_DIR/rank{r}.json``.  Usage: ``torchrun --standalone --nproc_per_node=2 dist_metrics_worker.py OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import random
import sys

N_SENTENCES = 41
TAGSET = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def make_data(n: int = N_SENTENCES, seed: int = 0):
    """(gold, pred): word-level tag sequences; pred is gold with some noise (incl. ill-formed I- starts)."""
    rng = random.Random(seed)
    gold, pred = [], []
    for _ in range(n):
        g = [rng.choice(TAGSET) for _ in range(rng.randint(1, 15))]
        gold.append(g)
        pred.append([t if rng.random() < 0.75 else rng.choice(TAGSET) for t in g])
    return gold, pred


def local_share(rank: int, world_size: int, n: int = N_SENTENCES) -> tuple[list[int], list[int]]:
    """(own indices, duplicated indices) of one rank."""
    own = [i for i in range(n) if i % world_size == rank]
    dup = [i for i in (0, n - 1) if i % world_size != rank and (i + 1) % world_size == rank]
    return own, dup


def main(out_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    from common import distributed
    from common.metrics import entity_scores, gather_predictions

    info = distributed.setup("cpu", timeout_s=60)
    try:
        gold, pred = make_data()
        own, dup = local_share(info.rank, info.world_size)
        local = {i: pred[i] for i in own + dup}
        merged = gather_predictions(local, info)
        keys = sorted(merged)
        scores = entity_scores([gold[i] for i in keys], [merged[i] for i in keys])
        n_words = sum(len(gold[i]) for i in own)
        correct = sum(g == p for i in own for g, p in zip(gold[i], pred[i]))
        sums = distributed.all_reduce_sum([len(own), n_words, correct], info)
        ranks = distributed.gather_objects(info.rank, info)
        bcast = distributed.broadcast_object({"from": info.rank}, info)
        result = {
            "rank": info.rank, "world_size": info.world_size, "backend": info.backend, "keys": keys,
            "same_preds": all(merged[i] == pred[i] for i in keys), "local": sorted(local),
            "scores": scores, "sums": sums, "ranks": ranks, "broadcast": bcast,
        }
        with open(os.path.join(out_dir, f"rank{info.rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
