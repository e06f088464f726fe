"""Reading the authors' checkpoints: a state dict in the authors' module and key layout, as their
``torch.save(model.state_dict())`` writes it (with or without the ``module.`` prefix of
``nn.DataParallel``), converted into one of our heads strictly.

A head with public code implements ``Head.from_authors_state_dict(state_dict, setting,
**overrides)``: it wraps the dict in :class:`AuthorsStateDict`, infers the dimensions from the
shapes (:meth:`AuthorsStateDict.dim`), builds itself with
:func:`pipeline.heads._registry.authors_head` (the one rule for ``overrides``: the checkpoint's
widths win, an override that contradicts one is an error naming the key and both values, every
value is checked as ``heads.<name>`` in params.yaml) and fills itself with
:meth:`AuthorsStateDict.load_into` (a renaming of module prefixes, the longest prefix winning)
or, where tensors must be split or merged, with :meth:`~AuthorsStateDict.take` /
:meth:`~AuthorsStateDict.skip` / :meth:`~AuthorsStateDict.finish` directly. Every key of the
authors' dict is used exactly once (their layers that no output depends on are named and
skipped, shapes checked as well); the first missing, repeated, misshapen or unexpected key is a
one-line :class:`LayoutError` naming it. A size read with :meth:`AuthorsStateDict.dim` is
remembered: when a later key does not fit a size read from another key, the error names the key
the size came from first (a wrong ``L2.weight`` shows up as a misfit of ``L2.bias``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable

import torch
from torch import nn

from pipeline.runtime import without_data_parallel


class LayoutError(ValueError):
    """The state dict is not in the authors' layout the converter expects (names the key)."""


class AuthorsStateDict:
    """One authors' state dict, read once. ``what`` names it in errors (e.g. ``"psp (fully)"``)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], what: str):
        if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
            raise LayoutError(f"{what}: expected a state dict (a mapping of parameter names to "
                              f"tensors), got {type(state_dict).__name__}")
        bad = next((k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise LayoutError(f"{what}: {bad!r} is a {type(state_dict[bad]).__name__}, not a tensor")
        self.what = what
        self._sd = without_data_parallel(state_dict)
        self._used: set[str] = set()
        self._sized: list[tuple[str, int, int]] = []  # (key, axis, size) read by dim()

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._sd:
            raise LayoutError(f"{self.what}: missing key {key!r}")
        return tuple(self._sd[key].shape)

    def dim(self, key: str, axis: int) -> int:
        """One dimension of ``key``'s shape (to infer the model's sizes)."""
        shape = self.shape(key)
        if len(shape) <= axis:
            raise LayoutError(f"{self.what}: {key!r} has shape {list(shape)}, expected at least "
                              f"{axis + 1} dimensions")
        self._sized.append((key, axis, shape[axis]))
        return shape[axis]

    def _size_source(self, key: str, expected: tuple[int, ...]) -> str | None:
        """The key (other than ``key``, in the same top-level module) whose size read by
        :meth:`dim` is an axis of ``expected`` on which ``key`` differs; of several, the one
        nearest ``key`` in the module tree."""
        actual = self.shape(key)
        wrong = ({e for e, a in zip(expected, actual) if e != a} if len(expected) == len(actual)
                 else set(expected))
        parts = key.split(".")
        near = {k: len(_common_prefix(k.split("."), parts)) for k, _, size in self._sized
                if k != key and size in wrong}
        near = {k: n for k, n in near.items() if n > 0}
        return max(near, key=near.get) if near else None

    def take(self, key: str, shape: Iterable[int]) -> torch.Tensor:
        """The tensor of ``key``, which must have ``shape`` and not have been taken before."""
        shape = tuple(shape)
        if key in self._used:
            raise LayoutError(f"{self.what}: key {key!r} used twice")
        if self.shape(key) != shape:
            source = self._size_source(key, shape)
            if source is not None:
                raise LayoutError(f"{self.what}: {source!r} (shape {list(self.shape(source))}, "
                                  f"sizes read from it) does not fit {key!r}: shape "
                                  f"{list(self.shape(key))}, expected {list(shape)}")
            raise LayoutError(f"{self.what}: {key!r} has shape {list(self.shape(key))}, expected "
                              f"{list(shape)}")
        self._used.add(key)
        return self._sd[key]

    def take_linear(self, key: str, shape: Iterable[int]) -> torch.Tensor:
        """:meth:`take` for a tensor of ours of ``shape``; a ``Linear`` weight ``(O, I)`` may also
        come from a kernel-1 ``Conv1d`` weight ``(O, I, 1)`` (the same map), squeezed."""
        shape = tuple(shape)
        if len(shape) == 2 and key not in self._used and self.shape(key) == (*shape, 1):
            return self.take(key, (*shape, 1)).squeeze(-1)
        return self.take(key, shape)

    def skip(self, unused: Mapping[str, Iterable[int]]) -> None:
        """Keys of the authors' layers that no output depends on: present, shaped, not loaded."""
        for key, shape in unused.items():
            self.take(key, shape)

    def finish(self) -> None:
        left = [k for k in self._sd if k not in self._used]
        if left:
            raise LayoutError(f"{self.what}: unexpected key {left[0]!r}"
                              + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))

    def load_into(self, head: nn.Module, renames: Mapping[str, str],
                  unused: Mapping[str, Iterable[int]] = {}, ours_only: Iterable[str] = ()) -> nn.Module:
        """Fill ``head`` (strict ``load_state_dict``): our key ``p + rest`` is the authors'
        ``renames[p] + rest`` for the longest prefix ``p`` of ``renames`` (a whole module path;
        ``""`` maps it to the authors' top level), taken with :meth:`take_linear`; ``unused`` is
        :meth:`skip`-ped, then :meth:`finish`. ``ours_only``: our buffers the authors' model
        lacks; they keep the values ``head`` was built with."""
        ours_only = set(ours_only)
        converted = {}
        for key, value in head.state_dict().items():
            if key in ours_only:
                converted[key] = value
                continue
            converted[key] = self.take_linear(_rename(key, renames), value.shape).to(value.dtype)
        self.skip(unused)
        self.finish()
        head.load_state_dict(converted, strict=True)
        return head


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _rename(key: str, renames: Mapping[str, str]) -> str:
    prefixes = [p for p in renames if key == p or key.startswith(p + ".")]
    if not prefixes:
        raise KeyError(f"no authors' name for our parameter {key!r}")  # a converter bug
    p = max(prefixes, key=len)
    rest = key[len(p):]
    return renames[p] + rest if renames[p] else rest[1:]  # "" = the authors' top level
