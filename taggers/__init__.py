"""The taggers layer, shared by training, tagging and the report.

* :mod:`taggers.config` -- ``ModelConfig`` (the ``[model]`` section of a recipe);
* :mod:`taggers.models` -- the BiLSTM and BERT taggers (loss, decoding, own weights);
* :mod:`taggers.char_cnn` -- the BiLSTM's character features;
* :mod:`taggers.loading` -- what loading a model can go wrong with, in one line (``ExportError``);
* :mod:`taggers.decoding` -- IOB2-constrained CRF and Viterbi;
* :mod:`taggers.dropout` -- dropout with cheap random masks for CPU training;
* :mod:`taggers.hf` -- any Hugging Face token-classification model as a tagger (in ``ner-tag``);
* :mod:`taggers.export` -- the inference export (save, load);
* :mod:`taggers.precision` -- the one precision rule (fp32 / bf16 / fp16 and autocast);
* :mod:`taggers.predict` -- the one prediction path: windows to per-word label ids and probabilities.

It imports :mod:`common` only; ``train``, ``infer`` and ``report`` import it.
"""
