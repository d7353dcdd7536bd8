"""The main job (``ner-main`` / ``python -m pipeline``): train both taggers, write the report, tag a corpus."""
