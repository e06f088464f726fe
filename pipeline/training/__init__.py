"""The one training loop for every head.

Modules (imported explicitly; this package stays light because ``pipeline.config`` imports
``pipeline.training.config`` for every stage): ``config`` (params sections), ``data`` (split
tensors), ``loop`` (``train``, ``predict``), ``checkpoint`` (save/load/rebuild), ``run``
(params -> trained head).
"""
