"""Length-bucketed, token-budget batching that is aware of distributed ranks.

Batches hold up to ``max_tokens`` *padded* tokens (so never more real tokens
than that); sentences of similar length are grouped so that padding to the
longest sentence of the batch wastes little; the order of batches is shuffled
every epoch from ``seed + epoch``.

Under DDP every rank must run the same number of steps, or the collective
all-reduce hangs.  The sampler builds the global list of batches once per
epoch (identically on every rank), pads it to a multiple of the world size (or
of ``pad_to``: the micro-batches of one optimizer step over all ranks, so that
every step takes the same global batches at any world size) by repeating the
first batches, and deals batch ``i`` to rank ``i % world_size``.
Repeated batches only happen in training; evaluation uses
:func:`shard_for_eval`, which never repeats a sentence.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import numpy as np
import torch

from .encoding import IGNORE_INDEX, EncodedWindow
from .word_features import CASE_PAD, MAX_WORD_CHARS


def token_budget_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                         max_sentences: int | None = None) -> list[list[int]]:
    """Group item indices into batches of at most ``max_tokens`` padded tokens.

    Items are ordered by length (ties in random order when ``shuffle``), cut
    greedily into batches, and the batches are shuffled.  An item longer than
    the budget gets a batch of its own.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep the random order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        too_many = max_sentences is not None and len(current) >= max_sentences
        if current and (new_longest * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Real tokens / padded tokens over all batches."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real / padded if padded else 1.0


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """A batch sampler for ``DataLoader(batch_sampler=...)``; see module docstring.

    ``set_epoch(e)`` reshuffles; ``skip(n)`` makes the next iteration start
    after the first ``n`` batches of this rank (resume mid-epoch).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, max_sentences: int | None = None, pad_to: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        if pad_to % num_replicas:
            raise ValueError(f"pad_to {pad_to} is not a multiple of num_replicas {num_replicas}")
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_sentences = max_sentences
        self.pad_to = pad_to or num_replicas
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def global_batches(self) -> list[list[int]]:
        batches = token_budget_batches(self.lengths, self.max_tokens, self.shuffle, self.seed + self.epoch,
                                       self.max_sentences)
        if len(batches) % self.pad_to:
            extra = self.pad_to - len(batches) % self.pad_to
            batches = batches + [batches[i % len(batches)] for i in range(extra)]
        return batches

    def rank_batches(self) -> list[list[int]]:
        return self.global_batches()[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        skip, self._skip = self._skip, 0
        return iter(batches[skip:])

    def __len__(self) -> int:
        return len(self.rank_batches())


def shard_for_eval(lengths: Sequence[int], max_tokens: int, num_replicas: int = 1, rank: int = 0) -> list[list[int]]:
    """This rank's evaluation batches: every item on exactly one rank, none repeated."""
    batches = token_budget_batches(lengths, max_tokens, shuffle=False)
    return batches[rank::num_replicas]


def collate_windows(windows: Sequence[EncodedWindow], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch of windows to its longest and stack into tensors."""
    n = max(len(w) for w in windows)
    size = (len(windows), n)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(size, dtype=torch.long)
    labels = torch.full(size, IGNORE_INDEX, dtype=torch.long)
    casing = torch.full(size, CASE_PAD, dtype=torch.long)
    word_index = torch.full(size, -1, dtype=torch.long)
    scored = torch.zeros(size, dtype=torch.bool)
    for r, w in enumerate(windows):
        k = len(w)
        input_ids[r, :k] = torch.tensor(w.input_ids)
        attention_mask[r, :k] = 1
        labels[r, :k] = torch.tensor(w.labels)
        casing[r, :k] = torch.tensor(w.casing)
        word_index[r, :k] = torch.tensor(w.word_index)
        scored[r, :k] = torch.tensor(w.scored, dtype=torch.bool)
    taught = [r for r, w in enumerate(windows) if w.soft is not None]
    extra = {}
    if taught:  # distillation: the teacher's probabilities per piece (zeros where a piece is not taught)
        soft = torch.zeros(*size, windows[taught[0]].soft.shape[1], dtype=torch.float32)
        for r in taught:
            soft[r, :len(windows[r])] = torch.from_numpy(windows[r].soft.astype(np.float32))
        extra["soft_labels"] = soft
    if windows[0].chars is not None:  # character features: each piece's word's characters
        chars = torch.zeros(*size, MAX_WORD_CHARS, dtype=torch.int16)
        for r, w in enumerate(windows):
            chars[r, :len(w)] = torch.from_numpy(w.chars)
        extra["chars"] = chars
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "casing": casing,
        "word_index": word_index,
        "scored": scored,
        "sentence": torch.tensor([w.sentence for w in windows], dtype=torch.long),
        **extra,
    }
