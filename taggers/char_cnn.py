"""The BiLSTM tagger's character features (``model.char_dim``)."""

from __future__ import annotations

import torch
from torch import nn

from common.word_features import CHAR_VOCAB


class CharCNN(nn.Module):
    """A word's characters to one vector (Ma and Hovy 2016): character embeddings, one convolution of width 3,
    max-pooled over the word's characters.  Its input holds, per piece, the characters of the piece's word
    (``common.word_features.char_rows``) rather than an index into a per-batch table of words: every encoding path
    already works per piece, and convolving a word once per piece costs little next to the LSTM."""

    embedding_dim = 30
    width = 3

    def __init__(self, out_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(CHAR_VOCAB, self.embedding_dim, padding_idx=0)
        self.conv = nn.Conv1d(self.embedding_dim, out_dim, self.width, padding=self.width // 2)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:  # [B, T, C] character ids -> [B, T, out_dim]
        present = chars != 0
        x = self.embedding(chars.long()).flatten(0, 1).transpose(1, 2)  # [B*T, E, C]
        h = self.conv(x).unflatten(0, chars.shape[:2])  # [B, T, out_dim, C]
        h = h.masked_fill(~present[:, :, None, :], float("-inf")).amax(-1)  # the pool sees no padding
        return torch.where(present.any(-1, keepdim=True), h, 0.0)  # special tokens and padding: zeros
