"""AVEL: is a gap between the authors' runs and ours the training procedure, or the init draw?

AVE-ECCV18's loss (MultiLabelSoftMargin on the softmax) starts on a plateau where every segment
is predicted background; a run leaves it when its init lets it, so a few seeds decide the curves.
This script separates the two causes on a make_features.py set:

1. **One init, both procedures.** The authors' ``att_Net`` (their ``models.py``, imported from
   their clone) is built, our head gets its weights (``AVEL.from_authors_state_dict``), and both
   train on the same batches (their ``AVEDataset`` order: stored, last partial batch dropped)
   with Adam 1e-3. It prints both losses every epoch: equal losses mean an equal procedure.
2. **The init lottery.** For seeds ``0..N-1``, each side's own init (theirs: ``att_Net``; ours:
   the registered head) trains ``--steps`` steps; it prints the share of train segments still
   predicted background (1.000: still on the plateau).

    python benchmarks/parity/avel_same_init.py --repo ../authors/AVE-ECCV18 --data OUT \\
        --steps 24 --seeds 8
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.heads import build_head
from pipeline.heads.avel import AVEL


def batches(data: Path, batch_size: int = 64) -> list[tuple[torch.Tensor, ...]]:
    """``(audio, visual, labels)`` batches as their ``AVEDataset.get_batch`` reads them."""
    with h5py.File(data / "train_order.h5") as f:
        order = f["order"][:]
    out = []
    with (h5py.File(data / "audio_feature.h5") as fa, h5py.File(data / "visual_feature.h5") as fv,
          h5py.File(data / "labels.h5") as fl):
        for b in range(len(order) // batch_size):
            ids = order[b * batch_size:(b + 1) * batch_size]
            out.append(tuple(torch.from_numpy(np.float32(f["avadataset"][ids])) for f in (fa, fv, fl)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="a clone of YapengTian/AVE-ECCV18")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=24, help="steps of part 2 (24: 6 epochs of 256 videos)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of part 1")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.Tensor.cuda = lambda self, *a, **k: self  # their forward moves its LSTM states to CUDA
    sys.path.insert(0, str(args.repo))
    import models as authors  # noqa: E402  (their models.py)

    data = batches(args.data)
    theirs_fn = lambda m, a, v: m(a, v)  # noqa: E731  (softmax output)
    ours_fn = lambda m, a, v: F.softmax(m(v, a)["logits"], dim=-1)  # noqa: E731

    torch.manual_seed(0)
    theirs = authors.att_Net(128, 128, 512, 29)
    ours = AVEL.from_authors_state_dict(theirs.state_dict(), "fully")
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (theirs, ours)]
    print("1. one init (seed 0), both procedures: mean training loss per epoch")
    for epoch in range(args.epochs):
        sums = [0.0, 0.0]
        for a, v, lab in data:
            for i, (m, fn) in enumerate(((theirs, theirs_fn), (ours, ours_fn))):
                opts[i].zero_grad()
                loss = F.multilabel_soft_margin_loss(fn(m, a, v), lab)
                loss.backward()
                opts[i].step()
                sums[i] += loss.item() / len(data)
        print(f"   epoch {epoch}: theirs {sums[0]:.6f}  ours {sums[1]:.6f}")

    print(f"2. each side's own init: share of train segments predicted background after {args.steps} steps")
    for seed in range(args.seeds):
        row = []
        for side in ("theirs", "ours"):
            torch.manual_seed(seed)
            if side == "theirs":
                m, fn = authors.att_Net(128, 128, 512, 29), theirs_fn
            else:
                m, fn = build_head("avel", visual_dim=512, audio_dim=128, num_classes=28), ours_fn
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            for step in range(args.steps):
                a, v, lab = data[step % len(data)]
                opt.zero_grad()
                F.multilabel_soft_margin_loss(fn(m, a, v), lab).backward()
                opt.step()
            with torch.no_grad():
                bg = np.mean([(fn(m, a, v).argmax(-1) == 28).float().mean().item() for a, v, _ in data])
            row.append(f"{side} {bg:.3f}")
        print(f"   seed {seed}: " + "  ".join(row))


if __name__ == "__main__":
    main()
