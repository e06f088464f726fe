"""Extraction engine and the one feature store (HDF5, community ``avadataset`` layout).

Attributes are imported lazily: ``pipeline.config`` imports ``pipeline.features.config``
without pulling in torch or h5py.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FeatureSet": "pipeline.features.store",
    "StoreWriter": "pipeline.features.store",
    "load_features": "pipeline.features.store",
    "write_features": "pipeline.features.store",
    "import_community": "pipeline.features.store",
    "ExtractConfig": "pipeline.features.config",
    "extract": "pipeline.features.engine",
    "ExtractResult": "pipeline.features.engine",
    "plan": "pipeline.features.engine",
    "run_stage": "pipeline.features.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.features' has no attribute {name!r}")
