"""``clslsr``: confident learning + spatial label smoothing regularisation.

Reference: Zhang et al., "Characterizing Label Errors: Confident Learning for Noisy-Labeled Image
Segmentation", MICCAI 2020; PyMIC's noisy-label module (``nll_clslsr``) as the reference
implementation. On JSRT it recovers 56-75% of the Dice lost to noisy labels, the best published
figure we could source.

1. The network trains on the noisy labels until ``detect_epoch``.
2. Confident learning (Northcutt et al., JAIR 2021) flags the training pixels whose label
   disagrees with the class the network is confident about, given per-class thresholds:
   cleanlab's ``find_label_issues`` with ``filter_by = "both"`` on the class probabilities of the
   pixels of every training image seen in the detection epoch (PyMIC's default,
   ``prune_method = "both"`` in the cleanlab 1.0 it pins).
3. From then on a flagged pixel is trained towards a smoothed label: 1 - ``eps`` on its label and
   ``eps`` on the other classes (eps = 0.25: 0.75 / 0.25 for a binary task).

Choices where the paper leaves room (tests/test_clslsr.py tests the flags, the draws and the
refused detection epoch):
- the probabilities are those of the loop's training forward passes in the detection epoch (each
  training image once, un-augmented positions), not of a separate inference pass, as ADELE and
  PLC use theirs; cross-validated probabilities, which confident learning prefers, would need
  several networks;
- the smoothed target is given in expectation: a corrector hands the loop hard labels, so each
  epoch every flagged pixel takes another class with probability ``eps`` (drawn per epoch and
  image from the run's seed, so a resumed run draws the same). With the cross-entropy loss and
  label-independent weights the expected loss is exactly the smoothed label's;
- one process only (the flags need every image's probabilities in one place);
- with K > 2 classes the smoothing mass eps is shared equally by the other K - 1 classes.

Memory: the detection epoch keeps every training pixel's class probabilities as float16 on the
run's scratch (files when the dataset streams), but cleanlab needs them in memory: flagging peaks
at about 30 bytes per training pixel and class (float32 and float64 copies, cleanlab's own
arrays). The flags stay on the scratch.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import ConfigError, LabelCorrector, RunContext, hookimpl
from noisyseg.scratch import chunks


class CLSLSROptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detect_epoch: int | None = Field(None, ge=1, description="flag the label errors after this "
                                     "epoch (counted from 1; default: half the run's epochs)")
    eps: float = Field(0.25, gt=0, lt=1, description="a flagged pixel's target: 1 - eps on its "
                                                     "label, eps on the other classes")
    filter_by: Literal["both", "prune_by_class", "prune_by_noise_rate", "confident_learning"] = Field(
        "both", description="cleanlab's find_label_issues filter (PyMIC: both)")


class CLSLSRCorrector(LabelCorrector):
    """Confident learning flags label errors; flagged pixels train on smoothed labels (CL+SLSR)."""

    name = "clslsr"
    Options = CLSLSROptions
    options: CLSLSROptions

    @property  # type: ignore[override]
    def observes_predictions(self) -> bool:
        """Only in the detection epoch: the loop copies each batch's probabilities to the CPU
        for a corrector that observes them, which other epochs need not pay."""
        return self.flags is None and self.epoch + 1 == self.detect_epoch

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Shape: labels - (N, H, W) ((N, D, H, W) for volumes) integer noisy training labels."""
        if run.world.size > 1:
            raise ConfigError("corrector 'clslsr' runs in one process: its flags need every "
                              "training image's probabilities in one place; drop --nproc")
        super().setup(labels, run)
        self.run = run
        self.num_classes = run.num_classes
        self.detect_epoch = self.options.detect_epoch or max(1, run.epochs // 2)
        if self.detect_epoch > run.epochs:
            raise ConfigError(f"corrector.options.detect_epoch ({self.detect_epoch}) is past the "
                              f"run's last epoch ({run.epochs}): nothing would be flagged")
        self.epoch = 0  # epochs finished
        self.probs: torch.Tensor | None = None
        self.flags: torch.Tensor | None = None

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """The noisy labels, each flagged pixel switched to another class with probability eps
        (drawn per epoch and image). Shape: index - (B,); returns (B, H, W) int64."""
        labels = self.store[index].long()
        if self.flags is None:
            return labels
        for row, i in enumerate(index.tolist()):
            flagged = self.flags[i]
            if not flagged.any():
                continue
            seed = np.random.SeedSequence([self.run.seed, self.epoch, i]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(seed))
            draw = torch.rand(flagged.shape, generator=generator)
            other = torch.randint(1, self.num_classes, flagged.shape, generator=generator)
            switch = flagged & (draw < self.options.eps)
            labels[row][switch] = (labels[row][switch] + other[switch]) % self.num_classes
        return labels

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Keep the detection epoch's class probabilities. Shape: probs - (B, K, H, W)."""
        if self.epoch + 1 != self.detect_epoch or self.flags is not None:
            return
        if self.probs is None:
            self.probs = self.run.scratch.tensor((len(self.store), *probs.shape[1:]), torch.float16)
            self.seen = torch.zeros(len(self.store), dtype=torch.bool)
        self.probs[index] = probs.half()
        self.seen[index] = True

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch + 1
        if self.epoch != self.detect_epoch or self.probs is None:
            return {}
        self.flags = self._flag()
        self.probs = None
        flagged = self.flags.float().mean().item()
        metrics = {"clslsr_flagged": flagged}
        truth = self.run.clean_labels
        if truth is not None and truth.shape == self.store.shape and self.flags.any():
            hits = wrong = 0  # a chunk of images at a time
            for part in chunks(len(truth)):
                mistaken = self.store[part].long() != truth[part]
                hits += int((mistaken & self.flags[part]).sum())
                wrong += int(mistaken.sum())
            metrics["clslsr_flag_precision"] = hits / int(self.flags.sum())
            metrics["clslsr_flag_recall"] = hits / wrong if wrong else float("nan")
        return metrics

    def _flag(self) -> torch.Tensor:
        """cleanlab's label issues among the seen images' pixels (the others stay unflagged)."""
        from cleanlab.filter import find_label_issues

        assert self.probs is not None
        flags = self.run.scratch.tensor(tuple(self.store.shape), torch.bool)
        seen = torch.nonzero(self.seen).flatten()
        if not len(seen):
            return flags
        k = self.probs.shape[1]
        probs = self.probs[seen].float().movedim(1, -1).reshape(-1, k).numpy()
        probs = probs / probs.sum(axis=1, keepdims=True)  # float16 rounding
        labels = self.store[seen].long().reshape(-1).numpy()
        with warnings.catch_warnings():  # e.g. a class with few pixels: cleanlab's own notes
            warnings.simplefilter("ignore")
            issues = find_label_issues(labels=labels, pred_probs=probs.astype(np.float64),
                                       filter_by=self.options.filter_by, n_jobs=1)
        flags[seen] = torch.from_numpy(issues.reshape(self.store[seen].shape))
        return flags

    def state_dict(self) -> dict[str, Any]:
        """The labels, the epochs finished and the flags (the probabilities live within the
        detection epoch only, and checkpoints come between epochs)."""
        return {**super().state_dict(), "epoch": self.epoch,
                "flags": None if self.flags is None else self.flags.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.flags = None if state["flags"] is None else state["flags"].clone()
        self.probs = None


@hookimpl
def register_label_correctors() -> list[type[LabelCorrector]]:
    return [CLSLSRCorrector]
