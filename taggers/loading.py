"""What loading a model can go wrong with, said in one line: :class:`ExportError`, :func:`load_failure` (torch's
size mismatches in full), the encoder's Hugging Face config, and transformers' load-time chatter turned off."""

from __future__ import annotations

import re


class ExportError(ValueError):
    """An export (or a model to build) that cannot be used; the message names the path and the problem."""


_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) "
                            r"from checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")


def load_failure(e: BaseException) -> str:
    """Why loading weights failed, in full on one line: torch's size mismatches listed as ``NAME: [9, 32] in
    the weights, [11, 32] in the model`` (torch's message puts them on the lines after its first)."""
    text = " ".join(str(e).split())
    mismatches = [f"{name}: [{saved}] in the weights, [{wanted}] in the model"
                  for name, saved, wanted in _SIZE_MISMATCH.findall(text)]
    if mismatches:
        return "size mismatch: " + "; ".join(mismatches)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def quiet_transformers() -> None:
    """Hugging Face's load-time warnings and progress bars say nothing a tagger user can act on."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def encoder_config(encoder_path: str):
    """The pre-trained encoder's Hugging Face config; ExportError when it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(encoder_path)
    except (OSError, ValueError) as e:
        raise ExportError(f"model.encoder {encoder_path!r}: cannot load its config: {e}") from None
