"""The one weights resolver: ``weights: pretrained | random | <path>``.

Every encoder's published checkpoint is described by data (:class:`WeightsSpec`: file name,
public location, hash prefix, cache, input size, mean/std or sample rate); preprocessing is
taken from that description. Resolution order for ``pretrained``:

1. the file in its owning library's cache, in its real format
   (torch hub ``<TORCH_HOME>/hub/checkpoints/`` for torchvision and torch-hub VGGish,
   ``~/panns_data/`` for PANNs, the Hugging Face hub cache for timm);
2. when ``allow_download`` is true, a download from the public location the way the owning
   library does it (``torch.hub.download_url_to_file`` with the sha256 hash-prefix check,
   ``huggingface_hub.hf_hub_download`` for timm);
3. otherwise, or when the download fails, :class:`WeightsNotFoundError` naming the file, its
   public location and where to put it.

``random`` initialises under an explicit seed (the global RNG is left untouched) and is
recorded as such; any other value is a path to a checkpoint in the encoder's native format.
Checkpoints are read by :func:`pipeline.files.load_checkpoint` (``torch.load(weights_only=True)``,
``numpy`` arrays, as in some foreign files, allow-listed; or safetensors) and loaded strictly.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from torch import nn
from torch.hub import download_url_to_file

from pipeline.config import InputError
from pipeline.files import check_finite_state, load_checkpoint  # noqa: F401  (the one checkpoint reader)

CacheKind = Literal["torch_hub", "panns", "hf"]
HASH_PREFIX = re.compile(r"-([a-f0-9]{6,64})\.")  # torch.hub convention: name-<sha256 prefix>.ext


DOWNLOAD_KEY = "runtime.extract.download"  # the params key that allows downloads (named in errors)


class WeightsNotFoundError(FileNotFoundError):
    """A checkpoint is neither given, cached nor downloadable; the message says where to put it."""


class WeightsLoadError(InputError):
    """A checkpoint exists but cannot be read, or does not load strictly into its encoder; the
    message names the file and the reason."""


@dataclass(frozen=True)
class WeightsSpec:
    """A published checkpoint, described by data."""

    name: str  # id recorded in feature metadata, e.g. "torchvision/vgg19.IMAGENET1K_V1"
    file: str  # file name in the cache (the real published name)
    url: str  # public location
    cache: CacheKind  # which library's cache holds it
    hash_prefix: Optional[str] = None  # sha256 prefix checked on download (torch.hub convention)
    hf_repo: Optional[str] = None  # Hugging Face repo id (cache == "hf")
    input_size: Optional[tuple[int, int]] = None  # (H, W) the network was trained at
    mean: Optional[tuple[float, ...]] = None  # per-channel mean, pixel values in [0, 1]
    std: Optional[tuple[float, ...]] = None
    sample_rate: Optional[int] = None  # audio encoders


@dataclass(frozen=True)
class ResolvedWeights:
    """Where an encoder's weights came from (recorded in every feature file)."""

    source: Literal["pretrained", "random", "path"]
    path: Optional[Path]  # file that was loaded (None for random)
    sha256: str  # file sha256 (pretrained/path); "" for random (the encoder hashes its state)
    seed: Optional[int] = None  # random init seed
    spec: Optional[WeightsSpec] = None

    def describe(self) -> str:
        if self.source == "random":
            return f"random(seed={self.seed})"
        if self.source == "pretrained":
            return f"pretrained:{self.spec.name if self.spec else self.path.name}"
        return str(self.path)


# ------------------------------------------------------------------------------------------
# Caches
# ------------------------------------------------------------------------------------------
def cache_dir(kind: CacheKind) -> Path:
    """The owning library's cache directory (read from the environment on every call)."""
    if kind == "torch_hub":
        return Path(torch.hub.get_dir()) / "checkpoints"
    if kind == "panns":
        return Path.home() / "panns_data"  # where panns_inference looks
    if kind == "hf":
        return Path(os.environ.get("HF_HUB_CACHE", HF_HUB_CACHE))
    raise ValueError(f"unknown cache kind {kind!r}")


def cached_file(spec: WeightsSpec) -> Optional[Path]:
    """The cached copy of ``spec``'s file, or None."""
    if spec.cache == "hf":
        hit = try_to_load_from_cache(spec.hf_repo, spec.file, cache_dir=cache_dir("hf"))
        return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None
    path = cache_dir(spec.cache) / spec.file
    return path if path.is_file() else None


def _where(spec: WeightsSpec) -> str:
    if spec.cache == "hf":
        return (f"the Hugging Face cache {cache_dir('hf')} (e.g. `huggingface-cli download "
                f"{spec.hf_repo} {spec.file}`), or set the model's `weights:` to a local copy")
    return f"{cache_dir(spec.cache) / spec.file}, or set the model's `weights:` to a local copy"


def fetch(spec: WeightsSpec) -> Path:
    """Download ``spec`` into its cache the way the owning library does (may raise)."""
    if spec.cache == "hf":
        return Path(hf_hub_download(spec.hf_repo, spec.file, cache_dir=cache_dir("hf")))
    dst = cache_dir(spec.cache) / spec.file
    dst.parent.mkdir(parents=True, exist_ok=True)
    print(f"weights: downloading {spec.url} -> {dst}", flush=True)
    download_url_to_file(spec.url, str(dst), hash_prefix=spec.hash_prefix, progress=True)
    return dst


def resolve_file(spec: WeightsSpec, allow_download: bool = True,
                 download_key: str = DOWNLOAD_KEY) -> Path:
    """Cached file, else a download when allowed, else :class:`WeightsNotFoundError`
    (naming ``download_key``, the params key that allows downloads)."""
    hit = cached_file(spec)
    if hit is not None:
        return hit
    reason = f"downloads are disabled ({download_key}: false)"
    if allow_download:
        try:
            return fetch(spec)
        except Exception as e:  # offline, HTTP error, hash mismatch: all end in the same error
            reason = f"download failed: {type(e).__name__}: {e}"
    raise WeightsNotFoundError(
        f"weights file {spec.file!r} ({spec.name}) not found and not fetched ({reason}). "
        f"Get it from {spec.url} and put it at {_where(spec)}.")


def resolve_weights(weights: str, spec: Optional[WeightsSpec], seed: int = 0,
            allow_download: bool = True, download_key: str = DOWNLOAD_KEY) -> ResolvedWeights:
    """``pretrained | random | <path>`` -> :class:`ResolvedWeights` (``sha256`` empty for random:
    :meth:`Encoder.metadata` records the hash of the initialised state instead)."""
    if weights == "random":
        return ResolvedWeights("random", None, "", seed, spec)
    if weights == "pretrained":
        if spec is None:
            raise WeightsNotFoundError("this encoder has no published weights; use `random` or a path")
        path = resolve_file(spec, allow_download, download_key)
        return ResolvedWeights("pretrained", path, file_sha256(path), None, spec)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {str(path)!r} (given in params) does not exist")
    return ResolvedWeights("path", path, file_sha256(path), None, spec)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, shapes, dtypes and values (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsLoadError(f"{where}: does not load strictly into {type(module).__name__}: {e}") from e


def materialize(create: Callable[[], nn.Module], weights: str, seed: int,
                spec: Optional[WeightsSpec], remap: Callable[[dict], dict] = lambda sd: sd,
                allow_download: bool = True,
                download_key: str = DOWNLOAD_KEY) -> tuple[nn.Module, ResolvedWeights]:
    """Build a module under ``seed`` and load its weights (strict) from the resolved file.

    ``remap`` is the encoder's pure key-mapping function from its native checkpoint format
    to the module's ``state_dict`` keys.
    """
    resolved = resolve_weights(weights, spec, seed, allow_download, download_key)
    with seeded(seed):
        module = create()
    if resolved.path is not None:
        state = remap(load_checkpoint(resolved.path))
        check_finite_state(state, str(resolved.path))  # before any extraction
        load_strict(module, state, str(resolved.path))
    return module, resolved
