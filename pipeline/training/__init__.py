"""The one training loop for every head.

Modules (import the one you need; this package imports nothing): ``config`` (params sections
``train``, ``heads``, ``evaluate``, ``report``), ``data`` (split tensors), ``tasks`` (the
settings as task objects, with ``predict`` and ``accuracy``), ``loop`` (``train``),
``checkpoint`` (save/load/rebuild), ``selection`` (the released scripts' checkpoint choice),
``run`` (params -> trained head).
"""
