"""params.yaml sections of the training package: ``train``, ``heads``, ``evaluate``, ``report``.

Training-recipe keys left ``null`` take the head's paper default (``TRAIN_DEFAULTS`` in
``pipeline/heads/<paper>.py``); head hyperparameters are overridden per head under
``heads.<name>`` and checked against the head's ``Config`` (name, type, range) when params are
loaded, by the code that checks every other road a value arrives by
(:mod:`pipeline.heads._config`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline import heads as registry
from pipeline import settings as setting_registry
from pipeline.heads._config import HparamError, check_value
from pipeline.heads._registry import TRAIN_KEYS, HeadSpec, SpecError
from pipeline.config import (MAX_SEED, ConfigError, key_text, register_check,
                             register_section)
from pipeline.data.ids import safe_filename



@register_section("train")
@dataclass(frozen=True)
class TrainConfig:
    """One training run of one head (stages/train.py)."""
    head: str = registry.DEFAULT_HEAD  # registered head name (pipeline.heads.list_heads())
    # registered setting (pipeline.settings): fully = segment labels | weak = video labels only |
    # cml = M2N's cross-modality localization (A2V / V2A); a head lists the ones it has
    setting: str = "fully"
    visual: str = "vgg19"  # visual feature file ${paths.features}/<visual>.h5
    audio: str = "vggish"  # audio feature file ${paths.features}/<audio>.h5
    seed: Optional[int] = None  # seeds init, shuffling and dropout; null = the authors' seed of the head
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when present, else cpu
    # runtime.train.resume: continue <paths.resume>/train/last.pt when its fingerprint is this run's
    resume: bool = True
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
    # The training-side switches of the released scripts (each head's docstring table):
    # authors = the code that produced the published numbers | paper = the papers' description
    recipe: Literal["authors", "paper"] = "authors"
    # Each switch below, when set, overrides the recipe's value (null = the recipe's):
    shuffle: Optional[bool] = None  # draw batches from a shuffled train split (AVEL's scripts: no)
    drop_last: Optional[bool] = None  # drop the last partial batch (AVEL, PSP, VSCG scripts: yes)
    # epoch: reshuffle the whole split every epoch | first_batch: batch 0 a random draw, batches
    # 1..n-1 the stored rows (PSP/VSCG weak loader)
    shuffle_scope: Optional[Literal["epoch", "first_batch"]] = None
    # indicator: each batch's event indicator (PSP Eqs. 8-9) | buffer: the PSP/VSCG loader's
    # never-reset target buffer (PSP, VSCG fully)
    avps_target: Optional[Literal["indicator", "buffer"]] = None
    # L_c video class: most_frequent | max_index (largest class present: CMBS, CACE, VSCG code)
    video_class: Optional[Literal["most_frequent", "max_index"]] = None
    # seed: torch seeded with the run's seed | drawn: a fresh seed, recorded (AVEL's scripts;
    # only when train.seed is null)
    torch_seed: Optional[Literal["seed", "drawn"]] = None

    def validate(self, key: str) -> None:
        check_setting(self.setting, f"{key}.setting")
        check_head(self.head, f"{key}.head")  # the head's settings: _check_recipe (resolution)
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


def check_setting(name: str, key: str) -> None:
    """``name`` is a registered setting (:func:`pipeline.settings.names` in the error)."""
    if name not in setting_registry.names():
        raise ConfigError(f"{key}: {name!r} is not allowed; allowed: "
                          + ", ".join(repr(n) for n in setting_registry.names()))


def check_file_name(name: str, key: str) -> None:
    """``name`` becomes a file name (``<paths.features>/<name>.h5``): no path, nothing to escape."""
    if not name or safe_filename(name) != name:
        raise ConfigError(f"{key}: {name!r} is not a plain name (letters, digits, '_', '-', '.'; "
                          "no path)")


@register_section("heads")
@dataclass(frozen=True)
class HeadsConfig:
    """Per-head hyperparameter overrides merged over the head's ``Config`` (e.g. psp:
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
                raise ConfigError(f"unknown key {key}.{key_text(head)}; allowed keys of {key}: "
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
    settings: list[str] = field(default_factory=setting_registry.names)  # registered settings
    epochs: Optional[int] = None  # epochs of every cell (demo profile); null = paper defaults
    # one training run of every cell per entry (a DVC stage each: a new seed runs only its
    # cells); null = the head's default seed. The table pools them: mean, sd, intervals
    seeds: list[Optional[int]] = field(default_factory=lambda: [None])

    def validate(self, key: str) -> None:
        for i, setting in enumerate(self.settings):
            check_setting(setting, f"{key}.settings[{i}]")
        for i, head in enumerate(self.heads):
            check_head(head, f"{key}.heads[{i}]")
        if not self.seeds:
            raise ConfigError(f"{key}.seeds: must list at least one seed (null: the head's default)")
        for i, seed in enumerate(self.seeds):
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
                raise ConfigError(f"{key}.seeds[{i}]: must be an integer >= 0 or null, got {seed!r}")
            if seed is not None and seed > MAX_SEED:
                raise ConfigError(f"{key}.seeds[{i}]: must be <= {MAX_SEED}, got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{key}.seeds: lists a seed twice: {self.seeds!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"{key}.epochs: must be >= 1, got {self.epochs!r}")


def check_hparams(head: str, overrides: dict[str, Any], key: str, sep: str = ".") -> None:
    """Every key of ``heads.<head>`` is a field of the head's ``Config``, of its type and range
    (``null``: the paper default). The one check of head hyperparameters: params.yaml's
    ``heads`` (``sep`` ``.``) and the checkpoint converter's ``--set`` (``key`` ``--set``,
    ``sep`` a space) both use it."""
    config = registry.get_head_class(head).Config
    for name, value in overrides.items():
        if value is None and name in config.__dataclass_fields__:
            continue
        try:
            check_value(config, name, value, head)
        except HparamError as e:
            raise ConfigError(f"{key}{sep}{key_text(e.key)}: {e}") from None


def check_head_values(head: str, setting: str, overrides: dict[str, Any], key: str = "--set",
                      sep: str = " ", setting_key: str = "--setting") -> None:
    """A head's setting and hyperparameter overrides checked as params.yaml's are: the setting
    is one the head has, every value passes :func:`check_hparams`, and the head resolves with
    them (:func:`pipeline.heads.resolve`); for the checkpoint converter's ``--setting`` and
    ``--set``. Errors are :class:`ConfigError` naming the option and key."""
    supported = registry.get_head_class(head).settings
    if setting not in supported:
        raise ConfigError(f"{setting_key}: head {head!r} has no {setting!r} setting; it supports: "
                          f"{', '.join(supported)}")
    check_hparams(head, overrides, key, sep)
    try:
        registry.resolve(head, setting, {k: v for k, v in overrides.items() if v is not None})
    except SpecError as e:
        raise ConfigError(f"{key}{sep}{e.key.partition('.')[2] or e.key}: {e}") from None


def resolve_train(head: str, setting: str, overrides: dict[str, Any], recipe: dict[str, Any],
                  map_hw: Optional[tuple[int, int]] = None, seed: Optional[int] = None) -> HeadSpec:
    """A training run's head resolved (:func:`pipeline.heads.resolve`) from params:
    ``heads.<head>`` overrides, the non-null ``train.*`` recipe keys and ``train.seed`` (null:
    the authors' seed); errors name the params key."""
    try:
        return registry.resolve(head, setting, overrides, recipe, map_hw, seed)
    except KeyError as e:
        raise ConfigError(f"train.head: {e.args[0]}") from None
    except SpecError as e:
        part, _, name = e.key.partition(".")
        key = {"setting": "train.setting", "hparams": f"heads.{head}.{name}",
               "recipe": f"train.{name}"}[part]
        raise ConfigError(f"{key}: {e}") from None


@register_check("train", "heads")
def _check_recipe(params: dict[str, Any]) -> None:
    """The head of ``train.head`` resolves (its settings, hyperparameters, recipe) before any
    data is read: the stage's resolution (``pipeline.training.run.spec_from_params``) then
    cannot fail."""
    tc = params["train"]
    resolve_train(tc.head, tc.setting, params["heads"].of(tc.head), tc.recipe_overrides())
