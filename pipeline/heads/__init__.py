"""Localization heads, one module a paper; importing this package fills the registry."""
from ._registry import (SETTINGS, Head, build_head, count_parameters, from_authors_state_dict,
                        get_head_class, list_heads, register_head, resolve_hparams, train_defaults)

# One import a paper (each registers its head by name).
from . import avel, psp, cmbs, cace, m2n, vscg, baselines  # noqa: E402,F401  isort: skip

__all__ = ["SETTINGS", "Head", "build_head", "count_parameters", "from_authors_state_dict",
           "get_head_class", "list_heads",
           "register_head", "resolve_hparams", "train_defaults"]
