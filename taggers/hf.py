"""Any Hugging Face token-classification model as a tagger: a plain model folder (or hub id) in ``ner-tag``.

A folder (or ``org/name`` hub id) without ``ner_config.json`` whose Hugging Face
config names a ``*ForTokenClassification`` architecture (or none, with a real
``id2label``) is read here instead of as an export:

* :func:`read_hf_config` checks it and returns a synthesised export config
  (``model_type: "hf-token-classification"``, ``labels`` = ``id2label`` in id
  order, ``hf_compatible: true``), so :mod:`infer.runner` and the report read it
  like an export's ``ner_config.json``;
* :func:`load_hf_tagger` loads it with ``AutoModelForTokenClassification`` into
  :class:`HFTokenClassifier`, which speaks the tagger API of
  :class:`taggers.models.TaggerBase` (``model(batch) -> {"loss", "logits"}``,
  ``decode`` = per-piece argmax and its softmax probability, ``labels``,
  ``max_positions``, ``vocab_size()``), and a :class:`PieceWindower` (no casing
  feature, no document context, windows no longer than the model's positions).

The tags must be ``O`` and ``B-``/``I-``/``E-``/``S-`` + type (IOB1, IOB2 or
BIOES; spans are read the conlleval way by :func:`common.spans.tags_to_spans`).
The generic ``LABEL_0 ..`` names (a config without a tag map) and any other tag
form are refused with an :class:`ExportError` listing them.  Predictions are
read from each word's first piece, as ``aggregation_strategy="first"`` does.
"""

from __future__ import annotations

import json
import logging
import os
import re

import torch
from torch import nn

from common.encoding import IGNORE_INDEX, PieceWindower

from .loading import ExportError, load_failure, quiet_transformers
from .precision import register_eager_masks

log = logging.getLogger(__name__)

HF_MODEL_TYPE = "hf-token-classification"
DEFAULT_MAX_LENGTH = 512
"""Longest window in word pieces (specials included) when the model allows more (as the project's exports)."""

_TAG = re.compile(r"(?:O|[BIES]-\S+)")
_GENERIC = re.compile(r"LABEL_\d+")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ACCEPTED_FORMS = ("'O', and 'B-', 'I-', 'E-' or 'S-' followed by the entity type "
                  "(IOB1, IOB2 or BIOES, e.g. B-PER, I-PER, E-PER, S-PER)")

__all__ = ["HF_MODEL_TYPE", "HFTokenClassifier", "hf_labels", "is_hub_id", "load_hf_tagger", "read_hf_config"]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def ner_taggers_weights(path: str) -> bool:
    """True when ``path`` holds weights that only a ner-taggers export's config describes (CRF, casing, LSTM,
    or the encoder under the tagger's own name)."""
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        return False
    try:
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            keys = list(f.keys())
    except Exception:  # noqa: BLE001 - unreadable: loading it says why
        return False
    # the BERT tagger keeps its encoder as ``encoder`` (a bare BertModel's own layers are ``encoder.layer.N``)
    return any(k.startswith(("crf.", "casing.", "lstm.", "embedding.", "encoder.embeddings.", "encoder.encoder."))
               for k in keys)


def _mismatches(path: str) -> str | None:
    """The tensors whose shapes differ between the weights and config.json (transformers only logs them)."""
    from transformers import AutoModelForTokenClassification

    try:
        _, info = AutoModelForTokenClassification.from_pretrained(path, output_loading_info=True,
                                                                  ignore_mismatched_sizes=True)
    except Exception:  # noqa: BLE001 - the first error is reported instead
        return None
    mismatched = sorted(info.get("mismatched_keys") or [])
    if not mismatched:
        return None
    return ("model.safetensors does not fit config.json: " + "; ".join(
        f"{name}: {list(saved)} in the weights, {list(wanted)} for config.json" for name, saved, wanted in mismatched)
        + " (does id2label list the labels the model was trained with?)")


def is_hub_id(path: str) -> bool:
    """``org/name`` that is not a local path: a Hugging Face hub model id (looked up on the hub or its cache)."""
    return bool(_HUB_ID.fullmatch(path)) and not os.path.exists(path) and ".." not in path


def hf_labels(config, where: str) -> list[str]:
    """``id2label`` in id order, checked: IOB/IOB2/BIOES tags with ``O``; ExportError otherwise."""
    id2label = getattr(config, "id2label", None) or {}
    try:
        id2label = {int(k): v for k, v in id2label.items()}
        labels = [id2label[i] for i in range(len(id2label))]
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"{where}: id2label {id2label!r} does not map the ids 0..{len(id2label) - 1} "
                          "to tags") from None
    if not labels:
        raise ExportError(f"{where}: the config has no id2label: it is not a token classifier")
    if all(isinstance(t, str) and _GENERIC.fullmatch(t) for t in labels):
        raise ExportError(f"{where}: the model has no tag map (id2label is the generic "
                          f"{', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}): set id2label in its "
                          f"config.json to its tags ({ACCEPTED_FORMS})")
    bad = [t for t in labels if not (isinstance(t, str) and _TAG.fullmatch(t))]
    if bad:
        raise ExportError(f"{where}: id2label has tags that are not IOB/IOB2/BIOES tags: {bad}; accepted: "
                          f"{ACCEPTED_FORMS}")
    if "O" not in labels:
        raise ExportError(f"{where}: id2label {labels} has no 'O' tag (outside any entity)")
    if len(set(labels)) != len(labels):
        dup = sorted({t for t in labels if labels.count(t) > 1})
        raise ExportError(f"{where}: id2label names the tags {dup} more than once")
    return labels


def _load_config(path: str):
    from transformers import AutoConfig

    quiet_transformers()
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, KeyError, hub errors
        if is_hub_id(path):
            raise ExportError(f"{path}: no such export folder, and not a Hugging Face hub model that can be "
                              f"loaded here ({_one_line(e)})") from None
        raise ExportError(f"{path}: cannot read the Hugging Face config ({_one_line(e)})") from None


def read_hf_config(path: str) -> dict:
    """The export config (``ner_config.json`` fields) of a Hugging Face token-classification model."""
    config = _load_config(path)
    where = path if is_hub_id(path) else os.path.join(path, "config.json")
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForTokenClassification") for a in architectures):
        raise ExportError(f"{where}: a Hugging Face {', '.join(architectures)}, not a token classifier "
                          "(*ForTokenClassification), and not a ner-taggers export (no ner_config.json)")
    labels = hf_labels(config, where)
    return {
        "model_type": HF_MODEL_TYPE,
        "labels": labels,
        "hf_compatible": True,
        "loader": "transformers.AutoModelForTokenClassification",
        "decoding": "argmax",
        "label_all_pieces": False,
        "context_pieces": 0,
        "use_casing": False,
        "use_crf": False,
        "model": {"hf_model_type": getattr(config, "model_type", None), "architectures": architectures,
                  "name_or_path": path},
        "source": "huggingface",
    }


def max_positions(config, model: nn.Module | None = None) -> int | None:
    """Longest input the model's position embeddings allow (RoBERTa-style offsets taken off); None: any."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(n, int) or n <= 0:
        return None
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    pad = getattr(embeddings, "padding_idx", None)  # RoBERTa & co: positions start after the padding id
    if isinstance(pad, int) and 0 <= pad < n:
        n -= pad + 1
    return n


class HFTokenClassifier(nn.Module):
    """An ``AutoModelForTokenClassification`` behind the tagger API (see :class:`taggers.models.TaggerBase`).

    Decoding is the per-piece argmax (the model's own tag scheme, IOB1/IOB2/BIOES, is not constrained).
    """

    model_type = HF_MODEL_TYPE
    hf_compatible = True
    crf = None
    use_casing = False

    def __init__(self, hf_model: nn.Module, labels: list[str]):
        super().__init__()
        self.hf_model = hf_model
        register_eager_masks()  # no host read of the mask in a forward with eager attention
        self.labels = list(labels)
        self.max_positions = max_positions(hf_model.config, hf_model)
        self.constrained_decoding = False  # not used: the argmax path (train.evaluate may set it)

    def forward(self, batch):
        logits = self.hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = None
        labels = batch.get("labels")
        if labels is not None and bool((labels != IGNORE_INDEX).any()):
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                               ignore_index=IGNORE_INDEX)
        return {"loss": loss, "logits": logits}

    @torch.no_grad()
    def decode(self, batch, outputs):
        """Per-piece (argmax class, its softmax probability)."""
        prob, pred = self.piece_distributions(batch, outputs).max(-1)
        return pred, prob

    def piece_distributions(self, batch, outputs) -> torch.Tensor:
        """Per-piece softmax probabilities [B, T, C]."""
        return outputs["logits"].float().softmax(-1)

    def vocab_size(self) -> int:
        return self.hf_model.get_input_embeddings().num_embeddings

    # not a ner-taggers tagger: it is not trained or exported by this project
    def parameter_groups(self):
        raise ExportError("a Hugging Face token-classification model cannot be fine-tuned with "
                          "model.init_from; give its folder as model.encoder instead")

    def save(self, out_dir: str) -> None:
        self.hf_model.save_pretrained(out_dir, safe_serialization=True)


def _byte_level_without_prefix_space(tokenizer) -> bool:
    """A byte-level BPE pre-tokenizer (RoBERTa, GPT-2) that would not mark pre-split words as word starts."""
    try:
        state = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
    except Exception:  # noqa: BLE001 - no Rust backend state to read
        return False

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
                return True
            return any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)

    return walk(state)


def _load_tokenizer(path: str):
    """The model's fast tokenizer, set up for pre-split words.

    Byte-level BPE tokenizers (RoBERTa, GPT-2 style) need ``add_prefix_space=True`` for that: without it,
    transformers 4 refuses pre-split words and transformers 5 silently encodes every word as if it started
    the text (``Sm ith`` instead of ``ĠSmith``), which is not what the model saw in training.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: cannot load a tokenizer ({_one_line(e)})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{path}: the tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer; "
                          "word offsets need one (add its tokenizer.json)")
    try:
        tokenizer([["a"]], is_split_into_words=True, add_special_tokens=False)
        usable = True
    except Exception:  # noqa: BLE001 - transformers 4 RoBERTa/GPT-2: pre-split words need add_prefix_space
        usable = False
    if not usable or _byte_level_without_prefix_space(tokenizer):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, add_prefix_space=True)
            tokenizer([["a"]], is_split_into_words=True, add_special_tokens=False)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{path}: the tokenizer cannot take pre-split words ({_one_line(e)})") from None
        if _byte_level_without_prefix_space(tokenizer):
            log.warning("%s: the byte-level tokenizer ignores add_prefix_space=True: words after the first are "
                        "encoded without their leading-space marker, which may cost accuracy", path)
    return tokenizer


def load_hf_tagger(path: str, device: str | torch.device = "cpu", meta: dict | None = None
                   ) -> tuple[HFTokenClassifier, PieceWindower]:
    """The model (fp32, eval mode, on ``device``) and its windower; ExportError naming the problem otherwise."""
    from transformers import AutoModelForTokenClassification

    quiet_transformers()
    meta = meta or read_hf_config(path)
    labels = meta["labels"]
    tokenizer = _load_tokenizer(path)
    try:
        hf_model, info = AutoModelForTokenClassification.from_pretrained(path, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - safetensors, torch and transformers raise many kinds
        raise ExportError(f"{path}: cannot load the model ({_mismatches(path) or load_failure(e)})") from None
    missing = sorted((info or {}).get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ExportError(f"{path}: the weights lack {shown}: not a trained token classifier (a bare encoder, or "
                          "a ner-taggers export that lost its ner_config.json)")
    model = HFTokenClassifier(hf_model.float(), labels)
    if len(tokenizer) > model.vocab_size():
        raise ExportError(f"{path}: the tokenizer files hold {len(tokenizer)} tokens but the model has "
                          f"{model.vocab_size()}: the tokenizer files come from another model")
    max_length = min(DEFAULT_MAX_LENGTH, model.max_positions or DEFAULT_MAX_LENGTH)
    try:
        windower = PieceWindower(tokenizer, labels, max_length, label_all_pieces=False, context_pieces=0)
    except ValueError as e:
        raise ExportError(f"{path}: {' '.join(str(e).split())}") from None
    if windower.max_length - windower.num_special < 1:
        raise ExportError(f"{path}: the model's window of {windower.max_length} pieces leaves no room for words")
    model.to(device).eval()
    return model, windower
