"""The two taggers.  Each owns its loss and its decoding; the loop only calls
``model(batch)`` and ``model.decode(batch, outputs)`` (see docs/DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchcrf import CRF

from common.data import split_tag
from common.encoding import CASING_CLASSES, IGNORE_INDEX


def iob2_allowed(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed transitions (from, to) and allowed start tags under IOB2: I-X only after B-X or I-X."""
    n = len(labels)
    parsed = [split_tag(t) for t in labels]
    trans = torch.ones(n, n, dtype=torch.bool)
    start = torch.ones(n, dtype=torch.bool)
    for j, (pj, tj) in enumerate(parsed):
        if pj == "I":
            start[j] = False
            for i, (pi, ti) in enumerate(parsed):
                trans[i, j] = pi in ("B", "I") and ti == tj
    return trans, start


class ConstrainedCRF(CRF):
    """pytorch-crf's CRF whose transitions forbid invalid IOB2 moves (scores -10000)."""

    def __init__(self, labels: list[str]):
        super().__init__(len(labels), batch_first=True)
        trans, start = iob2_allowed(labels)
        self.register_buffer("transition_penalty", (~trans).float() * -10000.0, persistent=False)
        self.register_buffer("start_penalty", (~start).float() * -10000.0, persistent=False)

    def reset_parameters(self) -> None:
        for name in ("start_transitions", "end_transitions", "transitions"):
            nn.init.uniform_(self._parameters[name], -0.1, 0.1)

    def _raw(self, name):
        try:
            return self._parameters[name]
        except KeyError:  # not registered yet: lets nn.Module register it
            raise AttributeError(name) from None

    # pytorch-crf reads self.transitions / self.start_transitions; serve the constrained ones
    @property
    def transitions(self):
        return self._raw("transitions") + self.transition_penalty

    @transitions.setter
    def transitions(self, value):
        self._parameters["transitions"] = value

    @property
    def start_transitions(self):
        return self._raw("start_transitions") + self.start_penalty

    @start_transitions.setter
    def start_transitions(self, value):
        self._parameters["start_transitions"] = value


def compact(mask: torch.Tensor):
    """Indices that move the True positions of each row to the left: (index [B, S], valid [B, S])."""
    counts = mask.sum(1)
    width = max(int(counts.max()), 1)
    # stable sort puts True (key 0) before False (key 1), preserving order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def constrained_viterbi(log_probs, mask, allowed, start_allowed) -> list[list[int]]:
    """Best tag path per row under IOB2 constraints, from per-position log-probabilities.

    ``log_probs`` [B, S, C] and ``mask`` [B, S] are left-aligned (valid positions first);
    tensors or arrays.  Used by taggers without a CRF so that decoding never produces an
    ``I-X`` that no ``B-X``/``I-X`` precedes.  In numpy: a per-position loop of small
    torch ops is several times slower on a CPU.
    """
    as_np = (lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
    log_probs, mask, allowed, start_allowed = map(as_np, (log_probs, mask, allowed, start_allowed))
    n, steps, c = log_probs.shape
    penalty = np.where(allowed, 0.0, -10000.0).astype(np.float32)
    score = log_probs[:, 0] + np.where(start_allowed, 0.0, -10000.0).astype(np.float32)
    ident = np.broadcast_to(np.arange(c), (n, c))
    history = np.empty((n, steps, c), dtype=np.int64)
    history[:, 0] = ident
    for t in range(1, steps):
        cand = score[:, :, None] + penalty[None]  # [n, from, to]
        idx = cand.argmax(1)
        best = np.take_along_axis(cand, idx[:, None, :], 1)[:, 0]
        m = mask[:, t, None]
        score = np.where(m, best + log_probs[:, t], score)
        history[:, t] = np.where(m, idx, ident)
    last = score.argmax(-1)
    path = np.empty((n, steps), dtype=np.int64)
    path[:, -1] = last
    for t in range(steps - 1, 0, -1):
        last = history[np.arange(n), t, last]
        path[:, t - 1] = last
    lengths = mask.sum(1)
    return [path[b, :k].tolist() for b, k in enumerate(lengths)]


class TaggerBase(nn.Module):
    """Shared head, loss and decoding over per-piece features from ``encode``."""

    hf_compatible = False
    max_positions: int | None = None
    """Longest input the model accepts (None: any)."""

    def __init__(self, labels: list[str], feature_dim: int, use_casing: bool, casing_dim: int,
                 use_crf: bool, dropout: float, head_hidden: int, constrained_decoding: bool = True):
        super().__init__()
        self.labels = list(labels)
        self.constrained_decoding = constrained_decoding
        allowed, start_allowed = iob2_allowed(self.labels)
        self.register_buffer("allowed_transitions", allowed, persistent=False)
        self.register_buffer("allowed_starts", start_allowed, persistent=False)
        self.use_casing = use_casing
        self.casing = nn.Embedding(len(CASING_CLASSES), casing_dim, padding_idx=0) if use_casing else None
        in_dim = feature_dim + (casing_dim if use_casing else 0)
        self.dropout = nn.Dropout(dropout)
        if head_hidden:
            self.classifier = nn.Sequential(nn.Linear(in_dim, head_hidden), nn.GELU(), nn.Dropout(dropout),
                                            nn.Linear(head_hidden, len(labels)))
        else:
            self.classifier = nn.Linear(in_dim, len(labels))
        self.crf = ConstrainedCRF(self.labels) if use_crf else None

    def encode(self, batch) -> torch.Tensor:  # [B, T, H]
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"encoder": [...], "head": [...]}``: pre-trained parts and the rest (two learning rates)."""
        raise NotImplementedError

    def forward(self, batch):
        features = self.encode(batch)
        if self.casing is not None:
            features = torch.cat([features, self.casing(batch["casing"]).to(features.dtype)], dim=-1)
        logits = self.classifier(self.dropout(features))
        loss = None
        labels = batch.get("labels")
        if labels is not None and bool((labels != IGNORE_INDEX).any()):
            loss = self._crf_loss(logits, labels) if self.crf is not None else nn.functional.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return {"loss": loss, "logits": logits}

    def _crf_loss(self, logits, labels):
        order, valid = compact(labels != IGNORE_INDEX)
        em = logits.float().gather(1, order[..., None].expand(-1, -1, logits.size(-1)))
        tags = labels.gather(1, order).clamp(min=0)
        keep = valid[:, 0]  # rows with at least one labelled piece
        nll = -self.crf(em[keep], tags[keep], mask=valid[keep], reduction="sum")
        return nll / valid.sum()

    @torch.no_grad()
    def decode(self, batch, outputs):
        """Per-piece (predicted class, its probability).

        With a CRF: its Viterbi path.  Without: the IOB2-constrained best path
        over the softmax (``constrained_decoding``), or the plain argmax.
        """
        logits = outputs["logits"].float()
        probs = logits.softmax(-1)
        if self.crf is None and not self.constrained_decoding:
            p, pred = probs.max(-1)
            return pred, p
        pred = probs.argmax(-1)
        order, valid = compact(batch["scored"])
        keep = valid[:, 0]
        if self.crf is not None:
            rows = keep.nonzero().flatten()
        else:
            # the constrained best path is the argmax path wherever that is already valid IOB2:
            # Viterbi only runs on the rows where it is not
            seq = pred.gather(1, order)
            allowed, starts = self.allowed_transitions, self.allowed_starts
            bad = (~starts[seq[:, 0]] & valid[:, 0]) | (~allowed[seq[:, :-1], seq[:, 1:]] & valid[:, 1:]).any(1)
            rows = (bad & keep).nonzero().flatten()
        if len(rows):
            em = logits[rows].gather(1, order[rows][..., None].expand(-1, -1, logits.size(-1)))
            if self.crf is not None:
                paths = self.crf.decode(em, mask=valid[rows])
            else:
                paths = constrained_viterbi(em.log_softmax(-1), valid[rows], self.allowed_transitions,
                                            self.allowed_starts)
            for r, path in zip(rows.tolist(), paths):
                pred[r, order[r, :len(path)]] = torch.as_tensor(path, device=pred.device)
        return pred, probs.gather(-1, pred[..., None]).squeeze(-1)


class BertTagger(TaggerBase):
    """A pre-trained transformer encoder with a token-level head."""

    def __init__(self, labels, encoder: nn.Module, use_casing=True, casing_dim=16, use_crf=False,
                 dropout=0.1, head_hidden=0, constrained_decoding=True):
        super().__init__(labels, encoder.config.hidden_size, use_casing, casing_dim, use_crf, dropout,
                         head_hidden, constrained_decoding)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by a token tagger; DDP refuses parameters without gradients
        self.encoder = encoder
        self.max_positions = getattr(encoder.config, "max_position_embeddings", None)
        self.hf_compatible = not (use_casing or use_crf or head_hidden)

    def encode(self, batch):
        return self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def parameter_groups(self):
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        return {"encoder": enc, "head": [p for p in self.parameters() if id(p) not in ids]}


class BiLSTMTagger(TaggerBase):
    """Word-piece embedding, bidirectional LSTM, feed-forward head."""

    def __init__(self, labels, vocab_size: int, embedding_dim: int, lstm_hidden=256, lstm_layers=2,
                 use_casing=True, casing_dim=16, use_crf=False, dropout=0.1, head_hidden=0, pad_id=0,
                 freeze_embeddings=False, constrained_decoding=True):
        super().__init__(labels, 2 * lstm_hidden, use_casing, casing_dim, use_crf, dropout, head_hidden,
                         constrained_decoding)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        lstm_in = embedding_dim + (casing_dim if use_casing else 0)
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(lstm_in, lstm_hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)

    def encode(self, batch):
        x = self.embedding(batch["input_ids"])
        if self.casing is not None:
            x = torch.cat([x, self.casing(batch["casing"])], dim=-1)
        x = self.input_dropout(x)
        lengths = batch["attention_mask"].sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out

    def parameter_groups(self):
        emb = [p for p in self.embedding.parameters() if p.requires_grad]
        ids = {id(p) for p in self.embedding.parameters()}
        return {"encoder": emb, "head": [p for p in self.parameters() if id(p) not in ids and p.requires_grad]}
