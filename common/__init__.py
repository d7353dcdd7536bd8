"""What every layer shares; it imports no other package of the project.

* :mod:`common.data` / :mod:`common.labels` -- labelled data (JSON, CoNLL files) and its label set;
* :mod:`common.encoding` / :mod:`common.batching` -- words to word-piece windows, token-budget batches;
  :mod:`common.word_features` -- a word's casing class and characters, beside its pieces;
* :mod:`common.spans` / :mod:`common.metrics` / :mod:`common.partial_match` / :mod:`common.bootstrap` --
  entity spans and their scores;
* :mod:`common.distributed` -- distributed set-up and logging; :mod:`common.heartbeat` -- names the rank
  that holds a distributed job up;
* :mod:`common.options` -- the allowed values of every option, declared beside it; :mod:`common.cli` -- what
  the commands share at their edge (typed flags, exit codes, one-line OS errors);
* :mod:`common.io` -- atomic writes, JSON lines and TOML readers;
* :mod:`common.rundir` -- the ``ner-train`` run folder; :mod:`common.tagdir` -- the ``ner-tag`` output folder;
  :mod:`common.teacher` -- a teacher's ``ner-tag --word-probs`` output read back as training sentences.
"""
