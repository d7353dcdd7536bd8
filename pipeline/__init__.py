"""The main job (``ner-main`` / ``python -m pipeline``, run by ``make main``): train the BERT tagger, let it teach
the BiLSTM on a corpus, write the report, tag the corpus; every stage resumes (see :mod:`pipeline.__main__`)."""
