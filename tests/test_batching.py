"""common.batching: token-budget batches, the DDP-aware sampler, eval shards, collation."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from common.batching import (
    TokenBudgetBatchSampler,
    collate_windows,
    padding_efficiency,
    shard_for_eval,
    token_budget_batches,
)
from common.encoding import EncodedWindow


def random_lengths(n=500, seed=0, lo=3, hi=120):
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


def assert_within_budget(lengths, batches, max_tokens):
    for b in batches:
        assert b, "empty batch"
        padded = max(lengths[i] for i in b) * len(b)
        assert padded <= max_tokens or len(b) == 1, (b, padded)


def test_token_budget_batches_budget_and_coverage():
    lengths = random_lengths() + [300, 257, 400]   # three items longer than the budget
    batches = token_budget_batches(lengths, 256, seed=1)
    assert_within_budget(lengths, batches, 256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for i in (500, 501, 502):
        assert [i] in batches
    # greedy: batches are reasonably full (a merge of neighbours in length order would overflow)
    assert padding_efficiency(lengths, batches) > 0.8


def test_token_budget_batches_known_answer():
    lengths = [5, 1, 3, 3, 10, 2]
    assert token_budget_batches(lengths, 6, shuffle=False) == [[1, 5], [2, 3], [0], [4]]
    assert token_budget_batches(lengths, 100, shuffle=False) == [[1, 5, 2, 3, 0, 4]]
    assert token_budget_batches(lengths, 100, shuffle=False, max_sentences=2) == [[1, 5], [2, 3], [0, 4]]
    assert token_budget_batches([], 10) == []
    assert padding_efficiency([2, 4], [[0, 1]]) == 0.75


def test_token_budget_batches_deterministic_and_seeded():
    lengths = random_lengths(800, seed=2)
    a = token_budget_batches(lengths, 512, seed=7)
    assert a == token_budget_batches(lengths, 512, seed=7)
    assert a != token_budget_batches(lengths, 512, seed=8)
    # different seed: not only a different batch order, also different groupings of equal lengths
    regroup = token_budget_batches(lengths, 512, seed=8)
    assert sorted(map(sorted, a)) != sorted(map(sorted, regroup))


def test_max_sentences():
    lengths = [4] * 100
    batches = token_budget_batches(lengths, 10_000, max_sentences=16)
    assert max(len(b) for b in batches) == 16
    assert sorted(i for b in batches for i in b) == list(range(100))


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_sampler_ranks(num_replicas):
    lengths = random_lengths(301, seed=3)
    samplers = [TokenBudgetBatchSampler(lengths, 400, seed=5, num_replicas=num_replicas, rank=r)
                for r in range(num_replicas)]
    global_batches = samplers[0].global_batches()
    assert all(s.global_batches() == global_batches for s in samplers)  # identical on every rank
    plain = token_budget_batches(lengths, 400, seed=5)
    assert len(global_batches) % num_replicas == 0
    n_extra = len(global_batches) - len(plain)
    assert 0 <= n_extra < num_replicas
    assert global_batches[:len(plain)] == plain and global_batches[len(plain):] == plain[:n_extra]

    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1                     # same number of steps everywhere
    assert all(len(s) == len(per_rank[0]) for s in samplers)
    seen = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(seen) == set(range(len(lengths)))                  # every item somewhere
    repeated = Counter(i for b in plain[:n_extra] for i in b)
    assert {i for i, c in seen.items() if c > 1} == set(repeated)  # only the padding batches repeat
    assert all(seen[i] == 1 + repeated[i] for i in seen)
    # ranks are disjoint on the un-padded batches
    for r in range(num_replicas):
        assert per_rank[r] == global_batches[r::num_replicas]


def test_sampler_padding_with_fewer_batches_than_ranks():
    samplers = [TokenBudgetBatchSampler([5, 5], 100, num_replicas=3, rank=r) for r in range(3)]
    [batch] = token_budget_batches([5, 5], 100)
    assert sorted(batch) == [0, 1]
    assert [list(s) for s in samplers] == [[batch]] * 3


def test_sampler_epochs_and_skip():
    lengths = random_lengths(400, seed=4)
    s = TokenBudgetBatchSampler(lengths, 300, seed=11, num_replicas=2, rank=1)
    e0 = list(s)
    assert list(s) == e0                             # same epoch, same order
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0
    assert len(e1) == len(s)
    s.skip(3)
    assert list(s) == e1[3:]                         # resumes at the 4th batch of this rank
    assert list(s) == e1                             # skip applies to one iteration only
    s2 = TokenBudgetBatchSampler(lengths, 300, seed=11, num_replicas=2, rank=1)
    s2.set_epoch(1)
    s2.skip(len(e1))
    assert list(s2) == []
    with pytest.raises(ValueError):
        TokenBudgetBatchSampler(lengths, 300, num_replicas=2, rank=2)


def test_sampler_in_dataloader():
    lengths = [3, 7, 2, 9, 4]
    data = list(range(5))
    sampler = TokenBudgetBatchSampler(lengths, 12, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=list)
    assert [sorted(b) for b in loader] == [[0, 2, 4], [1], [3]]


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_shard_for_eval(num_replicas):
    lengths = random_lengths(101, seed=6)
    shards = [shard_for_eval(lengths, 300, num_replicas, r) for r in range(num_replicas)]
    items = [i for shard in shards for b in shard for i in b]
    assert sorted(items) == list(range(101))                      # each exactly once, none repeated
    for shard in shards:
        assert_within_budget(lengths, shard, 300)
    assert shards[0] == shard_for_eval(lengths, 300, num_replicas, 0)  # deterministic


def test_padding_efficiency_on_conll_lengths(conll_train_piece_lengths):
    lengths = conll_train_piece_lengths
    assert len(lengths) == 14041
    batches = token_budget_batches(lengths, 4096, seed=0)
    assert_within_budget(lengths, batches, 4096)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert padding_efficiency(lengths, batches) >= 0.95
    sampler = TokenBudgetBatchSampler(lengths, 4096, num_replicas=2, rank=0)
    assert padding_efficiency(lengths, list(sampler)) >= 0.95


def test_collate_windows():
    w1 = EncodedWindow(0, [101, 7, 8, 102], [-100, 1, 2, -100], [0, 2, 1, 0], [-1, 0, 1, -1], [0, 1, 1, 0])
    w2 = EncodedWindow(3, [101, 9, 102], [-100, 0, -100], [0, 3, 0], [-1, 0, -1], [0, 1, 0])
    batch = collate_windows([w1, w2], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "casing", "word_index", "scored", "sentence"}
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 1, 2, -100], [-100, 0, -100, -100]]
    assert batch["casing"].tolist() == [[0, 2, 1, 0], [0, 3, 0, 0]]
    assert batch["word_index"].tolist() == [[-1, 0, 1, -1], [-1, 0, -1, -1]]
    assert batch["scored"].tolist() == [[False, True, True, False], [False, True, False, False]]
    assert batch["sentence"].tolist() == [0, 3]
    assert batch["scored"].dtype == torch.bool
    for k in ("input_ids", "attention_mask", "labels", "casing", "word_index", "sentence"):
        assert batch[k].dtype == torch.long
    assert collate_windows([w2], pad_id=5)["input_ids"].tolist() == [[101, 9, 102]]
    assert collate_windows([w2, w1], pad_id=5)["input_ids"].tolist()[0] == [101, 9, 102, 5]


def test_collate_real_windows(tokenizer):
    from common.data import Sentence
    from common.labels import labels_for_types
    from common.encoding import PieceWindower

    enc = PieceWindower(tokenizer, labels_for_types(["PER"]), max_length=16)
    windows = enc.windows([Sentence(["Peter", "Blackburn", "said"], ["B-PER", "I-PER", "O"]),
                          Sentence(["Paris"], ["O"])])
    batch = collate_windows(windows, enc.pad_id)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][1].tolist()[-2:] == [enc.pad_id] * 2
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["word_index"] >= 0).sum().item() == 4
