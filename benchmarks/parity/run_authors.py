"""Run an authors' training script, unmodified, on a feature set from make_features.py (CPU).

The script runs from a fresh copy of the authors' repository (a clone outside this one; none of
their code is kept here) whose ``data/`` folder links the set's files under the names it opens.
Only the runtime is patched, never a line of their code:

* ``.cuda()`` of tensors and modules is the identity (``nn.DataParallel`` without GPUs already
  calls its module);
* the seed: ``--seed`` replaces the argument of their ``random.seed`` / ``np.random.seed`` /
  ``torch.manual_seed`` calls (omitted: their own seed);
* ``DataLoader(num_workers=...)`` is 0 (CMBS, CACE-Net: 8 workers; the batches are the same,
  the shuffling draws from the main process's generator either way);
* ``--stub``: empty modules for imports the training never calls (CACE-Net's ``braincog``
  imports ``cv2``, ``dv``, ``pandas`` and ``seaborn`` for its dataset readers; it also needs
  ``einops``, installed);
* ``tensorboardX.SummaryWriter`` (CMBS, CACE-Net logging) writes nothing when tensorboardX is
  not installed; ``ruamel.yaml.load`` / ``dump`` with the ``Loader=`` / ``Dumper=`` arguments
  (their config loader) map to the current ruamel API, which removed those functions.

Their stdout goes to ``<out>.log``; the checks it prints (val / test accuracy by epoch) to
``<out>`` as JSON: ``{"checks": [{"epoch": e, "split": "val" | "test", "accuracy": a}], ...}``,
epochs 0-based as in their loops.

    python benchmarks/parity/run_authors.py --repo ../authors/PSP_CVPR_2021 \\
        --script fully_supervised_main.py --data SET --out runs/psp-fully-theirs-123.json \\
        [--seed 1] [--float64] -- --train --nb_epoch 31
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import runpy
import shutil
import sys
from pathlib import Path

# What the scripts print. PSP, VSCG and AVEL print ``=== Epoch {e} ...`` after each training
# epoch, then their checks: PSP fully ``[val]acc:`` / ``[test]acc:``, PSP and VSCG weak
# ``val accuracy: a epoch= e``, VSCG fully ``[val]acc:`` in percent, AVEL the bare accuracy.
EPOCH = re.compile(r"^=== Epoch \{(\d+)\}")
CHECKS = [
    ("val", re.compile(r"^\[val\]\s*acc:\s*([0-9.]+)")),
    ("test", re.compile(r"^\[test\]\s*acc:\s*([0-9.]+)")),
    ("val", re.compile(r"^val accuracy:\s*([0-9.]+)\s+epoch=")),
    ("test", re.compile(r"^test accuracy:\s*([0-9.]+)\s+epoch=")),
]
BARE = re.compile(r"^([0-9]*\.[0-9]+)$")  # AVEL's print(acc)
# Data files each repository opens from data/ (float64 copies for CMBS and CACE-Net)
DATA_FILES = ["visual_feature.h5", "audio_feature.h5", "labels.h5", "right_labels.h5",
              "mil_labels.h5", "prob_label.h5", "train_order.h5", "val_order.h5", "test_order.h5",
              "visual_feature_noisy.h5", "audio_feature_noisy.h5", "labels_noisy.h5"]


def patch_runtime(seed: int | None) -> None:
    import numpy as np
    import random
    import torch
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    orig_load = torch.load  # AVE-ECCV18 and VSCG save whole modules (torch >= 2.6: weights_only)
    torch.load = lambda *a, **k: orig_load(*a, **{"weights_only": False, **k})
    if seed is not None:
        for mod, name in ((random, "seed"), (np.random, "seed"), (torch, "manual_seed")):
            orig = getattr(mod, name)
            setattr(mod, name, lambda *a, _orig=orig, **k: _orig(seed))
        torch.cuda.manual_seed = lambda *a, **k: None
    import torch.utils.data as tud
    orig_init = tud.DataLoader.__init__

    def init(self, *a, **k):
        k["num_workers"] = 0
        k["pin_memory"] = False
        orig_init(self, *a, **k)
    tud.DataLoader.__init__ = init
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        import types
        stub = types.ModuleType("tensorboardX")
        stub.SummaryWriter = type("SummaryWriter", (), {
            "__init__": lambda self, *a, **k: None, "__getattr__": lambda self, name: (lambda *a, **k: None)})
        sys.modules["tensorboardX"] = stub
    from ruamel import yaml as ryaml

    def load(stream, Loader=None, **k):
        return ryaml.YAML(typ="rt").load(stream)

    def dump(data, stream=None, Dumper=None, indent=None, **k):
        ryaml.YAML(typ="rt").dump(data, stream)
    ryaml.load, ryaml.dump = load, dump


def stub_modules(names: list[str]) -> None:
    """Empty modules for imports the training never calls: CACE-Net's ``braincog`` package
    imports dataset readers (``cv2``, ``dv``, ``pandas``, ``seaborn``) at import time."""
    import importlib.abc
    import importlib.machinery
    import types

    class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in names:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)

        def create_module(self, spec):
            module = types.ModuleType(spec.name)
            module.__path__ = []
            module.__getattr__ = lambda attr: type(attr, (), {})
            return module

        def exec_module(self, module):
            pass
    sys.meta_path.insert(0, Stubs())


def prepare_run_dir(repo: Path, run_dir: Path, data: Path, data_subdir: str, float64: bool) -> Path:
    """A copy of ``repo`` (without its data/) in ``run_dir``; ``<data_subdir>/data`` links the set."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(repo, run_dir, ignore=shutil.ignore_patterns(".git", "data", "*.h5", "*.pt", "*.pth"))
    root = run_dir / data_subdir
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        src = data / "f64" / name if float64 and (data / "f64" / name).exists() else data / name
        os.symlink(src.resolve(), root / "data" / name)
    return root


def parse(log: str, bare: bool = False) -> list[dict]:
    """The checks of a training log, each at the epoch of the ``=== Epoch`` line before it;
    accuracies in percent (VSCG) are divided by 100. ``bare``: a bare number is a val check
    (AVEL). A check printed twice at one epoch (PSP's ``[test]acc:`` and ``test accuracy:``)
    is kept once."""
    checks, epoch, seen = [], None, set()
    patterns = CHECKS + ([("val", BARE)] if bare else [])
    for line in log.splitlines():
        line = line.strip()
        m = EPOCH.match(line)
        if m:
            epoch = int(m.group(1))
            continue
        for split, pat in patterns:
            m = pat.match(line)
            if m and epoch is not None and (split, epoch) not in seen:
                acc = float(m.group(1))
                checks.append({"epoch": epoch, "split": split, "accuracy": acc / 100 if acc > 1 else acc})
                seen.add((split, epoch))
                break
    return checks


def avel_test(log: str) -> float:
    """The accuracy AVEL's test run prints last (the weak run prints the video count first)."""
    return float([m.group(1) for m in map(BARE.match, map(str.strip, log.splitlines())) if m][-1])


def run_script(path: Path, log_path: Path, mode: str = "w") -> None:
    with (open(log_path, mode, buffering=1) as log, contextlib.redirect_stdout(log),
          contextlib.redirect_stderr(log)):
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.stdout.flush()


def avel_test_run(root: Path, name: str, rest: list[str], log_path: Path, checks: list[dict]) -> dict:
    """AVE-ECCV18 tests in a second run (no ``--train``) that loads the model the first one
    saved: fully the best val check (``>``, the first of equal ones), weak the last check
    (``best_val_acc`` is never updated). The weak script saves to ``saved_models/`` and loads
    from ``model/``: the saved file is linked there (a path patch)."""
    for saved in (root / "saved_models").glob("*.pt"):
        (root / "model").mkdir(exist_ok=True)
        target = root / "model" / saved.name
        target.unlink(missing_ok=True)
        os.symlink(saved, target)
    sys.argv = [name, *[a for a in rest if a != "--train"]]
    test_log = log_path.with_suffix(".test.log")
    run_script(root / name, test_log)
    vals = [c for c in checks if c["split"] == "val"]
    weak = "weak" in name
    chosen = vals[-1] if weak else max(vals, key=lambda c: (c["accuracy"], -c["epoch"]))
    return {"epoch": chosen["epoch"], "split": "test", "accuracy": avel_test(test_log.read_text()),
            "selected": "last val check" if weak else "best val check"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--script", required=True, help="path inside the repository")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--float64", action="store_true", help="link the set's f64/ feature files")
    ap.add_argument("--parser", default="psp", choices=("psp", "avel", "cmbs"),
                    help="psp: PSP, VSCG; avel: AVE-ECCV18 (then its test run); cmbs: CMBS, CACE-Net")
    ap.add_argument("--stub", action="append", default=[], metavar="MODULE",
                    help="an import the training never calls, answered by an empty module")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the script's own arguments")
    args = ap.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = out.with_suffix(".run")
    script = Path(args.script)
    root = prepare_run_dir(args.repo, run_dir, args.data, str(script.parent), args.float64)
    for folder in ("model", "saved_models"):  # where the scripts save (AVE-ECCV18 weak: saved_models/)
        (root / folder).mkdir(exist_ok=True)
    os.chdir(root)
    sys.path.insert(0, str(root))
    sys.argv = [script.name, *rest]
    patch_runtime(args.seed)
    stub_modules(args.stub)
    log_path = out.with_suffix(".log")
    run_script(root / script.name, log_path)
    text = log_path.read_text()
    if args.parser == "cmbs":
        checks = parse_cmbs(text)
    else:
        checks = parse(text, bare=args.parser == "avel")
    if args.parser == "avel":
        checks.append(avel_test_run(root, script.name, rest, log_path, checks))
    out.write_text(json.dumps({"repo": args.repo.name, "script": args.script, "seed": args.seed,
                               "args": rest, "checks": checks}, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{out}: {len(checks)} checks")


CMBS_TEST = re.compile(r"Evaluation results \(acc\):\s*([0-9.]+)%")


def parse_cmbs(log: str) -> list[dict]:
    """CMBS / CACE-Net: every epoch ``validate_epoch`` on test; the epoch counter is the order
    of the checks (one an epoch, eval_freq 1)."""
    return [{"epoch": e, "split": "test", "accuracy": float(m.group(1)) / 100}
            for e, m in enumerate(CMBS_TEST.finditer(log))]


if __name__ == "__main__":
    main()
