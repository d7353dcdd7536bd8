"""Helper for tests/test_ddp_step.py: the real trainer (``python -m train``), with what each optimizer step does
besides computing written down; launched by torchrun on gloo (CPU), or as one plain process.

Each optimizer step is cut in two parts: ``step`` (``Trainer.train_step`` over the step's micro-batches: forward,
backward, optimizer) and ``loop`` (from there to the next step: log row, checkpoint and stop checks, evaluation).
Per part it counts

* ``collectives``: every collective the process group ran, by name: the profiler's ``gloo:*`` events, which
  include the ones DDP starts in C++ (gradient buckets, buffer broadcasts) besides the Python API's;
* ``host``: tensor-to-Python reads (``item``, ``tolist``, ``float``, ``int``, ``bool``), each a wait for the
  device on a GPU;

and per step the gradient ``buckets`` DDP all-reduced with their element counts (a communication hook that
records the bucket, then reduces it as DDP's default does).

It writes ``{"world_size", "exit_code", "trainable", "bucket_cap_mb", "steps": {step: {...}}}`` to
``OUT_DIR/rank{r}.json``.

Usage: ``torchrun --standalone --nproc_per_node=2 ddp_step_worker.py OUT_DIR TRAIN_ARGS...`` (or ``python
ddp_step_worker.py OUT_DIR TRAIN_ARGS...`` for one process).
"""

from __future__ import annotations

import collections
import json
import os
import sys

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def main(out_dir: str, train_args: list[str]) -> int:
    import torch
    from torch.autograd.profiler import record_function
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.profiler import ProfilerActivity, profile

    from train import engine, trainer
    from train.__main__ import main as train_main

    steps: dict[int, dict] = collections.defaultdict(lambda: {
        "step": collections.Counter(), "loop": collections.Counter(), "buckets": []})
    now = {"step": 0, "part": None, "marker": None}  # the optimizer step under way, its part, the part's marker
    facts: dict = {}

    def enter(step: int | None, part: str | None) -> None:
        """Close the current part's profiler marker, open the next one."""
        if now["marker"] is not None:
            now["marker"].__exit__(None, None, None)
            now["marker"] = None
        now.update(step=step, part=part)
        if part is not None:
            now["marker"] = record_function(f"count:{part}:{step}")
            now["marker"].__enter__()

    # host reads
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name, **kwargs):
            if now["part"] is not None:
                steps[now["step"]][now["part"]][_name] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, read)

    # gradient buckets: recorded, then DDP's default reduction (divide by the world size, all-reduce)
    ddp_class = engine.DistributedDataParallel

    def recording_hook(state, bucket):
        if now["part"] is not None:
            steps[now["step"]]["buckets"].append(bucket.buffer().numel())
        return allreduce_hook(state, bucket)

    def ddp(module, *args, **kwargs):
        wrapped = ddp_class(module, *args, **kwargs)
        wrapped.register_comm_hook(None, recording_hook)
        facts["bucket_cap_mb"] = wrapped.bucket_bytes_cap / 2**20
        return wrapped

    engine.DistributedDataParallel = ddp

    train_step, train = trainer.Trainer.train_step, trainer.Trainer.train

    def counted_step(self, idx, last_micro_step):
        facts["trainable"] = sum(p.numel() for p in self.engine.module.parameters() if p.requires_grad)
        if now["part"] != "step":
            enter(self.state.step + 1, "step")
        done = train_step(self, idx, last_micro_step)
        if done:
            enter(self.state.step, "loop")
        return done

    def counted_train(self):
        try:
            return train(self)
        finally:
            enter(None, None)

    trainer.Trainer.train_step, trainer.Trainer.train = counted_step, counted_train

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        code = train_main(train_args)

    # each gloo event belongs to the marker whose span holds its start
    events = prof.events()
    spans = sorted((e.time_range.start, e.time_range.end, e.name.split(":")[1], int(e.name.split(":")[2]))
                   for e in events if e.name.startswith("count:"))
    for e in events:
        if e.name.startswith("gloo:"):
            for start, end, part, step in spans:
                if start <= e.time_range.start <= end:
                    steps[step][part][e.name] += 1
                    break

    rank = int(os.environ.get("RANK", "0"))
    out = {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "exit_code": code, **facts,
           "steps": {k: {"step": dict(v["step"]), "loop": dict(v["loop"]), "buckets": v["buckets"]}
                     for k, v in sorted(steps.items())}}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
