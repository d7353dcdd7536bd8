"""The one prediction path: model windows in, one label id and probability per word out.

Training evaluation, ``train.evaluate``, the report and the batch tagger all
come through :func:`predict_batches`: forward pass (autocast per
:mod:`taggers.precision`), the model's own decoding, and each word's
prediction read from its first piece (``word_index``) and scattered into one
flat array over all words.  :func:`predict_windows` batches windows itself and,
under DDP, shares them across ranks and gathers the words, so every rank gets
every prediction.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from common import distributed
from common.batching import collate_windows, shard_for_eval
from common.encoding import IGNORE_INDEX, EncodedWindow

from .precision import autocast


@dataclass
class FlatPredictions:
    """Per-word predictions over a flat word list; ``label_ids`` is -1 where a word got none."""

    label_ids: np.ndarray  # int64 [words]
    probs: np.ndarray  # float32 [words]
    correct_pieces: int = 0
    labelled_pieces: int = 0
    """Piece-level token-accuracy counts over the batches that carry labels."""
    distributions: np.ndarray | None = None
    """float32 [words, labels]: each word's probabilities over the labels, from its first piece (when asked)."""


@dataclass
class WordPredictions:
    """One label id and its probability per word of every sentence."""

    label_ids: list[list[int]]
    probs: list[list[float]]
    correct_pieces: int = 0
    labelled_pieces: int = 0

    def tags(self, labels) -> list[list[str]]:
        """The predicted tag of every word, ``labels`` being the model's tag list."""
        return [[labels[i] for i in row] for row in self.label_ids]

    @property
    def token_accuracy(self) -> float:
        return self.correct_pieces / self.labelled_pieces if self.labelled_pieces else 0.0


@dataclass
class DevicePredictions:
    """:class:`FlatPredictions` as tensors still on the model's device (nothing copied to the host yet)."""

    label_ids: torch.Tensor  # int64 [words], -1 where a word got none
    probs: torch.Tensor  # float32 [words]
    correct_pieces: torch.Tensor
    labelled_pieces: torch.Tensor
    distributions: torch.Tensor | None = None

    def to_host(self) -> FlatPredictions:
        return FlatPredictions(self.label_ids.cpu().numpy(), self.probs.cpu().numpy(), int(self.correct_pieces),
                               int(self.labelled_pieces),
                               None if self.distributions is None else self.distributions.cpu().numpy())


def on_device_ahead(batches: Iterable[dict[str, torch.Tensor]], device: torch.device, ahead: int = 2):
    """``batches`` copied to ``device`` (``non_blocking``: from pinned memory the copy overlaps the model), each
    copy issued ``ahead`` batches before the model needs it.  On a CPU the tensors pass as they are."""
    pending: deque = deque()
    for cpu_batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
        if torch.device(device).type != "cpu" and "attention_mask" in cpu_batch:
            batch["host_lengths"] = cpu_batch["attention_mask"].sum(1)  # what a BiLSTM packs by, on the host
        pending.append(batch)
        if len(pending) > ahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


@torch.inference_mode()
def predict_on_device(model, batches: Iterable[dict[str, torch.Tensor]], sentence_first_word: torch.Tensor,
                      num_words: int, device: torch.device, precision: str = "fp32",
                      distributions: bool = False) -> DevicePredictions:
    """Run ``model`` over collated ``batches``; word ``w`` of sentence ``s`` lands at ``sentence_first_word[s] + w``.
    With ``distributions``, also each word's probabilities over all labels (a teacher's signal).  Nothing here
    waits for the device (decoding included, see ``TaggerBase.decode``): the results stay on it."""
    was_training = model.training
    model.eval()
    # one slot more than there are words: pieces that own no word are written there, so the scatter needs no
    # boolean indexing, which would wait for the GPU after every batch instead of queueing the next one
    label_ids = torch.full((num_words + 1,), -1, dtype=torch.long, device=device)
    probs = torch.zeros(num_words + 1, dtype=torch.float32, device=device)
    first_word = sentence_first_word.to(device, non_blocking=True)
    correct = torch.zeros((), dtype=torch.long, device=device)
    labelled = torch.zeros((), dtype=torch.long, device=device)
    dists = (torch.zeros((num_words + 1, len(model.labels)), dtype=torch.float32, device=device) if distributions
             else None)
    for batch in on_device_ahead(batches, device):
        with autocast(device, precision):
            outputs = model(batch)
        pred, prob = model.decode(batch, outputs)
        if "labels" in batch:
            mask = batch["labels"] != IGNORE_INDEX
            correct += ((pred == batch["labels"]) & mask).sum()
            labelled += mask.sum()
        word_index = batch["word_index"]
        flat = torch.where(word_index >= 0, first_word[batch["sentence"]][:, None] + word_index, num_words)
        label_ids[flat] = pred
        probs[flat] = prob.float()
        if dists is not None:
            dists[flat] = model.piece_distributions(batch, outputs)
    model.train(was_training)
    return DevicePredictions(label_ids[:-1], probs[:-1], correct, labelled, None if dists is None else dists[:-1])


def predict_batches(model, batches: Iterable[dict[str, torch.Tensor]], sentence_first_word: torch.Tensor,
                    num_words: int, device: torch.device, precision: str = "fp32",
                    distributions: bool = False) -> FlatPredictions:
    """:func:`predict_on_device`, copied to the host."""
    return predict_on_device(model, batches, sentence_first_word, num_words, device, precision,
                             distributions).to_host()


def predict_windows(model, windows: Sequence[EncodedWindow], sentence_lengths: Sequence[int],
                    device: torch.device, precision: str = "fp32", max_tokens: int = 16384, pad_id: int = 0,
                    info: distributed.DistInfo | None = None) -> WordPredictions:
    """Per-word predictions for every sentence; with ``info`` of several ranks, each rank runs a disjoint share."""
    info = info or distributed.DistInfo(device=device)
    if not sentence_lengths:
        return WordPredictions([], [])
    offsets = np.zeros(len(sentence_lengths) + 1, dtype=np.int64)
    np.cumsum(sentence_lengths, out=offsets[1:])
    batches = (collate_windows([windows[i] for i in idx], pad_id)
               for idx in shard_for_eval([len(w) for w in windows], max_tokens, info.world_size, info.rank))
    flat = predict_batches(model, batches, torch.from_numpy(offsets[:-1]), int(offsets[-1]), device, precision)
    label_ids, probs = flat.label_ids, flat.probs
    if info.distributed:  # each word was predicted on exactly one rank
        mine = np.flatnonzero(label_ids >= 0)
        for where, ids, ps in distributed.gather_objects((mine, label_ids[mine], probs[mine]), info):
            label_ids[where], probs[where] = ids, ps
    missing = np.flatnonzero(label_ids < 0)
    if missing.size:
        raise AssertionError(f"{missing.size} words got no prediction (windows do not cover every word)")
    correct, labelled = distributed.all_reduce_sum([flat.correct_pieces, flat.labelled_pieces], info)
    bounds = offsets[1:-1]
    return WordPredictions([row.tolist() for row in np.split(label_ids, bounds)],
                           [row.tolist() for row in np.split(probs, bounds)], int(correct), int(labelled))
