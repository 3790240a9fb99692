"""``plc``: progressive label correction.

Reference: Zhang et al., "Learning with Feature-Dependent Label Noise: A Progressive Approach",
ICLR 2021, as used for segmentation in "One-shot Weakly-Supervised Segmentation in Medical Images"
(Sec. 3.3): every pixel whose predicted class differs from its current label with a confidence
above delta is flipped to the prediction; delta starts at 0.95 and is multiplied by 0.99 each epoch
until it reaches 0.85 (Sec. 4.2). Corrected labels persist across epochs.

The predictions come from the training forward passes (the loop hands them to :meth:`observe`):
no extra pass over the data. A pixel's candidate flip is decided when its image is seen and applied
at the end of the epoch (or every ``every_steps`` steps), so labels do not change under the model
in the middle of an epoch unless asked to. Among several processes each decides the flips of the
images it trains on, and all processes gather every flip before applying them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisyseg import LabelCorrector, RunContext, hookimpl


class PLCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_epochs: int = Field(3, ge=0, description="epochs of plain training before any correction")
    delta: float = Field(0.95, gt=0.5, le=1.0, description="first confidence threshold")
    delta_decay: float = Field(0.99, gt=0.0, le=1.0, description="delta is multiplied by this each epoch")
    delta_min: float = Field(0.85, gt=0.5, le=1.0, description="delta never falls below this")
    every_steps: int | None = Field(
        None, ge=1, description="apply the pending flips every k steps instead of at the epoch's end"
    )
    store: Literal["memory", "memmap"] = Field(
        "memory", description="keep the label store in memory or in a memory-mapped file (large sets)"
    )
    store_dir: str | None = Field(
        None, description="folder for the memory-mapped store (default: a temp dir)"
    )

    @model_validator(mode="after")
    def _floor_below_start(self) -> PLCOptions:
        if self.delta_min > self.delta:
            raise ValueError(f"delta_min ({self.delta_min}) must not exceed delta ({self.delta})")
        return self


def plc_delta(epoch: int, options: PLCOptions) -> float:
    """The threshold used during ``epoch`` (0-based): 0.95 * 0.99^(epoch - warm-up), floor 0.85."""
    corrections_so_far = max(epoch - options.warmup_epochs, 0)
    return max(options.delta * options.delta_decay**corrections_so_far, options.delta_min)


class PLCCorrector(LabelCorrector):
    """Progressive label correction: flip confidently mispredicted pixels, delta 0.95 -> 0.85."""

    name = "plc"
    Options = PLCOptions
    observes_predictions = True

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Shape: labels - (N, H, W) integer noisy training labels."""
        self.world, self.scratch = run.world, run.scratch
        dtype = np.uint8 if run.num_classes <= 256 else np.int16
        self.store = self._allocate("labels", labels.shape, dtype)
        self.store.copy_(labels)
        self.pending = self._allocate("pending", labels.shape, dtype)  # labels after the flips decided
        self.pending.copy_(labels)
        self.epoch = 0
        self.observed = 0
        self.flipped = 0

    def _allocate(self, name: str, shape: torch.Size, dtype: type) -> torch.Tensor:
        if self.options.store == "memory":  # (in files anyway when the dataset streams)
            return torch.from_numpy(self.scratch.empty(tuple(shape), dtype))
        if self.options.store_dir is None and not hasattr(self, "_tmp"):
            self._tmp = tempfile.TemporaryDirectory(prefix="noisyseg-plc-")  # removed with the object
        folder = Path(self.options.store_dir or self._tmp.name)
        if self.world.size > 1:  # one store per process
            folder = folder / f"rank{self.world.rank}"
        folder.mkdir(parents=True, exist_ok=True)
        array = np.memmap(folder / f"{name}.dat", dtype=dtype, mode="w+", shape=tuple(shape))
        return torch.from_numpy(array)

    @property
    def delta(self) -> float:
        return plc_delta(self.epoch, self.options)

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Shape: index - (B,); returns (B, H, W) int64."""
        return self.store[index].long()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Decide the flips of the samples ``index`` from their class probabilities.

        Shape:
            index - (B,); probs - (B, K, H, W) on the CPU
        """
        if self.epoch < self.options.warmup_epochs:
            return
        confidence, predicted = probs.max(dim=1)
        current = self.store[index].long()
        flip = (predicted != current) & (confidence > self.delta)
        self.pending[index] = torch.where(flip, predicted, current).to(self.store.dtype)
        self.observed += 1
        if self.options.every_steps is not None and self.observed % self.options.every_steps == 0:
            self._apply()

    def _apply(self) -> None:
        self._gather_pending()
        self.flipped += int((self.pending != self.store).sum())
        self.store.copy_(self.pending)

    def _gather_pending(self) -> None:
        """Among several processes each decided the flips of its own share of the images (the
        shares do not overlap within an epoch): collect every process's flips, so that all hold
        the same labels."""
        if self.world.size == 1:
            return
        pending = self.pending.view(-1)
        where = torch.nonzero(pending != self.store.view(-1)).squeeze(1)
        for index, values in self.world.gather((where, pending[where].clone())):
            pending[index] = values

    def end_epoch(self, epoch: int) -> dict[str, float]:
        delta = self.delta
        self._apply()
        flipped, self.flipped = self.flipped, 0
        self.epoch = epoch + 1
        return {"plc_delta": delta, "plc_flipped": float(flipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.store.clone(), "pending": self.pending.clone(), "epoch": self.epoch,
                "observed": self.observed, "flipped": self.flipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.copy_(state["labels"])
        self.pending.copy_(state.get("pending", state["labels"]))
        self.epoch = int(state.get("epoch", 0))
        self.observed = int(state.get("observed", 0))
        self.flipped = int(state.get("flipped", 0))


@hookimpl
def register_label_correctors() -> list[type[LabelCorrector]]:
    return [PLCCorrector]
