"""Model selection: our protocol (val) and the released scripts' protocol (test), in one run.

Every training run records two checkpoints:

* ``best_val.pt``: the epoch with the best val accuracy, checked every epoch (ours; the honest
  protocol: the test split never chooses the model);
* ``best_test.pt``: the epoch each paper's released training script reports: its own schedule of
  checks, on the split it checks (:data:`SCHEDULES`). Where the script checks the test split,
  the reported number is the best test accuracy over its checks.

``train.select`` names the one copied to ``best.pt`` (what the evaluate stage reads). Epochs are
0-based, as in the scripts' loops; ties go as in the script (``>=``: the later epoch, ``>``: the
earlier). A run that ends before the schedule's first check checks its last epoch.

The released scripts' checks (epoch ``e``, 0-based):

* avel fully / weak (YapengTian/AVE-ECCV18 ``supervised_main.py``, ``weak_supervised_main.py``):
  val, ``e % 5 == 0``;
* psp fully / weak (jasongief/PSP_CVPR_2021 ``{fully,weakly}_supervised_main.py``,
  ``check_epoch`` 5): test, ``e % 5 == 0 and e != 0``;
* vscg fully (Bravo5542/VSCG ``fully_supervised_main.py``): test, ``e % 5 == 0 and e != 0``;
* vscg weak (``weakly_supervised_main.py``): test, every epoch ``e > 50``;
* cmbs fully / weak (marmot-xy/CMBS ``supv_main.py``, ``weakly_main.py``, ``eval_freq`` 1) and
  cace fully (Brain-Cog-Lab/CACE-Net ``supv_main.py``, ``eval_freq`` 1): test, every epoch;
* m2n and the baselines (no released code): test, every epoch.

AVEL's script selects on val (its weak script never updates ``best_val_acc``, so it keeps the
last checked epoch; we follow the evident intent, the best one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

PROTOCOLS = ("val", "test")  # train.select values: ours | the released scripts'


@dataclass(frozen=True)
class Schedule:
    """When a released script checks its model, on which split, and how it breaks ties."""
    split: str = "test"  # split the script selects on
    every: int = 1  # check when epoch % every == 0
    skip_first: bool = False  # no check at epoch 0 (`epoch != 0`)
    after: int = -1  # checks only when epoch > after
    later_wins_ties: bool = False  # `>=` (True) or `>` (False)
    source: str = "no released code: every epoch on test"

    def checks(self, epoch: int) -> bool:
        return (epoch % self.every == 0 and not (self.skip_first and epoch == 0)
                and epoch > self.after)


_AVE = "YapengTian/AVE-ECCV18 (supervised_main.py, weak_supervised_main.py)"
_PSP = "jasongief/PSP_CVPR_2021 ({fully,weakly}_supervised_main.py, check_epoch 5)"
_VSCG = "Bravo5542/VSCG"
_CMBS = "marmot-xy/CMBS (supv_main.py, weakly_main.py, eval_freq 1)"
_CACE = "Brain-Cog-Lab/CACE-Net (supv_main.py, eval_freq 1)"
_EVERY_5 = dict(split="test", every=5, skip_first=True, later_wins_ties=True)
SCHEDULES: dict[tuple[str, str], Schedule] = {
    ("avel", "fully"): Schedule("val", every=5, source=f"{_AVE}: val, epoch % 5 == 0"),
    ("avel", "weak"): Schedule("val", every=5, source=f"{_AVE}: val, epoch % 5 == 0"),
    ("psp", "fully"): Schedule(**_EVERY_5, source=f"{_PSP}: test, epoch % 5 == 0, epoch > 0"),
    ("psp", "weak"): Schedule(**_EVERY_5, source=f"{_PSP}: test, epoch % 5 == 0, epoch > 0"),
    ("vscg", "fully"): Schedule(**_EVERY_5, source=f"{_VSCG} (fully_supervised_main.py): test, "
                                                   "epoch % 5 == 0, epoch > 0"),
    ("vscg", "weak"): Schedule("test", after=50, later_wins_ties=True,
                               source=f"{_VSCG} (weakly_supervised_main.py): test, "
                                      "every epoch > 50"),
    ("cmbs", "fully"): Schedule("test", source=f"{_CMBS}: test, every epoch"),
    ("cmbs", "weak"): Schedule("test", source=f"{_CMBS}: test, every epoch"),
    ("cace", "fully"): Schedule("test", source=f"{_CACE}: test, every epoch"),
}


def schedule(head: str, setting: str) -> Schedule:
    """The released script's schedule of ``head`` in ``setting`` (default: every epoch, test)."""
    return SCHEDULES.get((head, setting), Schedule())


class ScriptSelection:
    """Best epoch under a released script's protocol, tracked beside the val selection."""

    def __init__(self, head: str, setting: str, epochs: int):
        self.schedule = schedule(head, setting)
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
