"""A head's hyperparameters, declared once: a frozen dataclass ``Config`` on the head class.

Each field is one hyperparameter: its type, its default (the paper's or the released code's
value) and, in the comment on its line, the equation, table or code line it comes from (as
nanoGPT's ``GPTConfig``). ``typing.Literal`` names the allowed strings; ``Optional[...] = None``
marks a value that differs between settings (the head's ``SETTING_DEFAULTS`` fills it). Numbers
are >= 0 unless a field's metadata says otherwise (``field(default=..., metadata={"min": 1})``).

One checker serves every road a value arrives by: ``heads.<name>`` in params.yaml, ``--set`` of
the checkpoint importer, the values a converter reads from an authors' checkpoint, and the
``hparams`` a checkpoint stores: :func:`check_value` (type and range, naming the key) and
:func:`replace` (``dataclasses.replace`` after checking every value).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping


class HparamError(ValueError):
    """A hyperparameter value is not allowed; ``key`` is the field at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def names(config_cls: type) -> list[str]:
    """The hyperparameter names of a ``Config`` class, sorted."""
    return sorted(f.name for f in dataclasses.fields(config_cls))


def defaults(config_cls: type) -> dict[str, Any]:
    """``{name: default}`` of a ``Config`` class, in declaration order."""
    return dataclasses.asdict(config_cls())


def _types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def _kind(tp: Any) -> str:
    """How an error names a type."""
    if tp is bool:
        return "true/false"
    if tp in (int, float):
        return "a number"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return f"a {getattr(tp, '__name__', tp)}"


def check_value(config_cls: type, name: str, value: Any, head: str = "") -> Any:
    """``value`` for field ``name`` of ``config_cls``, checked and in the field's type (an
    integral float for an ``int``, an int for a ``float``); ``HparamError`` otherwise, whose
    message says what is allowed and gives the default."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields:
        raise HparamError(name, f"head {head!r} has no hyperparameter {name!r}; valid: "
                                f"{', '.join(names(config_cls))}")
    tp, f = _types(config_cls)[name], fields[name]
    default = f.default
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    ok, out = _coerce(value, tp)
    if not ok:
        like = (f" like the default {default!r}"
                if default is not None and default is not dataclasses.MISSING else "")
        raise HparamError(name, f"expected {_kind(tp)}{like}, got {value!r}")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if not math.isfinite(out):
            raise HparamError(name, f"must be a finite number, got {value!r}")
        # a size or count (an int field whose default is >= 1) is at least 1
        size = tp is int and isinstance(default, int) and not isinstance(default, bool) and default >= 1
        low = f.metadata.get("min", 1 if size else 0)
        if out < low:
            raise HparamError(name, f"must be >= {low}, got {value!r}")
        high = f.metadata.get("max", 1 if "dropout" in name else None)
        if high is not None and out >= high:
            raise HparamError(name, f"must be < {high}, got {value!r}")
    return out


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) is Literal:
        return value in typing.get_args(tp), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def replace(config: Any, values: Mapping[str, Any], head: str = "") -> Any:
    """``dataclasses.replace(config, **values)`` with every value checked (:func:`check_value`)."""
    cls = type(config)
    return dataclasses.replace(config, **{k: check_value(cls, k, v, head) for k, v in values.items()})


def check_config(config_cls: type, head: str) -> None:
    """At registration: a frozen dataclass whose defaults pass their own checks."""
    if not (dataclasses.is_dataclass(config_cls)
            and config_cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise ValueError(f"head {head!r}: Config must be a frozen dataclass")
    for name, value in defaults(config_cls).items():
        try:
            check_value(config_cls, name, value, head)
        except HparamError as e:
            raise ValueError(f"head {head!r}: Config.{name} default {value!r}: {e}") from None


