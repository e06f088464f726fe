"""The one training loop for every head.

Modules (imported explicitly; this package stays light because ``pipeline.config`` imports
``pipeline.training.config`` for every stage): ``config`` (params sections), ``data`` (split
tensors), ``loop`` (``train``, ``Training``, ``run_spec``), ``checkpoint`` (save/load/rebuild),
``selection`` (the released scripts' checks), ``run`` (params -> trained head). What a setting
trains on and how it is scored (``predict``, metrics) is :mod:`pipeline.settings`.
"""
