"""Localization heads, one module a paper.

Importing this package fills the registry: every public module in this folder is imported
(each registers its head with ``@register_head``), then the entry points of the group
``ave_pipeline.heads`` of other installed packages are loaded. A new head is one new file.
Heads build on :mod:`pipeline.settings` and import no training or evaluation code.
"""
from ._registry import (ENTRY_POINT_GROUP, NO_RELEASED_CODE, Head, HeadSpec, Recipe, Reported,
                        Schedule, SpecError, authors_head, build_head, count_parameters, default_seed,
                        from_authors_state_dict, get_head_class, instantiate, list_heads,
                        prediction_rule, rebuild, register_head, reported, resolve, resolve_hparams,
                        schedule,
                        train_defaults)

from pipeline.runtime import discover_plugins  # noqa: E402

DEFAULT_HEAD = "psp"  # train.head when params.yaml names none

discover_plugins(__name__, __path__, ENTRY_POINT_GROUP)

__all__ = ["DEFAULT_HEAD", "ENTRY_POINT_GROUP", "NO_RELEASED_CODE", "Head", "HeadSpec", "Recipe",
           "Reported", "Schedule", "SpecError", "authors_head", "build_head", "count_parameters", "default_seed",
           "from_authors_state_dict", "get_head_class", "instantiate", "list_heads",
           "prediction_rule", "rebuild", "register_head", "reported", "resolve", "resolve_hparams", "schedule",
           "train_defaults"]
