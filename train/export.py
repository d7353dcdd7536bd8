"""Building taggers from the config, and the self-describing inference export.

The export (``RUN/export``) is separate from resume checkpoints: weights, tag
map, tokenizer and config, nothing about optimisers.  A BERT tagger without
extras (no casing feature, no CRF, linear head) is written as a plain
``AutoModelForTokenClassification`` checkpoint, so Hugging Face tools load it
directly; every export also carries ``ner_config.json``, which
:func:`load_tagger` reads to rebuild either tagger.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import torch
from safetensors.torch import load_file, save_file

from common.encoding import WordPieceEncoder

from .config import ModelConfig
from .models import BertTagger, BiLSTMTagger, TaggerBase

FORMAT_VERSION = 1
NER_CONFIG = "ner_config.json"
WEIGHTS = "model.safetensors"

warnings.filterwarnings("ignore", message="where received a uint8 condition tensor")


class ExportError(ValueError):
    pass


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ExportError(f"{path}: cannot load a tokenizer: {e}") from None


def build_tagger(mcfg: ModelConfig, labels: list[str], encoder_path: str, tokenizer,
                 pretrained: bool = True) -> TaggerBase:
    """A new tagger from the config; ``pretrained=False`` builds the encoder from its config only."""
    from transformers import AutoConfig, AutoModel

    _quiet_transformers()
    kw = dict(use_casing=mcfg.use_casing, casing_dim=mcfg.casing_dim, use_crf=mcfg.use_crf,
              dropout=mcfg.dropout, head_hidden=mcfg.head_hidden, constrained_decoding=mcfg.constrained_decoding)
    enc_config = None
    if mcfg.type == "bert" or not mcfg.embedding_dim:
        try:
            enc_config = AutoConfig.from_pretrained(encoder_path)
        except (OSError, ValueError) as e:
            raise ExportError(f"model.encoder {encoder_path!r}: cannot load its config: {e}") from None
    if mcfg.type == "bert":
        encoder = AutoModel.from_pretrained(encoder_path) if pretrained else AutoModel.from_config(enc_config)
        return BertTagger(labels, encoder, **kw)
    emb_dim = mcfg.embedding_dim or enc_config.hidden_size
    model = BiLSTMTagger(labels, len(tokenizer), emb_dim, mcfg.lstm_hidden, mcfg.lstm_layers,
                         pad_id=tokenizer.pad_token_id or 0, freeze_embeddings=mcfg.freeze_embeddings, **kw)
    if pretrained and mcfg.init_embeddings:
        source = AutoModel.from_pretrained(encoder_path).get_input_embeddings().weight.detach()
        if source.shape[1] != emb_dim:
            raise ExportError(f"model.embedding_dim={emb_dim} but the encoder's embeddings have "
                              f"{source.shape[1]} dimensions; set embedding_dim=0 or init_embeddings=false")
        with torch.no_grad():
            rows = min(source.shape[0], model.embedding.weight.shape[0])
            model.embedding.weight[:rows] = source[:rows]
    return model


def make_encoder(mcfg: ModelConfig, labels, tokenizer, model: TaggerBase) -> WordPieceEncoder:
    """The encoder for this model: windows no longer than the model's position embeddings."""
    max_length = mcfg.max_length
    if model.max_positions:
        max_length = min(max_length, model.max_positions)
    return WordPieceEncoder(tokenizer, labels, max_length, mcfg.label_all_pieces, mcfg.context_pieces)


def save_export(model: TaggerBase, mcfg: ModelConfig, tokenizer, out_dir: str, extra: dict | None = None) -> None:
    """Write the export atomically: into ``out_dir.tmp``, then swap it in."""
    import dataclasses

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model = getattr(model, "module", model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    hf = isinstance(model, BertTagger) and model.hf_compatible
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": mcfg.type,
        "labels": list(model.labels),
        "max_length": mcfg.max_length,
        "label_all_pieces": mcfg.label_all_pieces,
        "context_pieces": mcfg.context_pieces,
        "use_casing": mcfg.use_casing,
        "use_crf": mcfg.use_crf,
        "decoding": "crf-viterbi" if mcfg.use_crf else ("iob2-constrained-viterbi" if mcfg.constrained_decoding
                                                        else "argmax"),
        "hf_compatible": hf,
        "loader": "transformers.AutoModelForTokenClassification" if hf else "train.export.load_tagger",
        "model": dataclasses.asdict(mcfg),
        **(extra or {}),
    }
    if isinstance(model, BiLSTMTagger):  # the resolved size, so loading needs no encoder config
        meta["model"]["embedding_dim"] = model.embedding.embedding_dim
    if isinstance(model, BertTagger):
        from transformers import AutoModelForTokenClassification

        config = model.encoder.config.__class__.from_dict(model.encoder.config.to_dict())
        config.num_labels = len(model.labels)
        config.id2label = dict(enumerate(model.labels))
        config.label2id = {t: i for i, t in enumerate(model.labels)}
        config.architectures = None
        if hf:
            hf_model = AutoModelForTokenClassification.from_config(config)
            missing, unexpected = hf_model.base_model.load_state_dict(model.encoder.state_dict(), strict=False)
            if missing or any(not k.startswith("pooler.") for k in unexpected):
                raise ExportError(f"encoder weights do not fit {type(hf_model).__name__}: "
                                  f"missing {missing}, unexpected {unexpected}")
            hf_model.classifier.load_state_dict(model.classifier.state_dict())
            hf_model.save_pretrained(tmp, safe_serialization=True)
        else:
            config.save_pretrained(tmp)  # architecture of the encoder, rebuilt without the hub
            save_file(state, os.path.join(tmp, WEIGHTS))
    else:
        save_file(state, os.path.join(tmp, WEIGHTS))
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, NER_CONFIG), "w") as f:
        json.dump(meta, f, indent=2)
    old = out_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_export_config(path: str) -> dict:
    meta_path = os.path.join(path, NER_CONFIG)
    if not os.path.isdir(path):
        raise ExportError(f"{path}: export folder not found")
    if not os.path.exists(meta_path):
        raise ExportError(f"{path}: not a ner-taggers export (no {NER_CONFIG})")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: export format {meta.get('format_version')} is not supported "
                          f"(this version reads {FORMAT_VERSION})")
    return meta


def load_tagger(path: str, device: str | torch.device = "cpu") -> tuple[TaggerBase, WordPieceEncoder]:
    """Load either tagger's export; returns the model (eval mode, on ``device``) and its encoder."""
    from transformers import AutoModelForTokenClassification

    _quiet_transformers()
    meta = read_export_config(path)
    fields = {f for f in ModelConfig.__dataclass_fields__}
    mcfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in fields})
    tokenizer = load_tokenizer(path)
    labels = meta["labels"]
    if meta["hf_compatible"]:
        hf_model = AutoModelForTokenClassification.from_pretrained(path)
        model = BertTagger(labels, hf_model.base_model, use_casing=False, use_crf=False, dropout=mcfg.dropout,
                           constrained_decoding=mcfg.constrained_decoding)
        model.classifier.load_state_dict(hf_model.classifier.state_dict())
    else:
        model = build_tagger(mcfg, labels, path, tokenizer, pretrained=False)
        state = load_file(os.path.join(path, WEIGHTS))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("_penalty")]
        if missing or unexpected:
            raise ExportError(f"{path}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    return model, make_encoder(mcfg, labels, tokenizer, model)


def check_labels(export_labels, data_labels, where: str) -> None:
    """An export can only score data whose entity types it knows."""
    unknown = sorted(set(data_labels) - set(export_labels))
    if unknown:
        raise ExportError(f"{where}: the data has tags {unknown} that the model was not trained on "
                          f"(model tags: {list(export_labels)}); it comes from another tag set")
