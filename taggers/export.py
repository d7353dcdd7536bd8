"""The self-describing inference export: weights, tag map, tokenizer and ``ner_config.json``.

The export (``RUN/export``) is separate from resume checkpoints: nothing about
optimisers.  Each tagger writes and reads its own weights
(:meth:`taggers.models.TaggerBase.save` / ``load``); this module adds the
tokenizer and the config that names the tagger, and swaps the folder in
atomically.  :func:`load_tagger` rebuilds either tagger from it.

A plain Hugging Face token-classification model (a folder without
``ner_config.json``, or an ``org/name`` hub id) is read too: see
:mod:`taggers.hf` (:func:`read_export_config` synthesises its config,
:func:`load_tagger` returns :class:`taggers.hf.HFTokenClassifier`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import torch

from common.data import split_tag
from common.encoding import PieceWindower
from common.io import atomic_write, writing

from . import hf
from .config import ModelConfig, without_removed_options
from .loading import ExportError, load_failure, quiet_transformers
from .models import TAGGERS, WEIGHTS, TaggerBase

FORMAT_VERSION = 1
NER_CONFIG = "ner_config.json"

# pytorch-crf masks with uint8 tensors; torch warns about it on every batch
warnings.filterwarnings("ignore", message="where received a uint8 condition tensor")

__all__ = ["ExportError", "NER_CONFIG", "check_labels", "load_tagger", "load_tokenizer", "make_windower",
           "read_export_config", "save_export"]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ExportError(f"{path}: cannot load a tokenizer: {e}") from None


def make_windower(mcfg: ModelConfig, labels, tokenizer, model: TaggerBase) -> PieceWindower:
    """The windower for this model: windows no longer than the model's position embeddings, with the
    characters of each piece's word when the model reads them."""
    max_length = mcfg.max_length
    if model.max_positions:
        max_length = min(max_length, model.max_positions)
    return PieceWindower(tokenizer, labels, max_length, mcfg.label_all_pieces, mcfg.context_pieces,
                         pack_pieces=mcfg.pack_pieces, char_features=model.char_dim > 0)


def weights_checksum(path: str) -> str:
    """SHA-256 of the export's weights file: corrupt tensor data behind an intact header is caught on load."""
    digest = hashlib.sha256()
    with open(os.path.join(path, WEIGHTS), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_readable(folder: str) -> None:
    """Export files get the usual permissions (some writers use private 0600 temp files)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def save_export(model: TaggerBase, mcfg: ModelConfig, tokenizer, out_dir: str, extra: dict | None = None) -> None:
    """Write the export atomically: into ``out_dir.tmp``, then swap it in; a failed write (no space, file too
    large) removes ``out_dir.tmp`` and raises ``OSError`` naming the file, the export before it untouched."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_export(model, mcfg, tokenizer, tmp, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_export(model: TaggerBase, mcfg: ModelConfig, tokenizer, tmp: str, extra: dict | None) -> None:
    os.makedirs(tmp)
    model = getattr(model, "module", model)
    with writing(os.path.join(tmp, WEIGHTS)):
        model.save(tmp)
    with writing(tmp):
        tokenizer.save_pretrained(tmp)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": model.model_type,
        "labels": list(model.labels),
        "max_length": mcfg.max_length,
        "label_all_pieces": mcfg.label_all_pieces,
        "context_pieces": mcfg.context_pieces,
        "pack_pieces": mcfg.pack_pieces,
        "use_casing": mcfg.use_casing,
        "use_crf": mcfg.use_crf,
        "decoding": "crf-viterbi" if mcfg.use_crf else ("iob2-constrained-viterbi" if mcfg.constrained_decoding
                                                        else "argmax"),
        "hf_compatible": model.hf_compatible,
        "loader": "transformers.AutoModelForTokenClassification" if model.hf_compatible
        else "taggers.export.load_tagger",
        "model": model.export_config(mcfg),
        "tokenizer_size": len(tokenizer),
        "weights_sha256": weights_checksum(tmp),
        **(extra or {}),
    }
    with atomic_write(os.path.join(tmp, NER_CONFIG)) as f:
        json.dump(meta, f, indent=2)
    _make_readable(tmp)


def read_export_config(path: str) -> dict:
    """``ner_config.json`` of an export, checked: format, model type, labels.

    A Hugging Face token-classification model (folder with ``config.json`` but no ``ner_config.json``, or an
    ``org/name`` hub id) gets a synthesised config (``model_type`` ``"hf-token-classification"``, ``labels``
    from its ``id2label``, ``hf_compatible: true``; see :func:`taggers.hf.read_hf_config`).
    """
    meta_path = os.path.join(path, NER_CONFIG)
    if not os.path.isdir(path):
        if hf.is_hub_id(path):
            return hf.read_hf_config(path)
        raise ExportError(f"{path}: export folder not found")
    if not os.path.exists(meta_path):
        if hf.ner_taggers_weights(path):
            raise ExportError(f"{path}: {NER_CONFIG} is missing: {WEIGHTS} holds a ner-taggers export's weights, "
                              f"which cannot be used without it (copy the export folder again, {NER_CONFIG} "
                              "included)")
        if os.path.exists(os.path.join(path, "config.json")):
            return hf.read_hf_config(path)
        raise ExportError(f"{path}: not a ner-taggers export (no {NER_CONFIG}) nor a Hugging Face model "
                          "folder (no config.json)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{meta_path}: not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ExportError(f"{meta_path}: export format {version} is not supported (this version reads "
                          f"{FORMAT_VERSION})")
    if meta.get("model_type") not in TAGGERS:
        raise ExportError(f"{meta_path}: model_type {meta.get('model_type')!r} is not one of {', '.join(TAGGERS)}")
    labels = meta.get("labels")
    try:
        if not isinstance(labels, list) or "O" not in labels or len(set(labels)) != len(labels):
            raise ValueError("must be a list of distinct tags with O")
        for tag in labels:
            split_tag(tag)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{meta_path}: labels {labels!r}: {e}") from None
    if not isinstance(meta.get("model"), dict):
        raise ExportError(f"{meta_path}: no 'model' section")
    try:
        meta["model"] = without_removed_options(meta["model"], meta_path)
    except ValueError as e:
        raise ExportError(str(e)) from None
    return meta


def _check_weights(path: str, meta: dict) -> None:
    if not os.path.exists(os.path.join(path, WEIGHTS)):
        raise ExportError(f"{path}: {WEIGHTS} is missing")
    expected = meta.get("weights_sha256")
    if expected and weights_checksum(path) != expected:  # an unreadable file: OSError naming it
        raise ExportError(f"{os.path.join(path, WEIGHTS)}: the weights do not match the checksum in {NER_CONFIG} "
                          "(the file is truncated, corrupt or was replaced)")


def _tokenizer_mismatch(path: str, size: int, expected: int) -> ExportError:
    """A missing or foreign tokenizer would tag every word as [UNK] without a word of warning."""
    return ExportError(f"{path}: the tokenizer files hold {size} tokens but the model was trained with {expected}: "
                       "the tokenizer files are missing or come from another model")


def load_tagger(path: str, device: str | torch.device = "cpu") -> tuple[TaggerBase, PieceWindower]:
    """Load either tagger's export; returns the model (eval mode, on ``device``) and its windower.

    A Hugging Face token-classification model (see :func:`read_export_config`) comes back as a
    :class:`taggers.hf.HFTokenClassifier` (same API) with its windower.
    Every problem with the folder is one :class:`ExportError` naming the file and what is wrong.
    """
    quiet_transformers()
    meta = read_export_config(path)
    if meta["model_type"] == hf.HF_MODEL_TYPE:
        return hf.load_hf_tagger(path, device, meta)
    _check_weights(path, meta)
    fields = set(ModelConfig.__dataclass_fields__)
    labels = meta["labels"]
    try:
        mcfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in fields})
        tokenizer = load_tokenizer(path)
        if meta.get("tokenizer_size", len(tokenizer)) != len(tokenizer):
            raise _tokenizer_mismatch(path, len(tokenizer), meta["tokenizer_size"])
        model = TAGGERS[meta["model_type"]].load(path, mcfg, labels, tokenizer)
    except ExportError:
        raise
    except OSError as e:
        if e.filename is None:
            raise ExportError(f"{path}: cannot load the model: {load_failure(e)}") from None
        raise  # a file the system would not read (permission, a folder): the command's edge names it
    except Exception as e:  # noqa: BLE001 - safetensors, torch and transformers raise many kinds
        raise ExportError(f"{path}: cannot load the model: {WEIGHTS} does not fit the model {NER_CONFIG} "
                          f"describes ({len(labels)} labels): {load_failure(e)}") from None
    if len(tokenizer) > model.vocab_size():
        raise _tokenizer_mismatch(path, len(tokenizer), model.vocab_size())
    model.to(device).eval()
    return model, make_windower(mcfg, labels, tokenizer, model)


def check_labels(model_labels, data_labels, where: str) -> None:
    """A model can only score data whose tags it knows."""
    unknown = sorted(set(data_labels) - set(model_labels))
    if unknown:
        raise ExportError(f"{where}: the data has tags {unknown} that the model was not trained on "
                          f"(model tags: {list(model_labels)}); it comes from another tag set")
