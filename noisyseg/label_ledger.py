"""What the corrector did to the training labels in each epoch, for metrics.jsonl: the labels'
error against the clean masks, how many pixels it changed and how many of those now hold the
clean label."""

from __future__ import annotations

import math

import torch

from noisyseg.data import NoisyTrainSet
from noisyseg.method_kinds import LabelCorrector
from noisyseg.scratch import chunks


class LabelLedger:
    """The corrector's labels at an epoch's start (:meth:`snapshot`) against those at its end
    (:meth:`changes`)."""

    def __init__(self, corrector: LabelCorrector, train: NoisyTrainSet) -> None:
        self.corrector, self.train = corrector, train
        self._before: torch.Tensor | None = None  # one buffer kept for the run

    def snapshot(self) -> torch.Tensor:
        """The corrector's labels now, copied into the ledger's buffer (in files when the
        dataset streams)."""
        store = self.corrector.store
        if self._before is None or self._before.shape != store.shape:
            assert self.train.scratch is not None
            self._before = self.train.scratch.tensor(tuple(store.shape), store.dtype)
        return self._before.copy_(store)

    def changes(self, before: torch.Tensor | None) -> dict[str, float]:
        """Training-label error against the clean masks, and what the corrector changed this epoch
        (``before``: its labels at the epoch's start; None: it never changes them): how many
        pixels and the fraction of them that now hold the clean label (precision)."""
        store, clean = self.corrector.store, self.train.clean
        n = right = 0
        for part in chunks(len(store) if before is not None else 0):
            changed = store[part] != before[part]
            n += int(changed.sum())
            right += int((store[part][changed] == clean[part][changed]).sum())
        return {
            "label_error": self.train.label_error(store),
            "labels_changed": float(n),
            "label_change_precision": right / n if n else math.nan,
        }
