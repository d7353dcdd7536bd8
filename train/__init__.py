"""Training of the BiLSTM and BERT taggers (one loop for both): ``ner-train`` / ``python -m train``.

* :mod:`train.config` -- the typed configuration (dataclasses <- TOML recipe in ``train/configs/`` <- CLI);
* :mod:`train.trainer` -- the loop (:mod:`train.inputs` -- what it trains on; :mod:`train.state` -- what it
  keeps); :mod:`train.engine` / :mod:`train.ds_engine` -- plain torch (DDP) and
  DeepSpeed engines; :mod:`train.optim` -- optimizer and schedule; :mod:`train.checkpoint` -- resume state;
* :mod:`train.tracking` -- wandb; :mod:`train.evaluate` -- scoring an export on a labelled fold.
"""
