"""The two taggers.  Each owns its loss, its decoding and its weights in an export;
the training loop only calls ``model(batch)``, the prediction path ``model.decode(batch, outputs)``,
and the export ``save``/``load`` (see docs/DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from common.encoding import IGNORE_INDEX
from common.word_features import CASING_CLASSES

from .char_cnn import CharCNN
from .config import ModelConfig
from .decoding import ConstrainedCRF, compact, crf_marginals, iob2_allowed, iob2_penalties, viterbi
from .loading import ExportError, encoder_config, quiet_transformers
from .precision import register_eager_masks

WEIGHTS = "model.safetensors"


class TaggerBase(nn.Module):
    """Shared head, loss and decoding over per-piece features from ``features``."""

    model_type = ""
    """The ``model.type`` that builds this class."""
    hf_compatible = False
    max_positions: int | None = None
    """Longest input the model accepts (None: any)."""
    char_dim = 0
    """Size of the character features the tagger reads (0: none, and its windows carry no characters)."""

    def __init__(self, labels: list[str], feature_dim: int, use_casing: bool, casing_dim: int,
                 use_crf: bool, dropout: float, constrained_decoding: bool = True):
        super().__init__()
        self.labels = list(labels)
        self.constrained_decoding = constrained_decoding
        allowed, start_allowed = iob2_allowed(self.labels)
        self.register_buffer("allowed_transitions", allowed, persistent=False)
        self.register_buffer("allowed_starts", start_allowed, persistent=False)
        transition_penalty, start_penalty = iob2_penalties(self.labels)
        self.register_buffer("transition_penalty", transition_penalty, persistent=False)
        self.register_buffer("start_penalty", start_penalty, persistent=False)
        self.use_casing = use_casing
        self.casing = nn.Embedding(len(CASING_CLASSES), casing_dim, padding_idx=0) if use_casing else None
        in_dim = feature_dim + (casing_dim if use_casing else 0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_dim, len(labels))
        self.crf = ConstrainedCRF(self.labels) if use_crf else None

    def features(self, batch) -> torch.Tensor:  # [B, T, H]
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"encoder": [...], "head": [...]}``: pre-trained parts and the rest (two learning rates)."""
        raise NotImplementedError

    # ---- building, saving and loading (the export calls these; it never asks which tagger it holds)
    @classmethod
    def build(cls, mcfg: ModelConfig, labels: list[str], encoder_path: str, tokenizer) -> "TaggerBase":
        """A new tagger for training, its pre-trained parts loaded from ``encoder_path``."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str, mcfg: ModelConfig, labels: list[str], tokenizer) -> "TaggerBase":
        """The tagger saved in the export folder ``path`` by :meth:`save`."""
        raise NotImplementedError

    def save(self, out_dir: str) -> None:
        """Write the weights (and whatever else rebuilding needs) into ``out_dir``."""
        save_file(self._cpu_state(), os.path.join(out_dir, WEIGHTS))

    def vocab_size(self) -> int:
        """Rows of the word-piece embedding: the tokenizer may not have more tokens."""
        raise NotImplementedError

    def export_config(self, mcfg: ModelConfig) -> dict:
        """The model config as saved with the export (sizes resolved, so loading needs nothing else)."""
        return dataclasses.asdict(mcfg)

    def _cpu_state(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def _load_weights(self, path: str) -> None:
        state = load_file(os.path.join(path, WEIGHTS))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(f"{path}: weights do not match the model: missing {missing}, unexpected {unexpected}")

    # ---- training and prediction
    def forward(self, batch):
        features = self.features(batch)
        if self.casing is not None:
            features = torch.cat([features, self.casing(batch["casing"]).to(features.dtype)], dim=-1)
        logits = self.classifier(self.dropout(features))
        return {"loss": self.loss(logits, batch), "logits": logits}

    def loss(self, logits, batch):
        """Mean loss per trained piece (None when the batch trains none): gold ``labels`` (cross-entropy, or
        the CRF's negative log-likelihood) and teacher distributions ``soft_labels`` (distillation: the
        cross-entropy against the teacher's probabilities, on the per-piece softmax, with or without a CRF)."""
        labels, soft = batch.get("labels"), batch.get("soft_labels")
        if logits.device.type != "cpu" and (labels is not None or soft is not None):
            return self._loss_without_sync(logits, labels, soft)
        hard_n = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
        hard = None
        if hard_n:
            hard = self._crf_loss(logits, labels) if self.crf is not None else nn.functional.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        taught = soft.sum(-1) > 0 if soft is not None else None
        soft_n = int(taught.sum()) if taught is not None else 0
        if not soft_n:
            return hard
        soft_sum = -(soft[taught] * logits[taught].float().log_softmax(-1)).sum()
        return (soft_sum + (hard * hard_n if hard_n else 0.0)) / (hard_n + soft_n)

    def _crf_loss(self, logits, labels):
        order, valid = compact(labels != IGNORE_INDEX)
        em = logits.float().gather(1, order[..., None].expand(-1, -1, logits.size(-1)))
        tags = labels.gather(1, order).clamp(min=0)
        keep = valid[:, 0]  # rows with at least one labelled piece
        nll = -self.crf(em[keep], tags[keep], valid[keep]).sum()
        return nll / valid.sum()

    def _loss_without_sync(self, logits, labels, soft):
        """:meth:`loss` without reading a count on the host (a device sync each, on a GPU): sums over every
        row at full width, masked, divided by the trained pieces (0 when none, instead of None); the same value
        up to the order of the float sums."""
        total = logits.new_zeros((), dtype=torch.float32)
        count = torch.zeros((), dtype=torch.long, device=logits.device)
        if labels is not None:
            labelled = labels != IGNORE_INDEX
            if self.crf is not None:
                order, valid = compact(labelled, full_width=True)
                em = logits.float().gather(1, order[..., None].expand(-1, -1, logits.size(-1)))
                tags = labels.gather(1, order).clamp(min=0)
                total = total - (self.crf(em, tags, valid) * valid[:, 0]).sum()  # rows without labels weigh 0
            else:
                total = total + nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                            ignore_index=IGNORE_INDEX, reduction="sum")
            count = count + labelled.sum()
        if soft is not None:  # untaught pieces have all-zero teacher distributions: they add nothing
            total = total - (soft * logits.float().log_softmax(-1)).sum()
            count = count + (soft.sum(-1) > 0).sum()
        return total / count.clamp(min=1)

    def piece_distributions(self, batch, outputs) -> torch.Tensor:
        """Per-piece probabilities over the labels [B, T, C], what a teacher teaches (distillation): the
        softmax, or with a CRF its posterior marginals over each window's scored pieces."""
        logits = outputs["logits"].float()
        probs = logits.softmax(-1)
        if self.crf is None:
            return probs
        order, valid = compact(batch["scored"])
        rows = valid[:, 0].nonzero().flatten()
        if len(rows):
            marginals = crf_marginals(_gather_rows(logits, rows, order), valid[rows], self.crf.transitions,
                                      self.crf.start_transitions, self.crf.end_transitions)
            _scatter_rows(probs, rows, order, valid, marginals)
        return probs

    @torch.no_grad()
    def decode(self, batch, outputs, all_rows: bool | None = None):
        """Per-piece (predicted class, its probability).

        With a CRF: its Viterbi path.  Without: the IOB2-constrained best path
        over the softmax (``constrained_decoding``), or the plain argmax.
        ``all_rows`` (default: off a CPU) decodes every row at full width instead of picking the rows that need
        it: the same result, more arithmetic, and no device sync, so a GPU queues the next batch meanwhile.
        """
        logits = outputs["logits"].float()
        probs = logits.softmax(-1)
        if self.crf is None and not self.constrained_decoding:
            p, pred = probs.max(-1)
            return pred, p
        if all_rows is None:
            all_rows = logits.device.type != "cpu"
        pred = probs.argmax(-1)
        order, valid = compact(batch["scored"], full_width=all_rows)
        keep = valid[:, 0]
        if self.crf is None:
            # the constrained best path is the argmax path wherever that is already valid IOB2:
            # Viterbi only changes the rows where it is not
            seq = pred.gather(1, order)
            allowed, starts = self.allowed_transitions, self.allowed_starts
            bad = (~starts[seq[:, 0]] & valid[:, 0]) | (~allowed[seq[:, :-1], seq[:, 1:]] & valid[:, 1:]).any(1)
        if all_rows:
            em = logits.gather(1, order[..., None].expand(-1, -1, logits.size(-1)))
            path = self._best_paths(em, valid)
            if self.crf is None:
                path = torch.where(bad[:, None], path, seq)
            pred = pred.scatter(1, order, torch.where(valid, path, pred.gather(1, order)))
        else:
            rows = (keep if self.crf is not None else bad & keep).nonzero().flatten()
            if len(rows):
                _scatter_rows(pred, rows, order, valid, self._best_paths(_gather_rows(logits, rows, order),
                                                                         valid[rows]))
        return pred, probs.gather(-1, pred[..., None]).squeeze(-1)

    def _best_paths(self, em, valid):
        """The Viterbi path of left-aligned rows of logits: the CRF's, or the IOB2-constrained softmax's."""
        if self.crf is not None:
            return viterbi(em, valid, self.crf.transitions, self.crf.start_transitions, self.crf.end_transitions)
        return viterbi(em.log_softmax(-1), valid, self.transition_penalty, self.start_penalty)


def _gather_rows(logits, rows, order):
    """Rows ``rows`` of ``logits`` [B, T, C] with their scored pieces moved left (``order`` from ``compact``)."""
    return logits[rows].gather(1, order[rows][..., None].expand(-1, -1, logits.size(-1)))


def _scatter_rows(dest, rows, order, valid, values):
    """The inverse of :func:`_gather_rows` for ``dest`` [B, T] or [B, T, C], in place and in one scatter:
    ``values`` [rows, W(, C)] land on each row's scored pieces; every other place keeps its value."""
    index, mask = order[rows], valid[rows]
    if values.dim() == 3:
        index, mask = index[..., None].expand(-1, -1, values.size(-1)), mask[..., None]
    sub = dest[rows]
    dest[rows] = sub.scatter(1, index, torch.where(mask, values, sub.gather(1, index)))


def head_options(mcfg: ModelConfig) -> dict:
    """The constructor options that both taggers share."""
    return dict(use_casing=mcfg.use_casing, casing_dim=mcfg.casing_dim, use_crf=mcfg.use_crf, dropout=mcfg.dropout,
                constrained_decoding=mcfg.constrained_decoding)


class BertTagger(TaggerBase):
    """A pre-trained transformer encoder with a token-level head.

    Without extras (no casing feature, no CRF, linear head) the export is a plain
    ``AutoModelForTokenClassification`` checkpoint, so Hugging Face tools load it directly.
    """

    model_type = "bert"

    def __init__(self, labels, encoder: nn.Module, use_casing=True, casing_dim=16, use_crf=False,
                 dropout=0.1, constrained_decoding=True, freeze_embeddings=False):
        super().__init__(labels, encoder.config.hidden_size, use_casing, casing_dim, use_crf, dropout,
                         constrained_decoding)
        encoder.get_input_embeddings().weight.requires_grad_(not freeze_embeddings)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by a token tagger; DDP refuses parameters without gradients
        self.encoder = encoder
        register_eager_masks()  # no host read of the mask in a forward with eager attention
        self.max_positions = getattr(encoder.config, "max_position_embeddings", None)
        self.hf_compatible = not (use_casing or use_crf)

    def features(self, batch):
        return self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def vocab_size(self):
        return self.encoder.get_input_embeddings().num_embeddings

    @classmethod
    def build(cls, mcfg, labels, encoder_path, tokenizer):
        from transformers import AutoModel

        encoder_config(encoder_path)  # a clear error for a wrong path before the weights are looked for
        return cls(labels, AutoModel.from_pretrained(encoder_path), freeze_embeddings=mcfg.freeze_embeddings,
                   **head_options(mcfg))

    @classmethod
    def load(cls, path, mcfg, labels, tokenizer):
        from transformers import AutoModel, AutoModelForTokenClassification

        if not (mcfg.use_casing or mcfg.use_crf):
            hf_model = AutoModelForTokenClassification.from_pretrained(path)
            model = cls(labels, hf_model.base_model, **head_options(mcfg))
            model.classifier.load_state_dict(hf_model.classifier.state_dict())
            return model
        model = cls(labels, AutoModel.from_config(encoder_config(path)), **head_options(mcfg))
        model._load_weights(path)
        return model

    def save(self, out_dir):
        from transformers import AutoModelForTokenClassification

        config = self.encoder.config.__class__.from_dict(self.encoder.config.to_dict())
        config.num_labels = len(self.labels)
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {t: i for i, t in enumerate(self.labels)}
        config.architectures = None
        if not self.hf_compatible:
            config.save_pretrained(out_dir)  # the encoder's architecture, rebuilt without the hub
            super().save(out_dir)
            return
        hf_model = AutoModelForTokenClassification.from_config(config)
        missing, unexpected = hf_model.base_model.load_state_dict(self.encoder.state_dict(), strict=False)
        if missing or any(not k.startswith("pooler.") for k in unexpected):
            raise ExportError(f"encoder weights do not fit {type(hf_model).__name__}: "
                              f"missing {missing}, unexpected {unexpected}")
        hf_model.classifier.load_state_dict(self.classifier.state_dict())
        hf_model.save_pretrained(out_dir, safe_serialization=True)

    def parameter_groups(self):
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        return {"encoder": enc, "head": [p for p in self.parameters() if id(p) not in ids]}


class BiLSTMTagger(TaggerBase):
    """Word-piece embedding, bidirectional LSTM, feed-forward head."""

    model_type = "bilstm"

    def __init__(self, labels, vocab_size: int, embedding_dim: int, lstm_hidden=256, lstm_layers=2,
                 use_casing=True, casing_dim=16, use_crf=False, dropout=0.1, pad_id=0,
                 freeze_embeddings=False, constrained_decoding=True, char_dim=0):
        super().__init__(labels, 2 * lstm_hidden, use_casing, casing_dim, use_crf, dropout, constrained_decoding)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        lstm_in = embedding_dim + (casing_dim if use_casing else 0) + char_dim
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(lstm_in, lstm_hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        # made last and only when asked: without it the model draws the same random numbers as before it existed
        self.char_dim = char_dim
        self.char_cnn = CharCNN(char_dim) if char_dim else None

    def features(self, batch):
        x = self.embedding(batch["input_ids"])
        if self.casing is not None:
            x = torch.cat([x, self.casing(batch["casing"])], dim=-1)
        if self.char_cnn is not None:
            if "chars" not in batch:
                raise ValueError("this tagger reads character features (model.char_dim > 0): its windows need "
                                 "them (taggers.export.make_windower makes a windower that adds them)")
            x = torch.cat([x, self.char_cnn(batch["chars"]).to(x.dtype)], dim=-1)
        x = self.input_dropout(x)
        # pack_padded_sequence wants the lengths on the host: from the host's copy of the mask, when the batch
        # carries one, rather than a device sync
        lengths = batch["host_lengths"] if "host_lengths" in batch else batch["attention_mask"].sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out

    def parameter_groups(self):
        emb = [p for p in self.embedding.parameters() if p.requires_grad]
        ids = {id(p) for p in self.embedding.parameters()}
        return {"encoder": emb, "head": [p for p in self.parameters() if id(p) not in ids and p.requires_grad]}

    @classmethod
    def _new(cls, mcfg, labels, tokenizer, embedding_dim: int) -> "BiLSTMTagger":
        return cls(labels, len(tokenizer), embedding_dim, mcfg.lstm_hidden, mcfg.lstm_layers,
                   pad_id=tokenizer.pad_token_id or 0, freeze_embeddings=mcfg.freeze_embeddings,
                   char_dim=mcfg.char_dim, **head_options(mcfg))

    @classmethod
    def build(cls, mcfg, labels, encoder_path, tokenizer):
        embedding_dim = mcfg.embedding_dim or encoder_config(encoder_path).hidden_size
        model = cls._new(mcfg, labels, tokenizer, embedding_dim)
        if mcfg.init_embeddings:
            from transformers import AutoModel

            source = AutoModel.from_pretrained(encoder_path).get_input_embeddings().weight.detach()
            if source.shape[1] != embedding_dim:
                raise ExportError(f"model.embedding_dim={embedding_dim} but the encoder's embeddings have "
                                  f"{source.shape[1]} dimensions; set embedding_dim=0 or init_embeddings=false")
            with torch.no_grad():
                rows = min(source.shape[0], model.embedding.weight.shape[0])
                model.embedding.weight[:rows] = source[:rows]
        return model

    @classmethod
    def load(cls, path, mcfg, labels, tokenizer):
        model = cls._new(mcfg, labels, tokenizer, mcfg.embedding_dim)
        model._load_weights(path)
        return model

    def vocab_size(self):
        return self.embedding.num_embeddings

    def export_config(self, mcfg):
        return {**super().export_config(mcfg), "embedding_dim": self.embedding.embedding_dim}


TAGGERS: dict[str, type[TaggerBase]] = {cls.model_type: cls for cls in (BertTagger, BiLSTMTagger)}


def build_tagger(mcfg: ModelConfig, labels: list[str], encoder_path: str, tokenizer) -> TaggerBase:
    """A new tagger of ``mcfg.type`` for training."""
    quiet_transformers()
    return TAGGERS[mcfg.type].build(mcfg, labels, encoder_path, tokenizer)
