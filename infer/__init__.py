"""Batch tagging of raw text with a trained export (``ner-tag``).

* :mod:`infer.words` -- the rules for CoNLL-style words with exact character offsets and sentence-ish chunks;
  :mod:`infer.word_arrays` applies them to a whole buffer of texts at once;
* :mod:`infer.host_encoder` / :mod:`infer.vocabulary` / :mod:`infer.host_workers` -- the CPU side: texts to
  padded model batches, each distinct word encoded once, optionally in worker processes;
* :mod:`infer.tagger` -- :class:`~infer.tagger.TextTagger`: texts in, entity spans (Arrow columns) out;
* the Parquet batch job (streaming, sharding, resumable parts; the folder's names are in :mod:`common.tagdir`):
  :mod:`infer.runner` runs it; :mod:`infer.options` -- its options, shard, threads and host workers;
  :mod:`infer.sources` -- the input files and the part plan; :mod:`infer.shares` -- which part each process
  tags (work stealing, claims, waiting for live holders) and the ranks' figures gathered at the end;
  :mod:`infer.output` -- the output folder (identity, lock, clearing, re-planning); :mod:`infer.parts` -- a
  part's claim, files, manifest entry and state; :mod:`infer.output_stage` -- the thread that writes the
  parts; :mod:`infer.summary` -- the figures, ``_summary.json`` and the exit status; :mod:`infer.memory`
  keeps its memory flat; :mod:`infer.__main__` -- its CLI.
* :mod:`infer.fs` -- local paths or object-store URIs (``s3://``, ``gs://``) for the batch job's input and output;
* :mod:`infer.ray` -- :class:`~infer.ray.NerTagger`, the same tagging as a Ray Data ``map_batches`` callable.

Library use::

    from infer.tagger import TextTagger
    tagger = TextTagger.from_export("runs/bert/export", device="cpu")
    tagger.tag(["EU rejects German call to boycott British lamb."])
    # [[{"start": 0, "end": 2, "label": "ORG", "text": "EU", "score": 0.99}, ...]]
"""
