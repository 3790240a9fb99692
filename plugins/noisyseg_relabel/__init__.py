"""``relabel``: detection that drives correction. The pixels a reweighter keeps down-weighting
are relabelled with the network's prediction.

The meta reweighters find the corrupted pixels well (L2RW's weights rank them with AUROC up to
0.98) but a zero weight only removes a wrong label; it does not supply the right one. The MCPM
paper's authors combine their mask net with a label corrector for this reason; this corrector
makes the link explicit. For every training pixel it keeps

- ``w``: an exponential moving average (``momentum``) of the weight the reweighter gave it, each
  time its image was trained on (weights normalised to mean 1 per batch, as l2rw and mcpm give
  them; start 1);
- the network's latest prediction of it, from the training forward pass.

At the end of every epoch after ``warmup_epochs``, a pixel whose average weight is below
``threshold`` and whose confident prediction (probability > ``confidence``) differs from its
current label takes the predicted label; its average weight then starts again at 1. Both
signals must agree: the weights say "this label hurts the clean meta loss", the network says
what the label should be. Pair it with a reweighter whose weights carry that information
(``l2rw``, ``mcpm``); with ``none`` every weight is 1 and nothing is relabelled.

Choices (not from a paper; tested in tests/test_relabel.py): hard labels; the average is over
the epochs a pixel was seen, not over steps; labels change only at the end of an epoch, and among
several processes every process takes every process's averages and changes at once, so all hold
the same state.

``confident`` (:mod:`noisyseg_relabel.confident`), registered here too, relabels without weights:
once, the pixels the network contradicts with a probability above a threshold (the correction
step of the ``nwdice_rounds`` recipe).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import LabelCorrector, RunContext, hookimpl
from noisyseg_relabel.confident import ConfidentCorrector


class RelabelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup_epochs: int = Field(2, ge=0, description="epochs before any relabelling")
    momentum: float = Field(0.5, ge=0, lt=1, description="of the per-pixel weight average")
    threshold: float = Field(0.3, gt=0, lt=1, description="relabel pixels whose average weight "
                                                          "(mean 1) is below this ...")
    confidence: float = Field(0.5, ge=0, lt=1, description="... when the prediction is surer than this")


class RelabelCorrector(LabelCorrector):
    """Relabel pixels a reweighter keeps down-weighting, with the network's confident prediction."""

    name = "relabel"
    Options = RelabelOptions
    options: RelabelOptions
    observes_predictions = True
    observes_weights = True

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Shape: labels - (N, H, W) integer noisy training labels."""
        self.world = run.world
        dtype = torch.uint8 if run.num_classes <= 256 else torch.int16
        self.store = run.scratch.clone(labels.to(dtype))  # in files when the dataset streams
        self.weight = run.scratch.tensor(labels.shape, torch.float32, fill=1)
        self.predicted = run.scratch.tensor(labels.shape, dtype)
        self.confident = run.scratch.tensor(labels.shape, torch.bool)
        self.seen = torch.zeros(len(labels), dtype=torch.bool)
        self.epoch = 0

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Shape: index - (B,); returns (B, H, W) int64."""
        return self.store[index].long()

    def observe_weights(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        """Shape: index - (B,); weights - (B, H, W) on the CPU."""
        m = self.options.momentum
        self.weight[index] = m * self.weight[index] + (1 - m) * weights.float()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Shape: index - (B,); probs - (B, K, H, W) on the CPU."""
        confidence, predicted = probs.max(dim=1)
        self.predicted[index] = predicted.to(self.store.dtype)
        self.confident[index] = confidence > self.options.confidence
        self.seen[index] = True

    def end_epoch(self, epoch: int) -> dict[str, float]:
        if self.world.size > 1:  # each process averaged the images it saw: share the averages
            seen = torch.nonzero(self.seen).flatten()
            for index, weight in self.world.gather((seen, self.weight[seen].clone())):
                self.weight[index] = weight
        changed = 0
        if epoch + 1 > self.options.warmup_epochs:
            changed = self._relabel()
        self.seen[:] = False
        self.epoch = epoch + 1
        return {"relabel_changed": float(changed),
                "relabel_low_weight": float((self.weight < self.options.threshold).float().mean())}

    def _relabel(self) -> int:
        """Relabel the images this process saw; every process applies every change."""
        index = torch.nonzero(self.seen).flatten()
        store = self.store[index]
        flip = ((self.weight[index] < self.options.threshold) & self.confident[index]
                & (self.predicted[index] != store))
        where = torch.nonzero(flip)  # (M, 3): position in index, y, x ((M, 4) in volumes)
        changes = (torch.cat([index[where[:, :1]], where[:, 1:]], dim=1),
                   self.predicted[index][flip])
        parts = self.world.gather(changes) if self.world.size > 1 else [changes]
        total = 0
        for at, values in parts:
            pixels = tuple(at.T)  # image, (slice,) row, column
            self.store[pixels] = values
            self.weight[pixels] = 1.0
            total += len(at)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.store.clone(), "weight": self.weight.clone(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.copy_(state["labels"])  # (setup made both, in memory or in files)
        self.weight.copy_(state["weight"])
        self.epoch = int(state["epoch"])


@hookimpl
def register_label_correctors() -> list[type[LabelCorrector]]:
    return [RelabelCorrector, ConfidentCorrector]
