"""``adele``: adaptive early-learning correction.

Reference: Liu et al., "Adaptive Early-Learning Correction for Segmentation from Noisy
Annotations", CVPR 2022 (Sec. 3-4), and its medical (SegTHOR) configuration. A network trained
on noisy masks first learns the true shapes (early learning) and only later memorises the wrong
labels. ADELE watches, per class, the IoU between the network's training predictions and the
current labels; when that curve flattens, the class's early learning is over and its labels are
corrected from the network's confident predictions:

1. each epoch: IoU_c of argmax(prediction) vs the current labels over the training pixels (from
   the loop's training forward passes, no extra pass);
2. fit f(t) = a (1 - exp(-t^b / c)) to IoU_c (least squares weighted to the later epochs,
   a, b in [0, 1], c >= 0, after dropping the first epochs while the IoU rises by < 0.1 per
   epoch); the class's early learning ends at the epoch where |f'(t) - f'(1)| / f'(1) first
   exceeds ``r`` (0.9: the slope has fallen to a tenth);
3. at that epoch, and every ``correct_every`` epochs after it, a pixel takes the predicted label
   when the prediction is confident (foreground probability > ``tau_fg``, background >
   ``tau_bg``), both the current and the predicted label are background or a class being
   corrected, and a predicted foreground class is already present in the image's labels;
   images holding none of the classes being corrected are left alone. Labels are hard and
   corrections build on each other.

Choices where the paper leaves a detail open (tested in tests/test_adele.py): the fit's time axis
is the reference code's (n points evenly from 0 to n); fewer than 3 points left after the drop
means "not yet"; the thresholds are the SegTHOR configuration's (0.7 and 0.7). Left out: ADELE's
multi-scale consistency regulariser (three forward passes at scales 0.7 / 1 / 1.5 and a
Jensen-Shannon term), which needs a loss term rather than a label corrector.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import OptimizeWarning, curve_fit

from noisyseg import LabelCorrector, RunContext, hookimpl


class ADELEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: float = Field(0.9, gt=0, lt=1, description="relative slope drop that ends early learning")
    tau_fg: float = Field(0.7, ge=0.5, lt=1, description="confidence to relabel a pixel as foreground")
    tau_bg: float = Field(0.7, ge=0.5, lt=1, description="confidence to relabel a pixel as background")
    correct_every: int = Field(10, ge=1, description="after its first correction, correct a class "
                                                     "again at every epoch divisible by this")
    min_epochs: int = Field(3, ge=3, description="IoU points needed before the curve is fitted")


def _curve(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * (1 - np.exp(-(t**b) / c))


def _slope(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    t = t + 1e-6
    return a * b / c * np.exp(-(t**b) / c) * t ** (b - 1)


def early_learning_ended(iou: list[float], r: float, total_epochs: int) -> bool:
    """Whether the IoU curve of one class (one value per epoch so far) says early learning is
    over at the latest epoch (reference: ADELE's ``if_update``)."""
    start = 0
    for k in range(len(iou) - 1):  # drop the first epochs while the IoU barely rises
        if iou[k + 1] - iou[k] < 0.1:
            start = k + 1
        else:
            break
    y = np.asarray(iou[start:], dtype=np.float64)
    if len(y) < 3:
        return False
    t = np.linspace(0, len(y), len(y))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b, c), _ = curve_fit(_curve, t, y, p0=(1, 1, 1), method="trf",
                                     sigma=np.geomspace(1, 0.1, len(y)), absolute_sigma=True,
                                     bounds=([0, 0, 0], [1, 1, np.inf]))
    except (RuntimeError, ValueError):  # no fit: keep waiting
        return False
    epochs = np.arange(1, max(total_epochs, 2), dtype=np.float64)
    first = abs(_slope(np.array([1.0]), a, b, c)[0])
    if first == 0:
        return False
    change = np.abs(np.abs(_slope(epochs, a, b, c)) - first) / first
    change[change > 1] = 0
    end = int(np.sum(change <= r)) + 1 + start
    return len(iou) >= end


class ADELECorrector(LabelCorrector):
    """Adaptive early-learning correction: relabel confident pixels once a class's IoU plateaus."""

    name = "adele"
    Options = ADELEOptions
    options: ADELEOptions
    observes_predictions = True

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Shape: labels - (N, H, W) integer noisy training labels."""
        self.world, self.num_classes, self.total_epochs = run.world, run.num_classes, run.epochs
        dtype = torch.uint8 if run.num_classes <= 256 else torch.int16
        self.store = run.scratch.clone(labels.to(dtype))  # in files when the dataset streams
        self.predicted = run.scratch.tensor(labels.shape, dtype)
        self.confidence = run.scratch.tensor(labels.shape, torch.float16)
        self.seen = torch.zeros(len(labels), dtype=torch.bool)
        self.counts = np.zeros((run.num_classes, 3))  # per class: TP, FP, FN this epoch
        self.iou: list[list[float]] = [[] for _ in range(run.num_classes)]
        self.detected = [-1] * run.num_classes  # epoch whose end started the class's correction

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Shape: index - (B,); returns (B, H, W) int64."""
        return self.store[index].long()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Keep the latest prediction of each pixel and count this epoch's per-class overlap.

        Shape:
            index - (B,); probs - (B, K, H, W) on the CPU
        """
        confidence, predicted = probs.max(dim=1)
        current = self.store[index].long()
        self.predicted[index] = predicted.to(self.store.dtype)
        self.confidence[index] = confidence.half()
        self.seen[index] = True
        for c in range(1, self.num_classes):
            p, t = predicted == c, current == c
            self.counts[c] += [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())]

    def end_epoch(self, epoch: int) -> dict[str, float]:
        counts = sum(self.world.gather(self.counts)) if self.world.size > 1 else self.counts
        metrics: dict[str, float] = {}
        active = []
        for c in range(1, self.num_classes):
            tp, fp, fn = counts[c]
            self.iou[c].append(float(tp / (tp + fp + fn)) if tp + fp + fn else 1.0)
            metrics[f"adele_iou_class{c}"] = self.iou[c][-1]
            if self.detected[c] < 0 and len(self.iou[c]) >= self.options.min_epochs and \
                    early_learning_ended(self.iou[c], self.options.r, self.total_epochs):
                self.detected[c] = epoch
            if self.detected[c] == epoch or (
                    self.detected[c] >= 0 and (epoch + 1) % self.options.correct_every == 0):
                active.append(c)
        changed = self._correct(active) if active else 0
        self.counts[:] = 0
        self.seen[:] = False
        metrics.update(adele_classes_corrected=float(len(active)), adele_changed=float(changed))
        return metrics

    def _correct(self, classes: list[int]) -> int:
        """Relabel the confident pixels of the images this process saw; every process gets every
        change. Returns the number of pixels changed."""
        o = self.options
        allowed = torch.zeros(self.num_classes, dtype=torch.bool)
        allowed[0] = True
        allowed[classes] = True
        changes = []
        for i in torch.nonzero(self.seen).flatten().tolist():
            current, pred = self.store[i].long(), self.predicted[i].long()
            present = torch.zeros(self.num_classes, dtype=torch.bool)
            present[torch.unique(current)] = True
            if not present[classes].any():
                continue
            conf = self.confidence[i].float()
            confident = torch.where(pred == 0, conf > o.tau_bg, conf > o.tau_fg)
            flip = (confident & allowed[current] & allowed[pred] & ((pred == 0) | present[pred])
                    & (pred != current))
            where = torch.nonzero(flip.view(-1)).flatten()
            if len(where):
                changes.append((i, where, pred.view(-1)[where]))
        gathered = self.world.gather(changes) if self.world.size > 1 else [changes]
        total = 0
        for part in gathered:
            for i, where, values in part:
                self.store[i].view(-1)[where] = values.to(self.store.dtype)
                total += len(where)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.store.clone(), "iou": [list(v) for v in self.iou],
                "detected": list(self.detected)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.copy_(state["labels"])  # (setup made the store, in memory or in files)
        self.iou = [list(v) for v in state["iou"]]
        self.detected = list(state["detected"])


@hookimpl
def register_label_correctors() -> list[type[LabelCorrector]]:
    return [ADELECorrector]
