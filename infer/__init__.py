"""Batch tagging of raw text with a trained export (``ner-tag``), and the report (``ner-report``).

* :mod:`infer.words` -- raw text to CoNLL-style words with exact character offsets;
* :mod:`infer.tagger` -- :class:`~infer.tagger.TextTagger`: texts in, entity spans out;
* :mod:`infer.sources` / :mod:`infer.output` / :mod:`infer.runner` -- the Parquet batch job
  (streaming, sharding, resumable parts, summary); :mod:`infer.__main__` -- its CLI.
* :mod:`infer.fs` -- local paths or object-store URIs (``s3://``, ``gs://``) for the batch job's input and output;
* :mod:`infer.ray` -- :class:`~infer.ray.NerTagger`, the same tagging as a Ray Data ``map_batches`` callable.

Library use::

    from infer.tagger import TextTagger
    tagger = TextTagger.from_export("runs/bert/export", device="cpu")
    tagger.tag(["EU rejects German call to boycott British lamb."])
    # [[{"start": 0, "end": 2, "label": "ORG", "text": "EU", "score": 0.99}, ...]]
"""
