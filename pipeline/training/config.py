"""params.yaml sections of the training package: ``train``, ``heads``, ``evaluate``, ``report``.

Training-recipe keys left ``null`` take the head's paper default (``TRAIN_DEFAULTS`` in
``pipeline/heads/<paper>.py``); head hyperparameters are overridden per head under
``heads.<name>`` and checked against the head's ``DEFAULTS`` when it is built.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline import heads as registry
from pipeline.heads._registry import TRAIN_KEYS, HeadSpec, SpecError
from pipeline.config import ConfigError, register_check, register_section
from pipeline.data.ids import safe_filename
from pipeline.encoders.base import check_encoder

# Supervision settings (the registry's SETTINGS): fully = segment labels | weak = video labels
# only | cml = M2N's cross-modality localization (A2V / V2A; heads whose paper defines it).
Setting = Literal[registry.SETTINGS]


@register_section("train")
@dataclass(frozen=True)
class TrainConfig:
    """One training run of one head (stages/train.py)."""
    head: str = registry.DEFAULT_HEAD  # registered head name (pipeline.heads.list_heads())
    setting: Setting = "fully"  # fully | weak | cml (see Setting); a head lists the ones it has
    visual: str = "vgg19"  # visual feature file ${paths.features}/<visual>.h5
    audio: str = "vggish"  # audio feature file ${paths.features}/<audio>.h5
    seed: Optional[int] = None  # seeds init, shuffling and dropout; null = the authors' seed of the head
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when present, else cpu
    resume: bool = True  # continue from <models>/last.pt when it was written by this same run
    # none: raw features, as the papers | standardize: per-channel z-score with train-split
    # mean/std (stored in the checkpoint; the demo's random-init encoders give arbitrary scales)
    feature_norm: Literal["none", "standardize"] = "none"
    # best.pt: val = the best val epoch, checked every epoch (ours) | test = the epoch the head's
    # released script reports (its schedule of checks, on test except AVEL's val); both are
    # always written (best_val.pt, best_test.pt; pipeline.training.selection)
    select: Literal["val", "test"] = "val"
    # weak setting: append the background-only training samples (<features>/<visual>_noisy.h5,
    # <features>/<audio>_noisy.h5, <prepared>/labels_noisy.h5) when present; absent = logged
    background_only: bool = True
    # Training recipe: null = the head's paper default for the setting (TRAIN_DEFAULTS).
    optimizer: Optional[Literal["adam", "sgd"]] = None
    lr: Optional[float] = None  # initial learning rate
    weight_decay: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None  # demo profile sets a small number; paper counts stay in heads
    lr_step: Optional[int] = None  # lr *= lr_gamma every lr_step epochs (0 = none); not with milestones
    lr_milestones: Optional[list[int]] = None  # epochs (0-based) where lr *= lr_gamma ([] = none)
    lr_gamma: Optional[float] = None  # decay factor at each milestone / step
    clip_grad: Optional[float] = None  # max global grad norm (0 = no clipping)
    shuffle: Optional[bool] = None  # draw batches from a shuffled train split (AVEL's scripts: no)
    drop_last: Optional[bool] = None  # drop the last partial batch (AVEL's scripts: yes)

    def validate(self, key: str) -> None:
        check_head(self.head, f"{key}.head")
        supported = registry.get_head_class(self.head).settings
        if self.setting not in supported:
            raise ConfigError(f"{key}.setting: head {self.head!r} has no {self.setting!r} setting; "
                              f"it supports: {', '.join(supported)}")
        for name in ("visual", "audio"):
            check_file_name(getattr(self, name), f"{key}.{name}")
        for name in ("lr", "weight_decay", "lr_gamma", "clip_grad"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{key}.{name}: must be >= 0, got {v!r}")
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {v!r}")
        if self.lr_step is not None and self.lr_step < 0:
            raise ConfigError(f"{key}.lr_step: must be >= 0, got {self.lr_step!r}")

    def recipe_overrides(self) -> dict[str, Any]:
        """The training-recipe keys set in params (non-null)."""
        return {k: getattr(self, k) for k in TRAIN_KEYS if getattr(self, k) is not None}


def check_head(name: str, key: str) -> None:
    """``name`` is a registered head (the registry's list in the error)."""
    heads = registry.list_heads()
    if name not in heads:
        near = difflib.get_close_matches(str(name), heads, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}: unknown head {name!r}{hint}; registered: {', '.join(heads)}")


def check_file_name(name: str, key: str) -> None:
    """``name`` becomes a file name (``<paths.features>/<name>.h5``): no path, nothing to escape."""
    if not name or safe_filename(name) != name:
        raise ConfigError(f"{key}: {name!r} is not a plain name (letters, digits, '_', '-', '.'; "
                          "no path)")


@register_section("heads")
@dataclass(frozen=True)
class HeadsConfig:
    """Per-head hyperparameter overrides merged over the head's ``DEFAULTS`` (e.g. psp:
    {tau_fully: 0.1}), one mapping per registered head; unknown heads and keys are errors
    naming ``heads.<head>.<key>``. From the CLI: ``dvc exp run -S '+heads.psp.tau_fully=0.1'``
    (``+`` adds a key that params.yaml does not list yet; without it for keys already listed)."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_params(cls, data: Any, key: str) -> "HeadsConfig":
        """The ``heads:`` mapping, checked against the registry."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{key}: expected a mapping of head names, got {data!r}")
        out = {}
        for head, values in data.items():
            if str(head) not in registry.list_heads():
                raise ConfigError(f"unknown key {key}.{head}; allowed keys of {key}: "
                                  f"{', '.join(registry.list_heads())}")
            values = values or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{key}.{head}: expected a mapping, got {values!r}")
            check_hparams(str(head), values, f"{key}.{head}")
            out[str(head)] = dict(values)
        return cls(out)

    def of(self, head: str) -> dict[str, Any]:
        """Overrides of ``head`` (``null`` values = the paper default, i.e. no override)."""
        return {k: v for k, v in self.overrides.get(head, {}).items() if v is not None}


@register_section("evaluate")
@dataclass(frozen=True)
class EvaluateConfig:
    """Test-split evaluation of the best checkpoint (stages/evaluate.py)."""
    split: Literal["test", "val"] = "test"  # the papers report test accuracy
    batch_size: int = 64  # inference batch size (no effect on results)
    timelines: int = 4  # test videos drawn as prediction-vs-truth timelines

    def validate(self, key: str) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{key}.batch_size: must be >= 1, got {self.batch_size!r}")
        if self.timelines < 0:
            raise ConfigError(f"{key}.timelines: must be >= 0, got {self.timelines!r}")


@register_section("report")
@dataclass(frozen=True)
class ReportConfig:
    """Results table over heads x settings x seeds (dvc.yaml stages
    cell@<head>-<setting>-<seed>, one each; none while ``heads`` is empty, as in the default
    params)."""
    heads: list[str] = field(default_factory=registry.list_heads)  # rows of the table
    settings: list[Setting] = field(default_factory=lambda: list(registry.SETTINGS))
    epochs: Optional[int] = None  # epochs of every cell (demo profile); null = paper defaults
    # one training run of every cell per entry (a DVC stage each: a new seed runs only its
    # cells); null = the head's default seed. The table pools them: mean, sd, intervals
    seeds: list[Optional[int]] = field(default_factory=lambda: [None])

    def validate(self, key: str) -> None:
        for i, head in enumerate(self.heads):
            check_head(head, f"{key}.heads[{i}]")
        if not self.seeds:
            raise ConfigError(f"{key}.seeds: must list at least one seed (null: the head's default)")
        for i, seed in enumerate(self.seeds):
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
                raise ConfigError(f"{key}.seeds[{i}]: must be an integer >= 0 or null, got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{key}.seeds: lists a seed twice: {self.seeds!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"{key}.epochs: must be >= 1, got {self.epochs!r}")


def check_hparams(head: str, overrides: dict[str, Any], key: str) -> None:
    """Every key of ``heads.<head>`` is one of the head's ``DEFAULTS``, of the same kind of
    value (``null``: the paper default)."""
    defaults = registry.get_head_class(head).DEFAULTS
    for name, value in overrides.items():
        if name not in defaults:
            raise ConfigError(f"{key}.{name}: head {head!r} has no hyperparameter {name!r}; "
                              f"valid: {', '.join(sorted(defaults))}")
        if value is not None and not _same_kind(value, defaults[name]):
            raise ConfigError(f"{key}.{name}: expected {_kind(defaults[name])} like the default "
                              f"{defaults[name]!r}, got {value!r}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _same_kind(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        return value.is_integer()
    return _kind(value) == _kind(default)


@register_check
def _check_feature_kinds(params: dict[str, Any]) -> None:
    """``train.visual`` / ``train.audio``, when they are ``extract.models`` entries, are of
    that modality (a name not listed there may be an imported community feature file)."""
    models = params["extract"].models
    for role in ("visual", "audio"):
        name = getattr(params["train"], role)
        if name in models:
            check_encoder(models[name].encoder, f"train.{role} ({name!r}: extract.models.{name}"
                                                ".encoder)", role)


def resolve_train(head: str, setting: str, overrides: dict[str, Any], recipe: dict[str, Any],
                  map_hw: Optional[tuple[int, int]] = None, seed: Optional[int] = None) -> HeadSpec:
    """The one resolution of a training run's head (:func:`pipeline.heads.resolve`) from params:
    ``heads.<head>`` overrides, the non-null ``train.*`` recipe keys and ``train.seed`` (null:
    the authors' seed); errors name the key."""
    try:
        return registry.resolve(head, setting, overrides, recipe, map_hw, seed)
    except KeyError as e:
        raise ConfigError(f"train.head: {e.args[0]}") from None
    except SpecError as e:
        part, _, name = e.key.partition(".")
        key = {"setting": "train.setting", "hparams": f"heads.{head}.{name}",
               "recipe": f"train.{name}"}[part]
        raise ConfigError(f"{key}: {e}") from None


@register_check
def _check_recipe(params: dict[str, Any]) -> None:
    """The head of ``train.head`` resolves (setting, hyperparameters, recipe) before any data
    is read."""
    tc = params["train"]
    resolve_train(tc.head, tc.setting, params["heads"].of(tc.head), tc.recipe_overrides())
