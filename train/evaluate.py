"""Score an export on a labelled fold: ``python -m train.evaluate --model RUN/export --data DATA --fold test``.

Prints entity P/R/F1 (seqeval default and strict IOB2), per type, and token accuracy as JSON, with the
sentences' documents as context (as in training), and ``sentences_alone``: P/R/F1 with every sentence a
window of its own, as ``ner-tag`` meets a corpus of one sentence a row.
``--precision fp32,bf16`` scores the export in each precision (weights cast as the batch tagger does) and
adds how alike the taggings are (``agreement``: share of identical entity spans and sentences against the
first precision), so a user knows before a large tagging run whether bf16 changes anything.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.cli import BAD_INPUT_EXIT, OS_ERROR_EXIT, Parser, at_least, declared, os_error_line, text
from common.cli import device as device_name
from common.data import DataError, assign_documents, load_folds, sentences_alone
from common.labels import label_list
from common.distributed import resolve_device
from common.metrics import score_words, span_agreement
from taggers.export import ExportError, check_labels, load_tagger
from taggers.precision import PRECISIONS, cast_for_inference, resolve_precision
from common.options import Allowed
from taggers.predict import predict_windows


def main(argv=None) -> int:
    p = Parser(prog="ner-evaluate", description=__doc__)
    p.add_argument("--model", required=True, type=text)
    p.add_argument("--data", required=True, type=text)
    p.add_argument("--fold", default="test", type=text)
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", type=_precisions,
                   help="auto, fp32, bf16 or fp16, or several separated by commas to compare them (default fp32)")
    p.add_argument("--max-tokens", type=at_least(8), default=16384, help="padded word pieces per batch")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        sentences = assign_documents(load_folds(args.data, folds=(args.fold,))[args.fold])  # as in training
        results, tags = {}, {}
        for requested in args.precision:
            precision = resolve_precision(requested, device)
            model, windower = load_tagger(args.model, device)  # afresh: casting changes the weights in place
            check_labels(windower.labels, label_list(sentences), f"{args.data}: fold {args.fold!r}")
            model = cast_for_inference(model, precision, device)
            results[precision], tags[precision] = score(model, windower.windows(sentences), sentences,
                                                        windower.labels, device, precision, args.max_tokens,
                                                        windower.pad_id)
            alone, _ = score(model, windower.windows(sentences_alone(sentences)), sentences, windower.labels,
                             device, precision, args.max_tokens, windower.pad_id)
            results[precision]["sentences_alone"] = {k: alone[k] for k in ("precision", "recall", "f1")}
    except (DataError, ExportError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "CUDA" not in str(e):
            raise
        print(f"ner-evaluate: error: {e}", file=sys.stderr)
        return BAD_INPUT_EXIT
    except OSError as e:
        print(f"ner-evaluate: error: {os_error_line(e)}", file=sys.stderr)
        return OS_ERROR_EXIT
    if len(results) == 1:
        output = next(iter(results.values()))
    else:
        first, *others = list(results)
        output = {**results, "agreement": {f"{first} vs {other}": span_agreement(tags[first], tags[other])
                                           for other in others}}
    json.dump(output, sys.stdout, indent=1)
    print()
    return 0


def score(model, windows, sentences, labels, device, precision: str, max_tokens: int, pad_id: int,
          info=None) -> tuple[dict, list[list[str]]]:
    """Entity scores of ``model`` on ``sentences`` (encoded as ``windows``) and its predicted tags; with
    ``info`` of several ranks, each rank predicts a share and every rank gets both (the trainer's evaluation)."""
    preds = predict_windows(model, windows, [len(s) for s in sentences], device, precision, max_tokens, pad_id, info)
    tags = preds.tags(labels)
    scores = score_words([s.tags for s in sentences], tags)
    scores["token_accuracy"] = preds.token_accuracy
    scores["num_sentences"] = len(sentences)
    return scores, tags


def _precisions(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in PRECISIONS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected {', '.join(PRECISIONS)} (or several, comma-separated), "
                                         f"got {value!r}")
    return list(dict.fromkeys(names))


declared(_precisions, Allowed(choices=PRECISIONS), "fp64", "precisions")


if __name__ == "__main__":
    sys.exit(main())
