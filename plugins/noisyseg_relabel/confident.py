"""``confident``: one relabelling of the pixels the network confidently contradicts.

The correction step of the noise-robust iterative learning of Wang, Guo, Wang & Zhang,
"Annotation-Efficient Learning for Medical Image Segmentation based on Noisy Pseudo Labels and
Adversarial Learning", IEEE TMI 2021 (arXiv 2012.14584): between rounds of training with the
noise-weighted Dice loss (``nwdice``), the labels the previous round's model confidently
contradicts are replaced by its prediction, and the next round trains on them. Here a round is a
stage of the ``nwdice_rounds`` recipe, started from the previous stage's weights, and this
corrector is the replacement (:meth:`ConfidentCorrector.observe`, :meth:`end_epoch`):

    y_i <- argmax_c p_ic   where  argmax_c p_ic != y_i  and  max_c p_ic > threshold

decided from the predictions of the training forward passes during epoch ``at_epoch`` (the start
model, trained one more epoch on the labels it started with) and applied once, at that epoch's
end; the stage then trains on the new labels for its remaining epochs.

Choices (the paper's threshold and schedule could not be read here): a threshold of 0.9; hard
labels; one replacement per round, at the end of the round's first epoch. Among several
processes every process decides the images it trains on and all apply every decision, so all
hold the same labels. Labels do not travel between stages (a stage starts from the dataset's
noisy labels, a checkpoint carries only weights to the next): each round relabels the original
labels with a model that was trained on the previous round's relabelled ones.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import LabelCorrector, RunContext


class ConfidentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.9, ge=0.5, lt=1, description="replace a label when the network "
                                                            "predicts another class with a "
                                                            "probability above this")
    at_epoch: int = Field(1, ge=1, description="replace once, at the end of this epoch (1: the "
                                               "first), from that epoch's predictions")


class ConfidentCorrector(LabelCorrector):
    """Replace once the labels the network contradicts with probability above a threshold (0.9)."""

    name = "confident"
    Options = ConfidentOptions
    options: ConfidentOptions

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Shape: labels - (N, H, W) integer noisy training labels (or (N, D, H, W))."""
        self.world = run.world
        dtype = torch.uint8 if run.num_classes <= 256 else torch.int16
        self.store = run.scratch.clone(labels.to(dtype))
        self.pending = run.scratch.clone(self.store)  # the labels after the decided replacements
        self.epoch = 0

    @property
    def observes_predictions(self) -> bool:  # type: ignore[override]
        """Only in the epoch that decides (the same in every process)."""
        return self.epoch == self.options.at_epoch - 1

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Shape: index - (B,); returns (B, H, W) int64."""
        return self.store[index].long()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Decide the replacements of the samples ``index``.

        Shape:
            index - (B,); probs - (B, K, H, W) class probabilities on the CPU
        """
        confidence, predicted = probs.max(dim=1)
        current = self.store[index].long()
        replace = (predicted != current) & (confidence > self.options.threshold)
        self.pending[index] = torch.where(replace, predicted, current).to(self.store.dtype)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        deciding = self.observes_predictions
        self.epoch = epoch + 1
        if not deciding:
            return {}
        if self.world.size > 1:  # each process decided its own images: every process takes all
            flat = self.pending.view(-1)
            where = torch.nonzero(flat != self.store.view(-1)).squeeze(1)
            for at, values in self.world.gather((where, flat[where].clone())):
                flat[at] = values
        changed = int((self.pending != self.store).sum())
        self.store.copy_(self.pending)
        return {"confident_replaced": float(changed)}

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.store.clone(), "pending": self.pending.clone(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.copy_(state["labels"])
        self.pending.copy_(state["pending"])
        self.epoch = int(state["epoch"])
