"""Keeping the batch tagger's memory flat over a long corpus (glibc's allocator on Linux)."""

from __future__ import annotations

MMAP_THRESHOLD = 16 * 1024 * 1024
"""Bytes from which glibc serves an allocation with its own mmap (returned to the system on free).  Measured
(bench/results_infer.md, 2026-11-26): 16 MiB keeps peak RSS at 10x the rows within 1.17x (256 KiB: 1.16x; glibc's
dynamic threshold: 1.30x) and tags 18% faster than 256 KiB, whose page faults on every activation cost the model."""


def bound_malloc() -> None:
    """Keep glibc from growing the heap as batches of ever new shapes come and go.

    glibc raises its mmap threshold each time a large block is freed, after
    which activations of every new batch shape are carved out of the heap and
    fragment it: RSS then creeps up with the number of batches (about +50%
    over a few thousand rows).  A fixed threshold (which also switches the
    dynamic adjustment off) returns large blocks to the system on free, so
    peak memory stays flat however many rows are tagged.  No-op elsewhere.
    """
    global _TRIM
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        _TRIM = libc.malloc_trim
    except (OSError, AttributeError):
        pass


_TRIM = None


def trim_malloc() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``); called once per buffer."""
    if _TRIM is not None:
        _TRIM(0)
