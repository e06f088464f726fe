"""The one config loader: ``params.yaml`` -> frozen dataclasses, validated on load.

Every section of ``params.yaml`` is a dataclass below; unknown keys, wrong types and values
outside a ``Literal`` raise :class:`ConfigError` naming the dotted key and what is allowed.
Stages call :func:`load_params` and read only their own section.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

import yaml

DEFAULT_PARAMS = "params.yaml"


from pipeline.errors import ConfigError, InputError  # noqa: F401  (their home for most callers)
from pipeline.files import decode_lines, read_text_bytes


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    prepared: str = "data/prepared"  # manifest, labels.h5, *_order.h5, report
    features: str = "data/features"  # <model>.h5 feature files
    finetune: str = "data/finetune"  # tuned encoder weights
    models: str = "models"  # trained head checkpoints
    reports: str = "reports"  # evaluation and results tables
    resume: str = "resume"  # resume points of interrupted runs (git-ignored; no stage output)

    def validate(self, key: str = "paths") -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name).strip():
                raise ConfigError(f"{key}.{f.name}: empty; a folder path is needed")


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic AVE-format demo set (pipeline.data.synth); the defaults are params.yaml's demo
    profile (``python -m pipeline.data.synth`` builds its options from these fields)."""
    root: str = "raw/demo"  # where the AVE-format set is written
    seed: int = 0  # everything is drawn from this seed
    num_classes: int = 6  # categories used (AVE's first N category names)
    train: int = 96  # videos per split
    val: int = 24
    test: int = 24
    width: int = 160  # frame size in pixels
    height: int = 120
    fps: float = 25.0  # video frame rate
    sample_rate: int = 16000  # audio sample rate of the AAC track
    full_fraction: float = 0.4  # share of events spanning all ten segments (AVE: ~2/3; demo: less)
    # share of background segments carrying one modality only, half a silent object, half an
    # off-screen sound (the rest are empty): what makes single-modality localisation fail
    single_modality: float = 0.8
    noise: float = 0.1  # audio/visual noise level (0..1)
    two_label: int = 4  # videos given a second annotation line of another category (AVE has some)
    # extra background-only training videos (weak setting), a share of the annotation lines
    # (AVE reference: 178 / 4143 = 0.043); listed in backgroundSet.txt, not in Annotations.txt
    background_only: float = 0.043
    workers: int = 2  # encoder processes (1: in-process)

    def validate(self, key: str = "synth") -> None:
        if not self.root.strip():
            raise ConfigError(f"{key}.root: empty; the folder the set is written to")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 16:
            raise ConfigError(f"{key}.width/height: even and >= 16 (H.264 4:2:0), got "
                              f"{self.width}x{self.height}")
        if not 1 <= self.num_classes <= 28:
            raise ConfigError(f"{key}.num_classes: 1..28 (AVE categories), got {self.num_classes}")
        if min(self.train, self.val, self.test) < 0 or self.fps <= 0 or self.sample_rate < 8000:
            raise ConfigError(f"{key}: split sizes >= 0, fps > 0, sample_rate >= 8000")
        for name in ("full_fraction", "single_modality", "noise", "background_only"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{key}.{name}: must be in 0..1, got {getattr(self, name)!r}")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers: must be >= 1, got {self.workers!r}")
        if not 0 <= self.two_label <= self.train + self.val + self.test:
            raise ConfigError(f"{key}.two_label: 0..number of videos, got {self.two_label}")


@dataclass(frozen=True)
class DataConfig:
    """The AVE-format root the pipeline reads (prepare stage)."""
    root: str = "raw/demo"  # raw/demo (synthetic) or raw/ave (real AVE: put videos in raw/ave/AVE/)
    min_duration: float = 1.0  # seconds; shorter videos are reported 'too_short' and excluded
    probe_timeout_s: float = 30.0  # per-video probe timeout (decord can hang)
    workers: int = 2  # probe worker processes
    # videos: probe every video (manifest from annotations + videos) | features: no video is
    # read; rows come from Annotations.txt alone and are valid per the imported feature files
    source: Literal["videos", "features"] = "videos"

    def validate(self, key: str = "data") -> None:
        if not self.root.strip():
            raise ConfigError(f"{key}.root: empty; the AVE-format folder (raw/demo or raw/ave)")
        if self.min_duration < 0:
            raise ConfigError(f"{key}.min_duration: must be >= 0 seconds, got {self.min_duration!r}")
        if self.probe_timeout_s <= 0:
            raise ConfigError(f"{key}.probe_timeout_s: must be > 0, got {self.probe_timeout_s!r}")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers: must be >= 1, got {self.workers!r}")


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against type ``tp`` (errors name ``key``): unions, literals, nested
    dataclasses, dicts, lists and scalars."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {_short(value)} is not allowed; allowed: "
                              + ", ".join(repr(a) for a in typing.get_args(tp)))
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (dict, list, tuple) or tp is dict:
        return _coerce_container(value, tp, key)
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[-1] if errors else f"{key}: invalid value {value!r}")


def _coerce_container(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_short(value)}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{key}.{key_text(k)}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {_short(value)}")
    et = args[0] if args else Any
    items = [_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


_SCALARS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}

# Ranges of numbers by key name (the last part of the dotted key), checked wherever the name
# appears (params sections, head hyperparameters, the converter's --set): (low, high,
# low excluded). Every number is also finite, and every integer below MAX_INT.
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
RANGES: dict[str, tuple[float, float, bool]] = {
    "seed": (0, MAX_SEED, False),
    "lr": (0, 1e3, False), "lr_encoder": (0, 1e3, False), "lr_head": (0, 1e3, False),
    "weight_decay": (0, 1e3, False), "clip_grad": (0, math.inf, False),
    "grad_clip": (0, math.inf, False), "lr_gamma": (0, 1e3, False),
    "temperature": (0, 1e3, True), "bece_temperature": (0, 1e3, True),
    "input_dropout": (0, 1, False), "dropout": (0, 1, False),
    "batch_size": (1, MAX_INT, False), "epochs": (1, 10**6, False),
    "width": (1, 8192, False), "height": (1, 8192, False), "image_size": (1, 8192, False),
    "fps": (0, 1000, True), "sample_rate": (1, 10**6, False),
    "frames_per_segment": (1, 1000, False),
}


def check_number(value: Any, key: str) -> Any:
    """``value`` (an int or float) finite, below :data:`MAX_INT` (integers) and within
    :data:`RANGES` of its name: else a :class:`ConfigError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    name = re.sub(r"\[\d+\]$", "", re.split(r"[. ]", key)[-1])
    low, high, open_low = RANGES.get(name, (-math.inf, math.inf, False))
    if isinstance(value, int) and name not in ("seed", "seeds") and abs(value) > MAX_INT:
        raise ConfigError(f"{key}: must be at most {MAX_INT} in size, got {value!r}")
    if value < low or (open_low and value == low):
        raise ConfigError(f"{key}: must be {'>' if open_low else '>='} {_num(low)}, got {value!r}")
    if value > high:
        raise ConfigError(f"{key}: must be <= {_num(high)}, got {value!r}")
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp not in _SCALARS:
        return value
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[tp]
    if not ok:
        raise ConfigError(f"{key}: expected {_SCALARS[tp]}, got {_short(value)}")
    return check_number(float(value) if tp is float else value, key)


def key_text(key: Any) -> str:
    """A key as written in a message: plain names as they are, anything else (blanks, control
    characters, not a string) quoted, so that a message stays one unambiguous line."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key and len(key) <= 80:
        return key
    return _short(key)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (errors stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, strictly: unknown keys and bad types raise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'params'}: expected a mapping, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(f"unknown key {where}{key_text(unknown[0])}; allowed keys"
                          f"{' of ' + key if key else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{key}.{name}" if key else name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{key + '.' if key else ''}{missing[0]}: required; it has no default")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(key)
    return obj


_SECTIONS: dict[str, type] = {}


def register_section(name: str):
    """Register the dataclass of a top-level params.yaml section (each package's ``config`` module)."""
    def deco(cls):
        if name in _SECTIONS and _SECTIONS[name] is not cls:
            raise ValueError(f"params section {name!r} registered twice")
        _SECTIONS[name] = cls
        return cls
    return deco


register_section("paths")(Paths)
register_section("synth")(SynthConfig)
register_section("data")(DataConfig)


# Every section and the module that registers its dataclass (it imports this module): a stage
# loads the modules of the sections it reads, and nothing else.
SECTION_MODULES: dict[str, str] = {
    "paths": __name__, "synth": __name__, "data": __name__,
    "extract": "pipeline.features.config", "published": "pipeline.features.config",
    "train": "pipeline.training.config", "heads": "pipeline.training.config",
    "evaluate": "pipeline.training.config", "report": "pipeline.training.config",
    "finetune": "pipeline.finetune.config",
}


MAX_PARAMS_BYTES = 2**20  # a params.yaml is a few KB


def _sections(names: Iterable[str]) -> dict[str, type]:
    """The dataclasses of the sections ``names`` (importing a section's module registers it)."""
    for mod in sorted({SECTION_MODULES[n] for n in names}):
        importlib.import_module(mod)
    return {n: _SECTIONS[n] for n in SECTION_MODULES if n in names}


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: Optional[dict] = None,
                sections: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Load and validate ``params.yaml``; returns ``{section: dataclass}``. ``sections``: the
    sections a stage reads (None: all of them); only those are built and checked, with the
    cross-section checks among them, so a stage loads no code for a section it does not read
    (stage ``resolve`` checks them all before any stage runs). Every error is a
    :class:`ConfigError` whose message starts with the file name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    raw = read_yaml(path)
    if overrides:
        raw = _merge(raw, overrides)
    try:
        return validate(raw, sections)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_duplicate_keys(node: Any, key: str = "") -> None:
    """Walk a composed YAML node: a key written twice in one mapping (YAML would keep the last
    silently) is a :class:`ConfigError` naming the dotted key and both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            dotted = f"{key}.{key_text(name)}" if key else key_text(name)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if name in seen:
                    raise ConfigError(f"{dotted}: duplicate key (lines {seen[name]} and {line}; "
                                      "YAML would keep the last silently)")
                seen[name] = line
            check_duplicate_keys(value_node, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_duplicate_keys(item, f"{key}[{i}]")


def read_yaml(path: Path) -> dict:
    """The top-level mapping of the YAML file ``path``: read as bytes (bounded), UTF-8 (a BOM
    honoured), duplicate keys refused; every error a :class:`ConfigError` naming the file."""
    try:
        lines, bad = decode_lines(read_text_bytes(path, MAX_PARAMS_BYTES), path,
                                  max_line=MAX_PARAMS_BYTES)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if bad:
        raise ConfigError(f"{bad[0].replace('; line left out', '')}; a params file must be "
                          "UTF-8 text")
    text = "\n".join(t or "" for _, t in lines)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        try:
            node = loader.get_single_node()
            check_duplicate_keys(node)
            raw = (loader.construct_document(node) if node is not None else None) or {}
        finally:
            loader.dispose()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


Check = Callable[[dict[str, Any]], None]
_CHECKS: list[tuple[frozenset[str], Check]] = []


def register_check(*sections: str) -> Callable[[Check], Check]:
    """Register a check across ``sections`` (e.g. ``finetune.image_size == extract.visual.image_size``);
    it gets ``{section: dataclass}`` and raises :class:`ConfigError` naming the keys. It runs
    whenever all of ``sections`` are loaded."""
    unknown = sorted(set(sections) - set(SECTION_MODULES))
    if unknown or not sections:
        raise ValueError(f"register_check: unknown sections {unknown or '(none given)'}")

    def deco(fn: Check) -> Check:
        _CHECKS.append((frozenset(sections), fn))
        return fn
    return deco



# Knobs that cannot change any output byte (how many processes, how much buffering, whether a
# missing pretrained file may be fetched, whether a matching resume point is continued). They are
# written under ``runtime.<section>.<key>`` in params.yaml, which no stage lists as a param, so
# changing one re-runs nothing; on load each is merged into its section (``cfg.workers``).
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("workers",),
    "data": ("workers",),
    "extract": ("workers", "queue_batches", "download"),
    "finetune": ("workers", "download", "resume", "clip_cache_mb"),
    "train": ("resume",),
}


def _apply_runtime(raw: dict) -> tuple[dict, dict[str, set[str]]]:
    """Merge ``runtime.<section>.<key>`` into its section; a runtime knob written in the section
    itself, or an unknown one, is an error naming the key. Returns the merged sections and the
    keys that came from ``runtime``."""
    runtime = raw.get("runtime") or {}
    if not isinstance(runtime, dict):
        raise ConfigError(f"runtime: expected a mapping, got {_short(runtime)}")
    out = {k: v for k, v in raw.items() if k != "runtime"}
    for section, values in out.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping, got {_short(values)}")
    for section, keys in RUNTIME_KEYS.items():
        inline = sorted(set(out.get(section) or {}) & set(keys))
        if inline:
            raise ConfigError(f"{section}.{inline[0]}: a runtime knob (it cannot change an "
                              f"output); set it as runtime.{section}.{inline[0]}")
    moved: dict[str, set[str]] = {}
    for section, values in runtime.items():
        if not isinstance(section, str) or section not in RUNTIME_KEYS:
            raise ConfigError(f"unknown key runtime.{key_text(section)}; allowed: "
                              f"{', '.join(RUNTIME_KEYS)}")
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"runtime.{section}: expected a mapping, got {_short(values)}")
        unknown = sorted(set(values) - set(RUNTIME_KEYS[section]), key=str)
        if unknown:
            raise ConfigError(f"unknown key runtime.{section}.{key_text(unknown[0])}; allowed: "
                              f"{', '.join(RUNTIME_KEYS[section])}")
        out[section] = {**(out.get(section) or {}), **values}
        moved[section] = set(values)
    return out, moved


def _section(name: str, cls: type, data: Any, from_runtime: set[str]) -> Any:
    """``from_dict`` of one section (or the section's own ``from_params`` where its keys are
    not fixed, e.g. ``heads``); errors about a runtime knob name it where it is written."""
    try:
        build = getattr(cls, "from_params", None)
        return build(data, name) if build else from_dict(cls, data, name)
    except ConfigError as e:
        msg = str(e)
        for key in from_runtime:
            msg = msg.replace(f"{name}.{key}:", f"runtime.{name}.{key}:")
        raise ConfigError(msg) from None


def validate(raw: dict, sections: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Runtime knobs merged into their sections, the sections ``sections`` (None: all) built and
    checked, then the cross-section checks among them (errors name the key)."""
    raw, moved = _apply_runtime(raw)
    unknown = sorted(set(raw) - set(SECTION_MODULES), key=str)
    if unknown:
        raise ConfigError(f"unknown section {_short(unknown[0])}; allowed: {', '.join(SECTION_MODULES)}")
    names = set(SECTION_MODULES if sections is None else sections)
    bad = sorted(names - set(SECTION_MODULES))
    if bad:
        raise ValueError(f"load_params: unknown sections {bad}")
    params = {name: _section(name, cls, raw.get(name), moved.get(name, set()))
              for name, cls in _sections(names).items()}
    for needs, check in _CHECKS:
        if needs <= names:
            check(params)
    return params


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recorded(section: str, obj: Any) -> dict[str, Any]:
    """``to_dict`` of a section without its runtime knobs: what outputs record of a config
    (a knob that cannot change an output is not written into one either)."""
    return {k: v for k, v in to_dict(obj).items() if k not in RUNTIME_KEYS.get(section, ())}


def to_dict(obj: Any) -> Any:
    """Plain-data snapshot of a config object (for checkpoints and feature metadata)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
