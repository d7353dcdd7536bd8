"""``ner-report``: the evaluation report comparing trained runs (see :mod:`report.__main__`).

Modules: ``runs`` (reading run folders, tagging with an export), ``sets`` (the ``--data`` sets, which
predictions count for which set, the one scoring rule), ``errors`` (entity error classes), ``analysis`` (scores,
breakdowns, disagreements), ``hints`` (improvement hints), ``stats`` (partial-match scores, bootstrap
intervals), ``document``, ``sections``, ``sections_stats``, ``sections_sets`` (the document), ``fmt`` (number formats), ``figures``,
``render`` (Markdown and HTML); ``tagged`` and ``sections_tagged`` (``--tagged``: two ner-tag outputs compared).
"""
