"""Model selection: our protocol (val) and the released scripts' protocol (test), in one run.

Every training run records two checkpoints:

* ``best_val.pt``: the epoch with the best val accuracy, checked every epoch (ours; the honest
  protocol: the test split never chooses the model);
* ``best_test.pt``: the epoch each paper's released training script reports: its own schedule of
  checks, on the split it checks (``Head.SELECTION``). Where the script checks the test split,
  the reported number is the best test accuracy over its checks.

``train.select`` names the one copied to ``best.pt`` (what the evaluate stage reads). Epochs are
0-based, as in the scripts' loops; ties go as in the script (``>=``: the later epoch, ``>``: the
earlier). A run that ends before the schedule's first check checks its last epoch.

Each head declares its released scripts' checks per setting (``Head.SELECTION``, with the
authors' file and rule as ``source``); a head must declare one for every setting it supports.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from pipeline.heads import Schedule

PROTOCOLS = ("val", "test")  # train.select values: ours | the released scripts'


class ScriptSelection:
    """Best epoch under a released script's protocol, tracked beside the val selection."""

    def __init__(self, schedule: Schedule, epochs: int):
        self.schedule = schedule  # the head's SELECTION[setting]
        self.epochs = epochs
        self.best: Optional[dict[str, Any]] = None  # epoch, accuracy, split, model
        self.checked = 0

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "checked": self.checked}

    def load_state(self, state: Optional[dict[str, Any]]) -> None:
        if state:
            self.best, self.checked = state["best"], int(state["checked"])

    def due(self, epoch: int) -> bool:
        return self.schedule.checks(epoch) or (epoch == self.epochs - 1 and not self.checked)

    def update(self, epoch: int, accuracy_on: Callable[[str], float],
               model_state: Callable[[], dict]) -> Optional[float]:
        """At a due epoch, score the model on the schedule's split; keep it if it is the best
        so far. Returns the accuracy (``None`` when no check is due)."""
        if not self.due(epoch):
            return None
        acc = accuracy_on(self.schedule.split)
        self.checked += 1
        prev = None if self.best is None else self.best["accuracy"]
        if prev is None or acc > prev or (self.schedule.later_wins_ties and acc == prev):
            self.best = {"epoch": epoch, "accuracy": acc, "split": self.schedule.split,
                         "model": model_state()}
        return acc
