"""Score an export on a labelled fold: ``python -m train.evaluate --model RUN/export --data DATA --fold test``.

Prints entity P/R/F1 (seqeval default and strict IOB2), per type, and token accuracy as JSON.
``--decoding`` overrides the export's decoder (argmax / constrained) to compare them.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.data import label_list, load_folds
from common.distributed import DistInfo, resolve_device

from .config import load_config
from .export import check_labels, load_tagger
from .trainer import evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ner-evaluate", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fold", default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--decoding", choices=["export", "argmax", "constrained"], default="export")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    model, encoder = load_tagger(args.model, device)
    if args.decoding != "export":
        model.constrained_decoding = args.decoding == "constrained"
    sentences = load_folds(args.data, folds=(args.fold,))[args.fold]
    check_labels(encoder.labels, label_list(sentences), f"{args.data}: fold {args.fold!r}")
    cfg = load_config(None, [])
    scores, _ = evaluate(model, encoder.encode(sentences), sentences, encoder.labels, DistInfo(device=device), cfg,
                         encoder.pad_id)
    json.dump(scores, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
