"""Batch tagging of raw text with a trained export (``ner-tag``).

* :mod:`infer.words` -- the rules for CoNLL-style words with exact character offsets and sentence-ish chunks;
  :mod:`infer.word_arrays` applies them to a whole buffer of texts at once;
* :mod:`infer.host_encoder` / :mod:`infer.vocabulary` / :mod:`infer.host_workers` -- the CPU side: texts to
  padded model batches, each distinct word encoded once, optionally in worker processes;
* :mod:`infer.tagger` -- :class:`~infer.tagger.TextTagger`: texts in, entity spans (Arrow columns) out;
* :mod:`infer.sources` / :mod:`infer.output` / :mod:`infer.runner` -- the Parquet batch job (streaming,
  sharding, resumable parts, summary; the folder's names are in :mod:`common.tagdir`); :mod:`infer.memory`
  keeps its memory flat; :mod:`infer.__main__` -- its CLI.
* :mod:`infer.fs` -- local paths or object-store URIs (``s3://``, ``gs://``) for the batch job's input and output;
* :mod:`infer.ray` -- :class:`~infer.ray.NerTagger`, the same tagging as a Ray Data ``map_batches`` callable.

The evaluation report is :mod:`report` (``ner-report``).

Library use::

    from infer.tagger import TextTagger
    tagger = TextTagger.from_export("runs/bert/export", device="cpu")
    tagger.tag(["EU rejects German call to boycott British lamb."])
    # [[{"start": 0, "end": 2, "label": "ORG", "text": "EU", "score": 0.99}, ...]]
"""
