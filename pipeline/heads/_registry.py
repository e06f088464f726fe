"""Registry of localization heads (one module a paper), filled by importing ``pipeline.heads``.

A head module defines one :class:`Head` subclass decorated with ``@register_head("<name>")``
that declares on the class:

* ``Config``: its model hyperparameters, once, as a frozen dataclass (type, default, and the
  paper's equation/table or code line in the comment; :mod:`pipeline.heads._config`). The head's
  ``__init__`` reads ``cfg``; ``DEFAULTS`` is derived from it at registration (read only);
* ``TRAIN_DEFAULTS``: ``{setting: {...}}`` for each of the head's ``settings`` (registered in
  :mod:`pipeline.settings`) with the paper's optimizer
  (``"adam"`` | ``"sgd"``), ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, learning-rate
  schedule, ``clip_grad`` (0 = none). The schedule multiplies ``lr`` by ``lr_gamma`` at chosen
  epochs (0-based: a decay at epoch ``m`` applies from the ``m+1``-th epoch on, as
  ``MultiStepLR`` stepped once an epoch), given by exactly one of

  - ``lr_milestones``: list of epochs, increasing (``[]`` = none), for code that decays at fixed
    epochs (``MultiStepLR``, or hand-written ``if epoch in ...`` decays);
  - ``lr_step``: a decay every ``lr_step`` epochs (``StepLR``; 0 = none), for code whose decay
    really is periodic; the loop expands it into milestones below ``epochs``.

  The other one is ``0`` / ``[]``; a recipe with both set is an error.

Settings (:mod:`pipeline.settings`; a head lists those its paper defines in ``settings``):

* ``fully``: segment labels; ``weak``: video labels only. Both are evaluated per segment.
* ``cml``: M2N's cross-modality localization (M2N Sec. 3.5, Table 1): the event segments of one
  modality are the query, the head scores each segment of the other modality
  (``cross_modal_relevance(visual, audio, query_mask, direction)``), and the ``l``-window with
  the largest sum must match the event exactly (A2V, V2A accuracy; :mod:`pipeline.settings.cml`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import nn

from pipeline import settings as setting_registry
from pipeline.settings import Setting

from . import _config
from ._config import HparamError

# The training-side switches: how the released scripts load batches, build targets and seed,
# where that differs from the papers' description. ``recipe`` picks all of them at once:
# ``authors`` (the code that produced the published numbers, the default) or ``paper``; a head
# declares its switches and their value in each mode in ``Head.SWITCHES``; a switch set under
# ``train.<key>`` overrides the mode.
RECIPES = ("authors", "paper")
SWITCH_VALUES = {
    "shuffle": (True, False),  # draw the train batches from a shuffled split
    "drop_last": (True, False),  # drop the last partial batch of an epoch
    # epoch: the whole split reshuffled every epoch | first_batch: batch 0 a random draw of
    # batch_size rows, batches 1..n-1 the stored rows (PSP/VSCG AVE_Weakly_Dataset.get_batch)
    "shuffle_scope": ("epoch", "first_batch"),
    # indicator: the batch's event indicator, l1-normalised (PSP Eqs. 8-9) | buffer: the PSP/VSCG
    # loader's per-slot buffer, never reset (pipeline.heads.psp.AVPSBuffer)
    "avps_target": ("indicator", "buffer"),
    # most_frequent: the class of most event segments | max_index: the largest class index
    # present (CMBS, CACE, VSCG: labels_foreground.max(-1) then .max(-1))
    "video_class": ("most_frequent", "max_index"),
    # seed: torch seeded with the run's seed | drawn: torch seeded from a fresh random draw,
    # recorded in the run (AVEL's scripts seed only Python's random module)
    "torch_seed": ("seed", "drawn"),
}
# A switch that a head does not declare takes its ``Recipe`` default (also the ``paper`` value
# where a paper is silent): batches drawn from a shuffled train split, reshuffled every epoch,
# the last partial batch kept; the paper's targets; torch seeded.
DEFAULT_RECIPE = "authors"

ENTRY_POINT_GROUP = "ave_pipeline.heads"  # heads of other installed packages register here

_HEADS: dict[str, type["Head"]] = {}


@dataclass(frozen=True)
class Schedule:
    """When a head's released training script checks its model, on which split, and how it
    breaks ties (the ``test`` protocol of :mod:`pipeline.training.selection`). Epochs are
    0-based, as in the scripts' loops."""
    split: str = "test"  # split the script selects on: test | val
    every: int = 1  # check when epoch % every == 0
    skip_first: bool = False  # no check at epoch 0 (`epoch != 0`)
    after: int = -1  # checks only when epoch > after
    later_wins_ties: bool = False  # `>=` (True) or `>` (False)
    source: str = "no released code: every epoch on test"

    def checks(self, epoch: int) -> bool:
        return (epoch % self.every == 0 and not (self.skip_first and epoch == 0)
                and epoch > self.after)


NO_RELEASED_CODE = Schedule()  # heads without released code: every epoch on test


@dataclass(frozen=True)
class Reported:
    """A number a paper reports for a head in one setting: test accuracy (%) on AVE with VGG-19
    visual and VGG-like (VGGish) audio features, where it is printed, and for ``cml`` the
    accuracy of each direction (``{"a2v": .., "v2a": ..}``)."""
    accuracy: float
    source: str
    per_direction: dict[str, float] = field(default_factory=dict)


class Head(nn.Module):
    """Base class of every head.

    Inputs: ``visual`` ``(B, T, H, W, Cv)`` spatial maps (T=10 segments, any H, W, Cv) and
    ``audio`` ``(B, T, Ca)``. ``forward`` returns a dict of tensors; ``loss`` turns it and the
    batch into a scalar; ``predict`` gives per-segment labels ``(B, T)`` in ``0..C`` where
    ``C = num_classes`` is background. ``fully`` and ``weak`` are evaluated per segment.

    ``batch`` keys (built by the setting, :mod:`pipeline.settings`): ``visual``,
    ``audio``, ``labels`` ``(B, T, C+1)`` one-hot (fully and cml targets; absent in the weak
    setting), ``weak`` ``(B, C+1)`` video-level labels as ``mil_labels.h5`` holds them (the event
    class alone; the background bit only for background-only videos), ``epoch`` and ``epochs``
    (ints, for schedules inside a loss).
    The training loop calls ``forward_batch(batch)`` and ``loss(out, batch)``.
    """

    name: str = ""
    settings: tuple[str, ...] = ("fully", "weak")  # registered settings its paper defines

    @dataclass(frozen=True)
    class Config:
        """No hyperparameters (a head overrides this with its own)."""

    DEFAULTS: dict[str, Any] = {}  # derived from Config at registration (read only)
    SETTING_DEFAULTS: dict[str, dict[str, Any]] = {}  # setting -> values of Config left None
    TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {}
    # What a head knows about itself besides its model (everything else derives from these):
    SELECTION: dict[str, Schedule] = {}  # setting -> the released script's checks (best_test.pt)
    SEEDS: dict[str, int] = {}  # setting -> the seed of the authors' script (absent: 0)
    # setting -> {switch: (value in the ``authors`` recipe, value in the ``paper`` recipe)}: the
    # training-side differences of the released scripts (keys of SWITCH_VALUES)
    SWITCHES: dict[str, dict[str, tuple[Any, Any]]] = {}
    REPORTED: dict[str, Reported] = {}  # setting -> the paper's reported test accuracy
    REPORTED_PARAMS_M: Optional[float] = None  # trainable parameters (millions) its paper reports
    REPORTED_PARAMS_SOURCE: str = ""  # where that count is printed

    def __init__(self, cfg: Any, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__()
        self.cfg = cfg  # the head's resolved Config
        self.visual_dim, self.audio_dim = visual_dim, audio_dim
        self.num_classes, self.setting = num_classes, setting

    @property
    def hparams(self) -> dict[str, Any]:
        """The resolved hyperparameters as a dict (what a checkpoint stores to rebuild it)."""
        return dataclasses.asdict(self.cfg)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The training forward of a batch: ``forward(visual, audio)`` unless the setting feeds
        the model otherwise (M2N's cml: one query-conditioned pass per direction)."""
        return self(batch["visual"], batch["audio"])

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and its named parts (floats, for logging)."""
        raise NotImplementedError

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-segment class indices ``(B, T)``, background = ``num_classes``."""
        raise NotImplementedError

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "Head":
        """This head with the weights of the authors' model of ``setting``.

        ``state_dict`` is in the authors' module and key layout, as their
        ``torch.save(model.state_dict())`` writes it. Dimensions (feature sizes, classes, layer
        widths) are inferred from the shapes; ``overrides`` are further ``Config`` values, all
        merged by one rule (:func:`authors_head`). Strict:
        every key is used once and shapes are checked; the first mismatch is a
        :class:`~pipeline.heads._authors.LayoutError` naming the key
        (see :mod:`pipeline.heads._authors`). In eval mode the result gives the authors' model's
        outputs on the same inputs.
        """
        raise NotImplementedError(f"head {cls.name!r} has no converter for the authors' checkpoints")

    @classmethod
    def prediction_rule(cls, setting: str, hparams: dict[str, Any]) -> Optional[str]:
        """How ``predict`` labels segments when it is not the argmax of each segment's class
        scores (stated on the evaluate page and in ``localize`` output); ``None`` otherwise."""
        return None

    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-segment class probabilities ``(B, T, C+1)`` (background last) of the model behind
        ``predict``; the confidence of a prediction is the entry ``predict`` chose (``predict``
        keeps the paper's decision rule, e.g. a 0.5 event threshold). Default: softmax of
        ``out["logits"]``."""
        return out["logits"].float().softmax(-1)


RELEVANCE_RULE = ("relevance: a segment is an event when its event relevance (sigmoid) is >= 0.5, "
                  "and then takes the video's top event class; every other segment is background")


def event_class_probabilities(event_logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """Heads that score "event here" per segment ``(B, T)`` and one class per video ``(B, C)``:
    ``p(c) = sigmoid(e_t) softmax(class)_c``, ``p(background) = 1 - sigmoid(e_t)``; ``(B, T, C+1)``."""
    event = torch.sigmoid(event_logits.float()).unsqueeze(-1)
    cls = class_logits.float().softmax(-1).unsqueeze(1)
    return torch.cat([event * cls, 1 - event], dim=-1)


def register_head(name: str):
    def deco(cls: type[Head]) -> type[Head]:
        _config.check_config(cls.Config, name)
        cls.DEFAULTS = _config.defaults(cls.Config)
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice ({_HEADS[name].__module__} and "
                             f"{cls.__module__})")
        unknown = set(k for s in cls.TRAIN_DEFAULTS.values() for k in s) - set(TRAIN_KEYS)
        if unknown:
            raise ValueError(f"head {name!r}: unknown TRAIN_DEFAULTS keys {sorted(unknown)}")
        for s, switches in cls.SWITCHES.items():
            for k, modes in switches.items():
                if k not in SWITCH_VALUES or len(modes) != 2 or any(v not in SWITCH_VALUES[k] for v in modes):
                    raise ValueError(f"head {name!r}: SWITCHES[{s!r}][{k!r}] = {modes!r}; a switch "
                                     f"is one of {sorted(SWITCH_VALUES)} with (authors, paper) values")
            clash = sorted(set(switches) & set(cls.TRAIN_DEFAULTS.get(s, {})))
            if clash:
                raise ValueError(f"head {name!r}: {clash} are in both SWITCHES and TRAIN_DEFAULTS[{s!r}]")
        for attr in ("TRAIN_DEFAULTS", "SELECTION"):  # every setting declares its recipe and checks
            missing = [s for s in cls.settings if s not in getattr(cls, attr)]
            if missing:
                raise ValueError(f"head {name!r}: {attr} has no entry for setting(s) {missing}")
        bad = sorted(set(cls.settings) - set(setting_registry.names()))
        if bad:
            raise ValueError(f"head {name!r}: unknown setting(s) {bad}; known: "
                             f"{', '.join(setting_registry.names())}")
        cls.name = name
        _HEADS[name] = cls
        return cls
    return deco


def list_heads() -> list[str]:
    """Registered head names, sorted."""
    return sorted(_HEADS)


def prediction_rule(name: str, setting: str, hparams: dict[str, Any]) -> Optional[str]:
    """How head ``name`` turns its outputs into segment classes in ``setting``, when it is not
    a per-segment argmax (``Head.prediction_rule``; the evaluate page and ``localize`` state it)."""
    return get_head_class(name).prediction_rule(setting, hparams)


def schedule(name: str, setting: str) -> Schedule:
    """The released script's schedule of checks of head ``name`` in ``setting``."""
    return get_head_class(name).SELECTION[setting]


def default_seed(name: str, setting: str) -> int:
    """The seed of the authors' script for head ``name`` in ``setting`` (0 where none is known)."""
    return int(get_head_class(name).SEEDS.get(setting, 0))


def reported(name: str, setting: str) -> Optional[Reported]:
    """The paper's reported number of head ``name`` in ``setting`` (``None``: not reported)."""
    return get_head_class(name).REPORTED.get(setting)


def get_head_class(name: str) -> type[Head]:
    try:
        return _HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered heads: {', '.join(list_heads())}") from None


@dataclass(frozen=True)
class Recipe:
    """A training recipe, typed (``TRAIN_DEFAULTS[setting]`` with the ``train.*`` overrides)."""
    optimizer: Literal["adam", "sgd"]
    lr: float
    weight_decay: float
    batch_size: int = field(metadata={"min": 1})
    epochs: int = field(metadata={"min": 1})
    lr_step: int  # a decay every lr_step epochs (0 = none); not with lr_milestones
    lr_milestones: tuple[int, ...]  # epochs (0-based) where lr *= lr_gamma; strictly increasing
    lr_gamma: float
    clip_grad: float  # max global grad norm (0 = none)
    shuffle: bool = True  # batches from a shuffled train split
    drop_last: bool = False  # drop the last partial batch
    # The training-side switches (SWITCH_VALUES; their value in each mode: Head.SWITCHES):
    recipe: Literal["authors", "paper"] = "authors"  # the mode that set the switches below
    shuffle_scope: Literal["epoch", "first_batch"] = "epoch"
    avps_target: Literal["indicator", "buffer"] = "indicator"
    video_class: Literal["most_frequent", "max_index"] = "most_frequent"
    torch_seed: Literal["seed", "drawn"] = "seed"

    def as_dict(self) -> dict[str, Any]:
        """Plain types (what checkpoints and the fingerprint hold)."""
        return {**dataclasses.asdict(self), "lr_milestones": list(self.lr_milestones)}


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))
RECIPE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recipe)
                   if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class HeadSpec:
    """One run's head resolved once (:func:`resolve`): the head class, its typed ``config``
    (``Config`` defaults, then the setting's ``SETTING_DEFAULTS`` for ``None`` values, then the
    overrides), the setting object, the typed recipe and the seed. The training loop builds the
    head from it (:func:`instantiate`) and checkpoints store it (:meth:`record`), from which
    :func:`rebuild` makes the head again; nothing merges or checks again."""
    head_class: type[Head]
    config: Any  # head_class.Config
    setting: Setting
    recipe: Recipe
    seed: int = 0  # the run's seed (init, shuffling, dropout): given, or the authors' (SEEDS)
    notes: tuple[str, ...] = ()  # what resolution chose on its own (printed by the loop)
    given: frozenset[str] = frozenset()  # hyperparameters the run sets (kept by fit_visual_map)
    authors_seed: bool = False  # the seed is the authors' (none was given)

    @property
    def head(self) -> str:
        return self.head_class.name

    @property
    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def fit_visual_map(self, map_hw: Optional[tuple[int, int]]) -> "HeadSpec":
        """This spec for visual maps of ``map_hw`` (H, W): the per-position audio term (AVEL,
        PSP, VSCG code) needs ``att_dim = H*W`` (49 = 7x7); set unless the run gives
        ``att_dim``. Returns ``self`` when nothing changes."""
        hp = self.hparams
        positions = map_hw and len(map_hw) == 2 and int(map_hw[0]) * int(map_hw[1])
        if (not positions or hp.get("audio_term") != "position" or "att_dim" in self.given
                or hp.get("att_dim") == positions):
            return self
        note = (f"att_dim: {positions} (= H*W of the {map_hw[0]}x{map_hw[1]} visual maps: the "
                f"per-position audio term needs it; set heads.{self.head}.att_dim to override)")
        return dataclasses.replace(self, config=dataclasses.replace(self.config, att_dim=positions),
                                   notes=self.notes + (note,))


def resolve(name: str, setting: str = "fully", overrides: Optional[dict[str, Any]] = None,
            recipe: Optional[dict[str, Any]] = None, map_hw: Optional[tuple[int, int]] = None,
            seed: Optional[int] = None) -> HeadSpec:
    """The one resolution of a head. Errors: ``KeyError`` (unknown head, listing the
    registered ones), :class:`SpecError` (its ``key`` names the offending setting,
    hyperparameter or recipe entry; the message says what is allowed)."""
    cls = get_head_class(name)
    if setting not in cls.settings:
        raise SpecError("setting", f"head {name!r} has no {setting!r} setting; it supports: "
                                   f"{', '.join(cls.settings)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    per_setting = cls.SETTING_DEFAULTS.get(setting, {})
    base = cls.Config()
    unset = {f.name: per_setting[f.name] for f in dataclasses.fields(base)
             if getattr(base, f.name) is None and f.name in per_setting}
    try:
        config = _config.replace(base, {**unset, **overrides}, name)
    except HparamError as e:
        raise SpecError(f"hparams.{e.key}", str(e)) from None
    spec = HeadSpec(cls, config, setting_registry.get(setting),
                    _resolve_recipe(cls, setting, recipe or {}),
                    default_seed(name, setting) if seed is None else int(seed),
                    given=frozenset(overrides), authors_seed=seed is None)
    return spec.fit_visual_map(map_hw)


class SpecError(ValueError):
    """A head cannot be resolved as asked; ``key`` is the part at fault (``setting``,
    ``hparams.<name>``, ``recipe.<name>``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def recipe_switches(cls: type[Head], setting: str, mode: str) -> Recipe:
    """The value of every switch of ``SWITCH_VALUES`` for head ``cls`` in ``setting`` under
    ``train.recipe: mode`` (before ``train.<switch>`` overrides)."""
    if mode not in RECIPES:
        raise SpecError("recipe.recipe", f"must be one of {', '.join(RECIPES)}, got {mode!r}")
    declared = {k: v[RECIPES.index(mode)] for k, v in cls.SWITCHES.get(setting, {}).items()}
    return {**{k: RECIPE_DEFAULTS[k] for k in SWITCH_VALUES}, **declared}


def _resolve_recipe(cls: type[Head], setting: str, overrides: dict[str, Any]) -> Recipe:
    """``TRAIN_DEFAULTS[setting]``, the switches of ``recipe`` (``overrides['recipe']``, default
    ``authors``: :func:`recipe_switches`) and the non-null ``overrides``; the schedule is one of
    ``lr_step`` / ``lr_milestones`` (strictly increasing epochs >= 1)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(TRAIN_KEYS))
    if unknown:
        raise SpecError(f"recipe.{unknown[0]}", f"not a recipe key; valid: {', '.join(TRAIN_KEYS)}")
    for k, v in overrides.items():
        if k in SWITCH_VALUES and v not in SWITCH_VALUES[k]:
            raise SpecError(f"recipe.{k}", f"must be one of {', '.join(map(str, SWITCH_VALUES[k]))}, "
                                           f"got {v!r}")
    mode = overrides.get("recipe", DEFAULT_RECIPE)
    recipe = {**RECIPE_DEFAULTS, **copy.deepcopy(cls.TRAIN_DEFAULTS[setting]),
              **recipe_switches(cls, setting, mode), **overrides, "recipe": mode}
    origin = {k: "train" if k in overrides else f"{cls.name} TRAIN_DEFAULTS[{setting!r}]"
              for k in TRAIN_KEYS}
    missing = [k for k in TRAIN_KEYS if k not in recipe]
    if missing:
        raise SpecError(f"recipe.{missing[0]}", f"head {cls.name!r} TRAIN_DEFAULTS[{setting!r}] "
                                                f"lacks {missing}; set train.{missing[0]} in params.yaml")
    ms = list(recipe["lr_milestones"])
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
        raise SpecError("recipe.lr_milestones", f"must be epochs >= 1, got {ms!r} "
                                                f"({origin['lr_milestones']})")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise SpecError("recipe.lr_milestones", f"must be strictly increasing, got {ms!r} "
                                                f"({origin['lr_milestones']})")
    if recipe["lr_step"] and ms:
        raise SpecError("recipe.lr_step / train.lr_milestones", f"the recipe sets both lr_step={recipe['lr_step']} "
                        f"({origin['lr_step']}) and lr_milestones={ms} ({origin['lr_milestones']}); "
                        "a schedule is one of them: set train.lr_step: 0 or train.lr_milestones: []")
    recipe["lr_milestones"] = tuple(ms)
    checked = {}
    for k, v in recipe.items():
        if k == "lr_milestones":
            checked[k] = v
            continue
        try:
            checked[k] = _config.check_value(Recipe, k, v, cls.name)
        except HparamError as e:
            raise SpecError(f"recipe.{k}", f"{e} ({origin[k]})") from None
    return Recipe(**checked)


def instantiate(spec: HeadSpec, *, visual_dim: int, audio_dim: int, num_classes: int) -> Head:
    """The head of a resolved ``spec`` with these input and class sizes."""
    return spec.head_class(spec.config, visual_dim, audio_dim, num_classes, spec.setting.name)


def rebuild(head: str, setting: str, hparams: dict[str, Any], dims: dict[str, int]) -> Head:
    """The head a checkpoint describes (its ``head``, ``setting``, ``hparams``, ``dims``): the
    stored hyperparameters are the resolved ones, so they are only type-checked (one error
    naming the key), not merged with defaults again."""
    cls = get_head_class(head)
    if setting not in cls.settings:
        raise SpecError("setting", f"head {head!r} has no {setting!r} setting; it supports: "
                                   f"{', '.join(cls.settings)}")
    try:
        config = cls.Config(**{k: _config.check_value(cls.Config, k, v, head)
                               for k, v in hparams.items()})
    except HparamError as e:
        raise SpecError(f"hparams.{e.key}", str(e)) from None
    except TypeError as e:  # a Config field the checkpoint lacks
        raise SpecError("hparams", f"head {head!r}: {e}") from None
    return cls(config, dims["visual_dim"], dims["audio_dim"], dims["num_classes"], setting)


def authors_head(cls: type[Head], setting: str, dims: dict[str, int], fixed: dict[str, Any],
                 overrides: dict[str, Any], what: str) -> Head:
    """The one rule of every authors'-checkpoint converter: the head of ``setting`` with the
    sizes ``dims`` and the ``fixed`` hyperparameters read from the checkpoint (its shapes, its
    code), and ``overrides`` (``--set``) for the rest. An override that contradicts a fixed
    value is an error naming the key and both values; every value is checked by the code that
    checks ``heads.<name>`` in params.yaml."""
    for key in sorted(overrides):
        _config.check_value(cls.Config, key, overrides[key], cls.name)  # unknown key / type
    clash = sorted(k for k in fixed if k in overrides and overrides[k] != fixed[k])
    if clash:
        k = clash[0]
        raise ValueError(f"{what}: {k!r} is fixed by the authors' checkpoint ({fixed[k]!r}); "
                         f"--set {k}={overrides[k]!r} contradicts it")
    spec = resolve(cls.name, setting, {**overrides, **fixed})
    return instantiate(spec, **dims)


def resolve_hparams(name: str, setting: str = "fully", **overrides: Any) -> dict[str, Any]:
    """Every hyperparameter of head ``name`` in ``setting`` with ``overrides`` (see :func:`resolve`)."""
    return resolve(name, setting, overrides).hparams


def train_defaults(name: str, setting: str) -> dict[str, Any]:
    """The paper's recipe of head ``name`` in ``setting`` (a copy)."""
    return resolve(name, setting).recipe.as_dict()


def build_head(name: str, *, visual_dim: int, audio_dim: int, num_classes: int,
               setting: str = "fully", **overrides: Any) -> Head:
    """Build head ``name`` with its paper defaults and ``overrides`` (:func:`resolve`, then
    :func:`instantiate`)."""
    return instantiate(resolve(name, setting, overrides), visual_dim=visual_dim,
                       audio_dim=audio_dim, num_classes=num_classes)


def from_authors_state_dict(name: str, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                            **overrides: Any) -> Head:
    """Head ``name`` converted from the authors' ``state_dict`` (see
    :meth:`Head.from_authors_state_dict`); a setting the head lacks is refused before the
    state dict is read."""
    cls = get_head_class(name)
    if setting not in cls.settings:
        raise ValueError(f"head {name!r} has no {setting!r} setting; it supports: "
                         f"{', '.join(cls.settings)}")
    return cls.from_authors_state_dict(state_dict, setting, **overrides)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (heads build no dead layers, so all of them receive gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
