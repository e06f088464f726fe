"""Extraction engine and the one feature store (HDF5, community ``avadataset`` layout)."""
from .config import ExtractConfig
from .engine import ExtractResult, extract, plan
from .run import run_stage
from .store import FeatureSet, StoreWriter, import_community, load_features, write_features

__all__ = ["ExtractConfig", "ExtractResult", "FeatureSet", "StoreWriter", "extract",
           "import_community", "load_features", "plan", "run_stage", "write_features"]
