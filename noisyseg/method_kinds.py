"""The bases of the kinds that make a training method, each picked anew by every stage of a
recipe: the per-pixel :class:`Loss`, the :class:`Reweighter` of its pixels and the
:class:`LabelCorrector` that owns the labels trained on. The training step (:mod:`noisyseg.step`)
and the loop (:mod:`noisyseg.loop`) call them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from noisyseg.component import Component
from noisyseg.contexts import RunContext, StepContext


class Loss(Component):
    """Turns the network's logits and the training labels into a per-pixel loss map.

    The loop trains on ``mean(w * loss_map)`` with ``w`` from the reweighter, so every loss
    composes with every reweighter and corrector. The meta reweighters' virtual steps and the
    clean meta objective use the same loss (:attr:`RunContext.loss_fn`).
    """

    def setup(self, run: RunContext) -> None:
        """Called once before training, before the reweighter's and corrector's setup."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-pixel loss, differentiable in ``logits`` (and in :meth:`parameters`).

        Shape:
            logits - (N, K, H, W) with K = 1 (binary) or K = num_classes; labels - (N, H, W)
            int64; returns (N, H, W), finite
        """
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the loss learns with the network (the run's optimiser steps them, in a
        group of their own without weight decay, and checkpoints keep them)."""
        return []

    def metrics(self) -> dict[str, float]:
        """What to log at the end of each epoch (e.g. a learned parameter), keys prefixed with
        ``loss_``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {f"param{i}": p.detach().clone() for i, p in enumerate(self.parameters())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(state[f"param{i}"])


class Reweighter(Component):
    """Turns the step's per-pixel loss map into a non-negative weight map."""

    #: the loop feeds a clean meta batch in every StepContext when True
    needs_meta_batch: ClassVar[bool] = False
    #: whether the meta images are also training images when train.train_on_meta is not set;
    #: None: only when the reweighter does not learn from them itself
    trains_on_meta: ClassVar[bool | None] = None
    #: the label corrector a run uses with it when the config leaves corrector.name at "auto"
    default_corrector: ClassVar[str] = "none"
    #: False when it cannot train with train.precision = fp16: it takes gradients through the
    #: network of its own (a meta reweighter's virtual step) that fp16's gradient scaler does not
    #: scale, so they would underflow; the run then stops with a one-line error before training
    #: (bf16 needs no scaler and works with every reweighter)
    supports_fp16: ClassVar[bool] = True

    def setup(self, run: RunContext) -> None:
        """Called once before training (build extra networks and optimisers here)."""

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Return the weights of this step.

        Shape:
            returns (N, H, W), finite and >= 0; the loop detaches it
        """
        raise NotImplementedError

    def preview(self, ctx: StepContext) -> torch.Tensor | None:
        """Weights this reweighter would give now, without learning anything (for pictures).

        Shape:
            returns (N, H, W), or None when the reweighter has nothing to show
        """
        return None

    def metrics(self) -> dict[str, float]:
        """What to log at the end of each epoch (metrics.jsonl), e.g. what it estimated over the
        epoch, keys prefixed with its name; called once per epoch, in every process (among
        several, rank 0's numbers are written)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def mean_one(weights: torch.Tensor) -> torch.Tensor:
    """Scale non-negative weights to mean 1 (all zero stays zero): a reweighter that drops or
    down-weights pixels then does not also lower the learning rate.

    Shape:
        weights - any shape; returns the same shape
    """
    total = weights.sum()
    return weights * (weights.numel() / total) if total > 0 else weights


class LabelCorrector(Component):
    """Owns the current training labels; the loop always trains on :meth:`labels`.

    The base class keeps the labels unchanged, so it is a complete 'none' corrector.
    """

    #: the loop calls :meth:`observe` with each batch's class probabilities when True; read on
    #: the instance at every step after :meth:`setup`, so it may be a property (the same value
    #: in every process), e.g. True only in the epochs that need the probabilities
    observes_predictions: ClassVar[bool] = False
    #: the loop calls :meth:`observe_weights` with each batch's reweighter weights when True
    observes_weights: ClassVar[bool] = False
    #: False when the labels never change: the loop then keeps no copy of them to count changes
    changes_labels: ClassVar[bool] = True
    #: the current training labels (N, H, W), integers, on the CPU (in memory, or in mapped files
    #: for a dataset that streams): :meth:`setup` makes it; the loop reads it at the end of each
    #: epoch (label error, what changed) and a checkpoint saves it through :meth:`state_dict`
    store: torch.Tensor

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Take the noisy training labels (N, H, W), integers (int64, or uint8 from a dataset
        that streams from disk), on the CPU; keep them in ``self.store`` (the base copies them
        to ``run.scratch``)."""
        self.store = run.scratch.clone(labels)

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Current labels of the samples ``index``: (B,) -> (B, H, W) int64."""
        return self.store[index].long()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """See the model's class probabilities (B, K, H, W) for the samples ``index``."""

    def observe_weights(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        """See the weights (B, H, W) the reweighter gave the samples ``index`` this step (called
        before :meth:`observe`)."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Update labels at the end of ``epoch``; return metrics to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        compact = self.store.numel() == 0 or int(self.store.max()) < 256  # 8x smaller checkpoints
        return {"labels": self.store.to(torch.uint8) if compact else self.store.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the labels into the store :meth:`setup` made (its type and place kept)."""
        labels = state["labels"]
        if not hasattr(self, "store") or self.store.shape != labels.shape:
            self.store = labels.to(torch.int64)
        else:
            self.store.copy_(labels)
