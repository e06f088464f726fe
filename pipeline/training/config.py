"""params.yaml sections of the training room: ``train``, ``heads``, ``evaluate``, ``report``.

Training-recipe keys left ``null`` take the head's paper default (``TRAIN_DEFAULTS`` in
``pipeline/heads/<paper>.py``); head hyperparameters are overridden per head under
``heads.<name>`` and checked against the head's ``DEFAULTS`` when it is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional

from pipeline import heads as registry
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.config import ConfigError, register_check, register_section
from pipeline.data.ids import safe_filename
from pipeline.encoders.base import check_encoder

# Heads whose hyperparameters can be overridden under ``heads:`` (the paper heads and baselines).
HEAD_NAMES = ("avel", "psp", "cmbs", "cace", "m2n", "vscg", "majority", "audio_only", "visual_only")
# Supervision settings (the registry's SETTINGS): fully = segment labels | weak = video labels
# only | cml = M2N's cross-modality localization (A2V / V2A; heads whose paper defines it).
Setting = Literal["fully", "weak", "cml"]


@register_section("train")
@dataclass(frozen=True)
class TrainConfig:
    """One training run of one head (stages/train.py)."""
    head: str = "psp"  # registered head name (pipeline.heads.list_heads())
    setting: Setting = "fully"  # fully | weak | cml (see Setting); a head lists the ones it has
    visual: str = "vgg19"  # visual feature file ${paths.features}/<visual>.h5
    audio: str = "vggish"  # audio feature file ${paths.features}/<audio>.h5
    seed: int = 0  # seeds init, shuffling and dropout
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
        if self.lr_milestones is not None:
            check_milestones(self.lr_milestones, f"{key}.lr_milestones")

    def recipe_overrides(self) -> dict[str, Any]:
        """The training-recipe keys set in params (non-null)."""
        return {k: getattr(self, k) for k in TRAIN_KEYS if getattr(self, k) is not None}


def check_head(name: str, key: str) -> None:
    """``name`` is a registered head (the registry's list in the error)."""
    if name not in registry.list_heads():
        raise ConfigError(f"{key}: unknown head {name!r}; registered: {', '.join(registry.list_heads())}")


def check_file_name(name: str, key: str) -> None:
    """``name`` becomes a file name (``<paths.features>/<name>.h5``): no path, nothing to escape."""
    if not name or safe_filename(name) != name:
        raise ConfigError(f"{key}: {name!r} is not a plain name (letters, digits, '_', '-', '.'; "
                          "no path)")


def check_milestones(milestones: list[int], key: str) -> None:
    """Milestones are strictly increasing epochs >= 1 (a decay at epoch 0 would just be a lower lr)."""
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
        raise ConfigError(f"{key}: must be epochs >= 1, got {milestones!r}")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"{key}: must be strictly increasing, got {milestones!r}")


@register_section("heads")
@dataclass(frozen=True)
class HeadsConfig:
    """Per-head hyperparameter overrides merged over the head's ``DEFAULTS`` (e.g. psp:
    {tau_fully: 0.1}); unknown keys are errors naming ``heads.<head>.<key>`` when the head is
    built. From the CLI: ``dvc exp run -S '+heads.psp.tau_fully=0.1'`` (``+`` adds a key that
    params.yaml does not list yet; without it for keys already listed)."""
    avel: dict[str, Any] = field(default_factory=dict)
    psp: dict[str, Any] = field(default_factory=dict)
    cmbs: dict[str, Any] = field(default_factory=dict)
    cace: dict[str, Any] = field(default_factory=dict)
    m2n: dict[str, Any] = field(default_factory=dict)
    vscg: dict[str, Any] = field(default_factory=dict)
    majority: dict[str, Any] = field(default_factory=dict)
    audio_only: dict[str, Any] = field(default_factory=dict)
    visual_only: dict[str, Any] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        for f in fields(self):
            if f.name in registry.list_heads():
                check_hparams(f.name, getattr(self, f.name), f"{key}.{f.name}")

    def of(self, head: str) -> dict[str, Any]:
        """Overrides of ``head`` (``null`` values = the paper default, i.e. no override)."""
        return {k: v for k, v in (getattr(self, head, None) or {}).items() if v is not None}


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
    """Results table over heads x settings (dvc.yaml stages cell@<head>-<setting>, one per pair;
    none while ``heads`` is empty, as in the default params)."""
    heads: list[str] = field(default_factory=lambda: list(HEAD_NAMES))  # rows of the table
    settings: list[Setting] = field(default_factory=lambda: ["fully", "weak", "cml"])
    epochs: Optional[int] = None  # epochs of every cell (demo profile); null = paper defaults

    def validate(self, key: str) -> None:
        for i, head in enumerate(self.heads):
            check_head(head, f"{key}.heads[{i}]")
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


@register_check
def _check_recipe(params: dict[str, Any]) -> None:
    """The resolved training recipe of ``train.head`` (paper defaults + ``train.*``) and its
    hyperparameters are valid before any data is read."""
    from pipeline.training.loop import resolve_recipe  # loop imports this module
    tc = params["train"]
    resolve_recipe(tc.head, tc.setting, tc.recipe_overrides())
