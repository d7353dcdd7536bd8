"""Score an export on a labelled fold: ``python -m train.evaluate --model RUN/export --data DATA --fold test``.

Prints entity P/R/F1 (seqeval default and strict IOB2), per type, and token accuracy as JSON.
``--decoding`` overrides the export's decoder (argmax / constrained) to compare them.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.data import DataError, load_folds
from common.labels import label_list
from common.distributed import resolve_device
from common.metrics import score_words
from taggers.export import ExportError, check_labels, load_tagger
from taggers.precision import resolve_precision
from taggers.predict import predict_windows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ner-evaluate", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fold", default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-tokens", type=int, default=16384, help="padded word pieces per batch")
    p.add_argument("--decoding", choices=["export", "argmax", "constrained"], default="export")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    try:
        model, windower = load_tagger(args.model, device)
        sentences = load_folds(args.data, folds=(args.fold,))[args.fold]
        check_labels(windower.labels, label_list(sentences), f"{args.data}: fold {args.fold!r}")
    except (DataError, ExportError) as e:
        print(f"ner-evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.decoding != "export":
        model.constrained_decoding = args.decoding == "constrained"
    preds = predict_windows(model, windower.windows(sentences), [len(s) for s in sentences], device,
                            resolve_precision(args.precision, device), args.max_tokens, windower.pad_id)
    scores = score_words([s.tags for s in sentences], [[windower.labels[i] for i in row] for row in preds.label_ids])
    scores["token_accuracy"] = preds.token_accuracy
    scores["num_sentences"] = len(sentences)
    json.dump(scores, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
