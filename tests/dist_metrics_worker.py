"""Helper for tests/test_distributed_metrics.py, launched by torchrun on gloo (CPU).

Every rank builds the same tiny BiLSTM tagger (seeded; :func:`build_model`) and the same windows of the
validation fold of the tiny data (:func:`make_windows`), then calls :func:`taggers.predict.predict_windows`
with its ``DistInfo`` -- the prediction path the trainer's evaluation uses -- and writes what it got
(label ids, probabilities, token-accuracy counts, and which batches it ran itself) to ``OUT_DIR/rank{r}.json``.

Usage: ``torchrun --standalone --nproc_per_node=2 dist_metrics_worker.py OUT_DIR TOKENIZER_DIR DATA_JSON``.
"""

from __future__ import annotations

import json
import os
import sys

N_SENTENCES = 40
MAX_LENGTH = 24
"""Word pieces per window: short, so that the longer sentences are cut into several overlapping windows."""
MAX_TOKENS = 160
"""Padded pieces per evaluation batch: small, so that there are many batches to share between the ranks."""


def make_windows(tokenizer_dir: str, data_json: str):
    """``(labels, windows, sentence_lengths, pad_id)`` for the first :data:`N_SENTENCES` validation sentences."""
    from common.data import load_folds
    from common.labels import label_list
    from common.encoding import PieceWindower
    from taggers.export import load_tokenizer

    folds = load_folds(data_json)
    labels = label_list(folds["train"])
    sentences = folds["valid"][:N_SENTENCES]
    windower = PieceWindower(load_tokenizer(tokenizer_dir), labels, max_length=MAX_LENGTH)
    windows = windower.windows(sentences)
    return labels, windows, [len(s) for s in sentences], windower.pad_id, len(windower.tokenizer)


def build_model(labels, vocab_size: int, pad_id: int):
    """A tiny BiLSTM tagger with seeded random weights (the same on every rank and in the test process)."""
    import torch

    from taggers.models import BiLSTMTagger

    torch.manual_seed(1234)
    model = BiLSTMTagger(labels, vocab_size, embedding_dim=8, lstm_hidden=8, lstm_layers=1, casing_dim=4,
                         pad_id=pad_id)
    return model.eval()


def count_batches(model) -> list[list[int]]:
    """Record, per forward call, the sentence index of each window in the batch (a forward hook)."""
    seen: list[list[int]] = []
    model.register_forward_hook(lambda module, args, output: seen.append(args[0]["sentence"].tolist()))
    return seen


def main(out_dir: str, tokenizer_dir: str, data_json: str) -> None:
    import torch

    torch.set_num_threads(1)
    from common import distributed
    from common.batching import shard_for_eval
    from taggers.predict import predict_windows

    info = distributed.setup("cpu", timeout_s=60)
    try:
        labels, windows, lengths, pad_id, vocab = make_windows(tokenizer_dir, data_json)
        model = build_model(labels, vocab, pad_id)
        seen = count_batches(model)
        preds = predict_windows(model, windows, lengths, info.device, max_tokens=MAX_TOKENS, pad_id=pad_id,
                                info=info)
        planned = shard_for_eval([len(w) for w in windows], MAX_TOKENS, info.world_size, info.rank)
        result = {
            "rank": info.rank, "world_size": info.world_size, "backend": info.backend,
            "label_ids": preds.label_ids, "probs": preds.probs,
            "correct_pieces": preds.correct_pieces, "labelled_pieces": preds.labelled_pieces,
            "batches_run": len(seen), "windows_run": sum(len(b) for b in seen),
            "sentences_run": sorted({s for b in seen for s in b}),
            "batches_planned": len(planned), "num_windows": len(windows),
            "ranks": distributed.gather_objects(info.rank, info),
        }
        with open(os.path.join(out_dir, f"rank{info.rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
