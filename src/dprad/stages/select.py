"""Non-private fine-tuning ships the epoch with the lowest validation loss, not necessarily the last,
and stops once the loss has not improved for ``PATIENCE`` epochs.

Epoch 0 is the start: for LP-FT the trained probe itself (LoRA's B = 0), so a fine-tuning that does not
help on the validation reports leaves the run with its probe rather than a worse model. The fit loop calls
this at step 0 and at every epoch boundary; the best weights are kept in memory and in the checkpoint (a
resumed run selects over every epoch, not only those after the restart). Private runs never select: the
choice reads the validation reports, a release DP-SGD's ledger does not account.

Why it is on by default: from a converged non-private probe, LoRA fine-tuning raised the validation loss
at every epoch measured (IU X-ray, split seed 0, per report: 0.643 at the probe, then 1.33 / 1.16 / 1.20 /
1.21 / 1.11 at lr 1e-3 and 1.17 / 1.32 / 1.39 at lr 1e-4; CT-RATE 2.688, then 2.696 / 2.756 / 2.878 at
lr 1e-4, and 2.696 / 2.754 / 2.872 with the encoder's dropout off), and shipped a model worse than its
own start.
"""

from __future__ import annotations

from typing import Any

import torch

from dprad.data.reports import label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.metrics.scores import report_log_loss
from dprad.modes.base import Mode
from dprad.run.plan import RunPlan

PATIENCE = 2  # epochs without a lower validation loss before the run stops (it ships the best one)


class EpochSelection:
    """Validation loss at step 0 and each epoch's end; :meth:`finish` restores the best epoch's weights."""

    def __init__(self, plan: RunPlan, mode: Mode) -> None:
        self.plan, self.mode = plan, mode
        self.y, self.mask = label_matrix(
            plan.splits.val, plan.schema, policy=UncertainPolicy(plan.cfg.data.uncertain_policy)
        )  # (N_val, L), (N_val, L)
        self.history: list[dict[str, float]] = []
        self.best_step = -1
        self.best_loss = float("inf")
        self.best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_run(cls, plan: RunPlan, mode: Mode, notes: list[str]) -> EpochSelection | None:
        if not plan.cfg.train.select_epoch or plan.private:
            return None
        if not plan.splits.val:
            notes.append("epoch selection: no validation split, so the last step is shipped")
            return None
        return cls(plan, mode)

    def __call__(self, step: int, epoch: float) -> bool:
        """Record the validation loss now; True when the last ``PATIENCE`` epochs did not lower it."""
        loss = report_log_loss(self.y, self.mode.probs("val"), mask=self.mask)
        self.history.append({"epoch": round(epoch, 3), "step": step, "val_loss": round(loss, 6)})
        if loss < self.best_loss:  # ties keep the earlier epoch
            self.best_step, self.best_loss = step, loss
            self.best_state = {k: v.detach().clone() for k, v in self.mode.trainable.state_dict().items()}
        since = sum(h["step"] > self.best_step for h in self.history)  # epochs recorded after the best
        return since >= PATIENCE

    def state(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "best_step": self.best_step,
            "best_loss": self.best_loss,
            "best_state": self.best_state,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.best_step, self.best_loss = int(state["best_step"]), float(state["best_loss"])
        self.best_state = state["best_state"]

    def finish(self, steps: int, planned: int, notes: list[str]) -> None:
        """Restore the best epoch's weights (if it is not the last step taken) and say which was shipped."""
        assert self.best_state is not None, "finish() before any validation"
        best = next(h for h in self.history if h["step"] == self.best_step)
        if self.best_step != steps:
            self.mode.trainable.load_state_dict(self.best_state)
        if steps < planned:
            notes.append(
                f"early stop (not private): validation loss did not improve for {PATIENCE} epochs, so training "
                f"stopped after {steps} of {planned} planned steps"
            )
        what = (
            "the start (LP-FT's probe: fine-tuning did not lower it)"
            if self.best_step == 0 and self.plan.probe is not None
            else f"epoch {best['epoch']:g} (step {self.best_step} of {steps})"
        )
        notes.append(
            f"epoch selection (not private): validation loss {best['val_loss']:.4g} per report was lowest at "
            f"{what}; that model is the one shipped"
        )


__all__ = ["PATIENCE", "EpochSelection"]
