"""limace.training: MACE potentials trained with Lightning on labelled extxyz data.

- :mod:`~limace.training.config`: the typed YAML config of ``limace train`` (validated up front, one-line errors);
  ``limace train small`` runs the packaged recipe of limace-lisnin-small.
- :mod:`~limace.training.data`: LightningDataModule with mace-torch graphs and a resumable, sharded batch order.
- :mod:`~limace.training.module`: the thin LightningModule around mace-torch's ScaleShiftMACE (loss, EMA, stage two).
- :mod:`~limace.training.run`: ``train(config)``: Trainer, loggers (CSV, W&B), step checkpoints, exact resume, DDP.
- :mod:`~limace.training.export`: ``.model`` files for ``mace.calculators.MACECalculator`` and :func:`load_model`.
- :mod:`~limace.training.evaluate`: MAE/RMSE per config_type, parity plots, JSON; works for any ASE calculator.

Importing this package imports nothing heavy; the submodules import torch, mace-torch and Lightning.
"""
