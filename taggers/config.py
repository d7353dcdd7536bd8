"""The tagger's configuration: architecture, levers and the encoding it reads.

``[model]`` of a training recipe; saved with every export (``ner_config.json``)
so that an export rebuilds its tagger without the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.options import opt

MODEL_TYPES = ("bert", "bilstm")

REMOVED_OPTIONS = {"head_hidden": 0, "freeze_layers": 0}
"""Options of earlier versions and the value that left them off: a saved ``[model]`` section (an export's
``ner_config.json``, a run's ``config.toml``) may still hold them."""


@dataclass
class ModelConfig:
    type: str = opt("bert", choices=MODEL_TYPES)
    """Tagger: bert or bilstm."""
    encoder: str = ""
    """Hugging Face model id or folder for the tokenizer (and the BERT encoder); empty = offline MiniLM."""
    max_length: int = opt(512, at_least=8)
    """Word pieces per window, special tokens included; longer sentences are split into windows."""
    label_all_pieces: bool = True
    """Continuation pieces carry I-X / O (True) or are ignored in loss and metrics (False)."""
    context_pieces: int = opt(0, at_least=0)
    """FLERT document context: pieces of neighbouring sentences added on each side (0 = off)."""
    pack_pieces: int = opt(0, at_least=8, or_zero=True)
    """Document packing: consecutive sentences of one document share a window of up to this many pieces
    (special tokens included), every one of them labelled and scored (0 = one sentence per window)."""
    use_casing: bool = True
    """Concatenate an embedding of each word's casing class before the head (and into the LSTM)."""
    casing_dim: int = opt(16, at_least=1)
    use_crf: bool = False
    """CRF output layer with IOB2-constrained Viterbi decoding."""
    constrained_decoding: bool = True
    """Without a CRF: decode the best IOB2-valid path over the softmax instead of the per-piece argmax."""
    dropout: float = opt(0.1, at_least=0, below=1)
    freeze_embeddings: bool = False
    """Keep the word-piece embedding table as initialised (BERT: the encoder's; position embeddings and the
    rest still train)."""
    # BiLSTM only
    embedding_dim: int = opt(0, at_least=0)
    """Word-piece embedding size (0 = the encoder's hidden size, needed to initialise from it)."""
    init_embeddings: bool = True
    """Initialise the embedding from the transformer's input embeddings."""
    lstm_hidden: int = opt(256, at_least=1)
    """Hidden size per direction."""
    lstm_layers: int = opt(2, at_least=1)
    char_dim: int = opt(0, at_least=0)
    """Character features: a character CNN's vector of each word (this many filters), concatenated to each of
    its pieces before the LSTM, so that spelling, affixes and case reach the tagger whole (0 = off)."""
    init_from: str = ""
    """Start from an existing export of the same tagger and tag set (fine-tuning further)."""


def without_removed_options(values: dict, where: str) -> dict:
    """A saved ``[model]`` section without the options of :data:`REMOVED_OPTIONS` that hold the value that left
    them off; ValueError naming ``where`` and the option when one holds another (the model it describes cannot
    be built any more)."""
    for key, off in REMOVED_OPTIONS.items():
        value = values.get(key, off)
        if value != off or isinstance(value, bool):
            raise ValueError(f"{where}: model.{key}={value!r}: this option was removed and a model made with it "
                             f"cannot be rebuilt (only {off}, off, is accepted)")
    return {k: v for k, v in values.items() if k not in REMOVED_OPTIONS}
