"""Train one of our heads on a feature set from make_features.py, as run_authors.py runs theirs.

Reads the set's ``prepared/`` and ``features/`` (``vis``, ``aud``), raw features (no
standardisation, as the papers), on CPU, and writes the checks in run_authors.py's format:
val accuracy every epoch, and test accuracy at the epochs the head's released script checks
(``Head.SELECTION``; a script that checks on val, AVEL's, gets the test accuracy of the model
at each of its checks), epochs 0-based.

    python benchmarks/parity/run_ours.py --head psp --setting fully --data SET --epochs 31 \\
        --seed 123 --out runs/psp-fully-ours-123.json [--recipe authors|paper] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from pipeline.training.data import load_dataset
from pipeline.training.loop import Training, run_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", required=True)
    ap.add_argument("--setting", default="fully")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--recipe", default="authors", choices=("authors", "paper"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a train.* recipe key, e.g. avps_target=indicator (YAML value)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    recipe = {"epochs": args.epochs, "recipe": args.recipe}
    for kv in args.set:
        k, _, v = kv.partition("=")
        recipe[k] = yaml.safe_load(v)
    data = load_dataset(args.data / "prepared", args.data / "features", "vis", "aud",
                        setting=args.setting, background_only=True)
    spec = run_spec(args.head, args.setting, recipe_overrides=recipe, seed=args.seed, device="cpu",
                   resume=False, feature_norm="none")
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Training(spec, data, tmp)
        state = run.state
        for row in run.epochs():
            checks.append({"epoch": row["epoch"], "split": "val", "accuracy": row["val_accuracy"]})
            if "script_test_accuracy" in row:
                test = row["script_test_accuracy"]
            elif "script_val_accuracy" in row:  # the model the script would save at this check
                test = state.setting.metrics(state.head, state.test_split, state.device,
                                             state.dims["num_classes"])["accuracy"]
            else:
                continue
            checks.append({"epoch": row["epoch"], "split": "test", "accuracy": test})
        res = run.finish()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"head": args.head, "setting": args.setting, "seed": args.seed,
                                    "recipe": recipe, "checks": checks,
                                    "train": [{k: v for k, v in r.items() if k.startswith("train_")}
                                              for r in res.history]},
                                   indent=1))
    print(f"{args.out}: {len(checks)} checks")


if __name__ == "__main__":
    main()
