"""Keeping the batch tagger's memory flat over a long corpus (glibc's allocator on Linux)."""

from __future__ import annotations

MMAP_THRESHOLD = 64 * 1024 * 1024
"""Bytes from which glibc serves an allocation with its own mmap (returned to the system on free).  Large enough
that a batch's activations come from the heap: below it, the feed-forward activations of a large fp32 batch
(4,096 pieces x 1,536 x 4 bytes, 25 MB) are fresh mmaps whose page faults slow the model down, while peak memory
stays as it was (``bench/results_infer.md``)."""

TRIM_THRESHOLD = 256 * 1024 * 1024
"""Free bytes at the top of the heap above which glibc shrinks it after a free.  A fixed mmap threshold leaves
this at 128 KiB, so the heap was given back and faulted in again within every forward pass; memory is given
back once per buffer instead (:func:`trim_malloc`).  With both settings the model runs as fast as under glibc's
defaults (``bench/results_infer.md``)."""


def bound_malloc() -> None:
    """Keep glibc from growing the heap as batches of ever new shapes come and go.

    glibc raises its mmap threshold each time a large block is freed, after
    which activations of every new batch shape are carved out of the heap and
    fragment it: RSS then creeps up with the number of batches.  A fixed threshold (which also switches the
    dynamic adjustment off) returns large blocks to the system on free, so
    peak memory stays flat however many rows are tagged.  No-op elsewhere.
    """
    global _TRIM
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        _TRIM = libc.malloc_trim
    except (OSError, AttributeError):
        pass


_TRIM = None


def trim_malloc() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``); called once per buffer."""
    if _TRIM is not None:
        _TRIM(0)
