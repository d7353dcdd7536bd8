"""The batch job's options (:class:`TagOptions`, what ``ner-tag``'s flags fill in) and what follows from them
and the environment: this process's shard (``--num-shards/--shard-index`` or a SLURM array), its torch threads
and host workers, the columns carried into the output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PROCESS_GROUP_TIMEOUT_S = 5 * 60
"""``--pg-timeout``'s default: how long a rank waits for its peers in a collective before the job fails.  The
only collectives are at the start (loading the model, opening the folder); the end is polled
(:func:`infer.shares.gather_on_rank0`)."""
WAIT_FOR_OTHERS_S = 15 * 60
"""``--wait-for-others``'s default: how long a process with nothing left to take waits for parts held by
live others to finish (counted from the last one that did) before it exits with code 5."""


@dataclass
class TagOptions:
    model: str
    inputs: list[str]
    output: str
    text_column: str = "text"
    id_column: str | None = None
    keep_columns: list[str] | None = None
    batch_tokens: int = 0
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    rows_per_part: int = 10000
    buffer_rows: int = 4096
    buffer_chars: int = 2_000_000
    chunking: str = "sentences"
    chunk_pieces: int = 0
    threads: int = 0
    progress: bool = True
    host_workers: int | None = None
    """Worker processes for the CPU side (None: ``NER_TAG_HOST_WORKERS``, else 0; see host_workers)."""
    word_probs: bool = False
    """Also write each row's ``words`` and every word's probabilities over the labels (``word_probs``; the
    labels in the schema metadata): a teacher's output, read by training's ``data.teacher``."""
    on_bad_file: str = "fail"
    """``fail``: a bad input file stops the run (exit 2); ``skip``: it is listed and the rest is tagged."""
    pg_timeout_s: float = PROCESS_GROUP_TIMEOUT_S
    wait_for_others_s: float = WAIT_FOR_OTHERS_S


def carried_columns(opts: TagOptions) -> list[str] | None:
    """``None`` (every non-text column) unless --id-column / --keep-columns name them."""
    if opts.id_column is None and opts.keep_columns is None:
        return None
    cols = ([opts.id_column] if opts.id_column else []) + list(opts.keep_columns or [])
    return list(dict.fromkeys(cols))


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``--num-shards/--shard-index``, else a SLURM array's task count and this task's position in it
    (``--array=0-14:2``: (ID - MIN) / STEP), else (1, 0)."""
    if num_shards is None and "SLURM_ARRAY_TASK_COUNT" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        num_shards = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        if shard_index is None:
            offset = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            shard_index = offset // max(1, int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1))
    num_shards = num_shards or 1
    shard_index = shard_index or 0
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} is not in [0, {num_shards})")
    return num_shards, shard_index


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_workers(opts: TagOptions) -> int:
    """How many worker processes prepare buffers (words, pieces, windows, batches) for this process's model.

    ``opts.host_workers``, else ``NER_TAG_HOST_WORKERS``, else none: the host side then runs in a thread beside
    the model.  On a CPU the model needs every core; beside a GPU (H200, 16 cores, MiniLM export) 0 host workers
    tagged faster than 2, 4 or 8 (``bench/results_gpu_scale.md``): the main process, which runs the model and
    writes the spans, is the limit there, and collecting the workers' buffers adds to it.
    """
    if opts.host_workers is not None:
        return max(0, int(opts.host_workers))
    if os.environ.get("NER_TAG_HOST_WORKERS", "").strip():
        return max(0, int(os.environ["NER_TAG_HOST_WORKERS"]))
    return 0


def set_threads(opts: TagOptions, device: torch.device) -> int:
    """Torch's threads: ``--threads``, else this process's share of the cores less its host workers' (so that
    they do not fight over cores), at most 4 beside a GPU."""
    if opts.threads:
        n = opts.threads
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        n = max(1, _cpus() // local - host_workers(opts))
        if device.type == "cuda":
            n = min(n, 4)
    torch.set_num_threads(n)
    return n
