"""Who tags which part: this shard's parts first, then the others' (work stealing), claims, and the wait for
parts held by live others; and the end of a torchrun job without a collective (figures polled from the store).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from .parts import claim_holder, claim_part, part_state

log = logging.getLogger("infer")

POLL_S = 0.5
"""How often a waiting process looks at the parts it waits for (and rank 0 at the store)."""


def work_order(parts: list, num_shards: int, shard_index: int) -> list:
    """This shard's parts in order, then the other shards' from the end (their owners start at the front,
    so a thief meets them last) -- every part of the job, in the order this process tries them."""
    own = [p for p in parts if p.index % num_shards == shard_index]
    return own + [p for p in reversed(parts) if p.index % num_shards != shard_index]


def claimed_parts(out_dir: str, work: list, wait_s: float, stop: threading.Event, left: list,
                  skip_bad: bool = True):
    """Yields ``(part, claim)`` for each part of ``work`` this process gets to tag, in order: a part done (or
    recorded bad, with ``skip_bad``) is passed over, one held by a live process is tried again once the rest
    is through, until every part is finished or taken; the parts still held after ``wait_s`` seconds without
    one of them finishing are appended to ``left``."""
    def finished(part) -> bool:
        state = part_state(out_dir, part.to_json())
        return state == "done" or (state == "bad" and skip_bad)

    def take(part):
        if finished(part):
            return None, True
        claim = claim_part(out_dir, part.index)
        if claim is None:
            return None, False
        if finished(part):  # finished between the check and the claim
            claim.close()
            return None, True
        return claim, True

    pending = []
    for part in work:
        if stop.is_set():
            return
        claim, settled = take(part)
        if claim is not None:
            yield part, claim
        elif not settled:
            pending.append(part)
    if pending:
        log.info("%d part(s) are being tagged by other processes: waiting for them (a part whose holder "
                 "dies is taken over)", len(pending))
    last_progress = time.time()
    while pending and not stop.is_set():
        still = []
        for part in pending:
            claim, settled = take(part)
            if claim is not None:
                yield part, claim
            if not settled:
                still.append(part)
        if len(still) < len(pending):
            last_progress = time.time()
        pending = still
        if pending and time.time() - last_progress > wait_s:
            left.extend({"part": p.index, "file": p.file, "holder": claim_holder(out_dir, p.index)}
                        for p in pending)
            return
        if pending:
            stop.wait(POLL_S)


def gather_on_rank0(this: dict, info) -> list[dict] | None:
    """Every rank's figures, on rank 0 (None on the others).  Posted to the process group's store and polled
    by rank 0: not a collective, so a rank that ends long before another meets no timeout (a rank that dies
    instead brings the job down through torchrun, which ends the wait)."""
    if not info.distributed:
        return [this]
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    prefix = (f"ner-tag/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/rank")
    store.set(f"{prefix}{info.rank}", json.dumps(this))
    if not info.is_main:
        return None
    keys = [f"{prefix}{r}" for r in range(info.world_size)]
    t_log = time.time()
    while not store.check(keys):
        if time.time() - t_log > 60:
            t_log = time.time()
            missing = [r for r, k in enumerate(keys) if not store.check([k])]
            log.info("waiting for rank(s) %s to finish, for the summary", missing)
        time.sleep(POLL_S)
    return [json.loads(store.get(k)) for k in keys]
