"""Import an authors' checkpoint of a head into a checkpoint that ``evaluate`` reads.

    python -m pipeline.import_checkpoint --head psp --setting fully PSP_fully.pth models/best.pt
    python -m pipeline.import_checkpoint --head cace --setting fully --set bece_lambda=0 \
        cace.pth models/best.pt

``--set KEY=VALUE`` (repeatable) gives a hyperparameter that a state dict does not hold (CMBS
``alpha``/``beta``/``gamma``, CACE ``psai``/``lambda``/``contrastive``, the PSP threshold): a
field of the head's ``Config``, the value read as a YAML scalar (``0.3``, ``true``, ``code``) and
checked by the code that checks ``heads.<name>`` in params.yaml. Widths come from the
checkpoint's shapes; a ``--set`` that contradicts one is an error naming the key and both
values (``pipeline.heads.authors_head``, the one rule of every converter).

``AUTHORS.pth`` is the state dict of the authors' model (``torch.save(model.state_dict())`` in
their code), read with ``weights_only=True``; the head's ``from_authors_state_dict`` converts it
strictly (see :mod:`pipeline.heads._authors`). The written checkpoint has our training format
(:mod:`pipeline.training.checkpoint`) with the AVE categories in ``Annotations.txt`` order, the
features the authors trained on (``--visual``, ``--audio``: evaluation refuses others) and no
validation record (``epoch`` -1, ``val_accuracy`` NaN: the authors selected on the test split).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline import files, layout, settings
from pipeline.cli import stage_main
from pipeline.config import ConfigError, InputError, key_text
from pipeline.training import checkpoint as ckpt_io

from pipeline.heads import count_parameters, from_authors_state_dict, get_head_class, list_heads
from pipeline.heads._authors import LayoutError
from pipeline.heads._config import HparamError, check_value


def parse_sets(items: list[str], head: str) -> dict[str, Any]:
    """``["alpha=0.3", ...]`` -> ``{"alpha": 0.3}``: fields of ``head``'s ``Config`` (an unknown
    key is an error listing the valid ones), values parsed as YAML scalars and checked as
    ``heads.<head>`` values are (type, range)."""
    import yaml

    config = get_head_class(head).Config
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            if key not in config.__dataclass_fields__:  # an unknown key is named first
                check_value(config, key, None, head)
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                raise ConfigError(f"--set {key_text(key)}: {text!r} is not a YAML scalar") from None
            out[key] = check_value(config, key, value, head)
        except HparamError as e:
            raise ConfigError(f"--set {key_text(key)}: {e}") from None
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The authors' state dict; any file that is not one is an error naming it."""
    try:
        obj = files.load_checkpoint(path, "state dict")
    except InputError as e:
        if "(torch.nn." not in str(e):  # a pickled module: say how to get its state dict
            raise
        raise InputError(f"{e}; the authors' scripts save whole modules (torch.save(model)): load "
                         "it with their code and save model.state_dict()") from None
    if not all(torch.is_tensor(v) for v in obj.values()):
        raise InputError(f"{path}: not a state dict (values that are not tensors)")
    files.check_finite_state(obj, str(path))
    return obj


def import_checkpoint(head: str, setting: str, src: str | Path, dst: str | Path, *,
                      ave_root: str | Path = "raw/ave", visual: str = "vgg19", audio: str = "vggish",
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert ``src`` (authors' state dict) to our checkpoint at ``dst``; returns the checkpoint."""
    from pipeline.data.ave import load_annotations

    src, dst = Path(src), Path(dst)
    get_head_class(head)
    state_dict = read_state_dict(src)
    try:
        model = from_authors_state_dict(head, state_dict, setting, **(overrides or {}))
    except (LayoutError, KeyError, ValueError) as e:
        raise InputError(f"{src}: {e.args[0] if e.args else e}") from None
    except ValueError as e:  # a --set that the checkpoint contradicts, or a setting it lacks
        raise ConfigError(f"{src}: {e}") from None
    except NotImplementedError as e:
        raise InputError(f"--head: {e}") from None
    except (AssertionError, RuntimeError) as e:  # torch's checks of the sizes --set gave
        raise InputError(f"{src}: {head} ({setting}) cannot be built with {overrides}: {e}") from None
    with warnings.catch_warnings():  # line problems are prepare's to report; the order is all we need
        warnings.simplefilter("ignore")
        categories = load_annotations(ave_root, splits=False).categories
    if len(categories) != model.num_classes:
        raise InputError(f"{src}: {model.num_classes} classes, but "
                         f"{Path(ave_root) / layout.ANNOTATIONS_FILE} "
                         f"has {len(categories)} categories")
    ckpt = {"format": ckpt_io.FORMAT, "head": head, "setting": setting, "hparams": model.hparams,
            "dims": {"visual_dim": model.visual_dim, "audio_dim": model.audio_dim,
                     "num_classes": model.num_classes},
            "recipe": {}, "params": {"train": {"visual": visual, "audio": audio}},
            "epoch": -1, "step": 0, "val_accuracy": math.nan, "train_seconds": 0.0,
            "num_parameters": count_parameters(model), "categories": list(categories),
            "feature_norm": None, "model": model.state_dict(),
            "imported_from": {"file": src.name, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}}
    ckpt_io.save(ckpt, dst)
    return ckpt


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.import_checkpoint",
                                description=__doc__.split("\n")[0])
    p.add_argument("--head", required=True, choices=list_heads())
    p.add_argument("--setting", required=True, choices=settings.names())
    p.add_argument("--ave-root", default="raw/ave", help="AVE root whose Annotations.txt orders the classes")
    p.add_argument("--visual", default="vgg19", help="visual features the authors trained on (train.visual)")
    p.add_argument("--audio", default="vggish", help="audio features the authors trained on (train.audio)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter the state dict does not hold (repeatable; a field of "
                        "the head's Config, value read as YAML), e.g. --set alpha=0.3")
    p.add_argument("src", help="the authors' state dict (.pth)")
    p.add_argument("dst", help="our checkpoint to write, e.g. models/best.pt")
    args = p.parse_args(argv)
    overrides = parse_sets(args.sets, args.head)
    from pipeline.training.config import check_head_values  # params.yaml's rules (imports this package)
    check_head_values(args.head, args.setting, overrides)
    ckpt = import_checkpoint(args.head, args.setting, args.src, args.dst, ave_root=args.ave_root,
                             visual=args.visual, audio=args.audio, overrides=overrides)
    print(f"{args.dst}: {args.head} ({args.setting}) from {args.src}, {ckpt['num_parameters']:,} "
          f"parameters, dims {ckpt['dims']}" + (f", set {overrides}" if overrides else ""))


if __name__ == "__main__":
    main()
