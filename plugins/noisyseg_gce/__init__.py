"""``gce``: the generalised cross-entropy loss as a reweighter.

Reference: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with
Noisy Labels", NeurIPS 2018, Eq. 6: L_q = (1 - p_y^q) / q per pixel, with p_y the predicted
probability of the pixel's label; q -> 0 gives cross-entropy, q = 1 the (noise-robust) mean
absolute error. PyMIC's noisy-label module uses it for segmentation with q = 0.5.

The gradient of L_q is p_y^q times the gradient of the cross-entropy -log p_y, so the loop's
mean(w * CE) with the detached weight w = p_y^q has exactly the gradient of mean(L_q): pixels the
network finds unlikely under their label, often the wrong ones, count less. The loss value logged
is the weighted cross-entropy, not L_q. ``q = 1`` gives the gradient of 1 - p_y, the mean absolute
error 2 (1 - p_y) between probabilities and one-hot label up to the factor 2.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import Reweighter, StepContext, hookimpl, mean_one
from noisyseg.outputs import class_probs


class GCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: float = Field(0.5, gt=0, le=1, description="0 -> cross-entropy, 1 -> mean absolute error")
    normalise: bool = Field(False, description="scale each batch's weights to mean 1 (not GCE's "
                                               "gradient then, but its relative weighting)")


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Predicted probability of each pixel's label.

    Shape:
        logits - (N, K, H, W) (K = 1 for a binary net); labels - (N, H, W); returns (N, H, W)
    """
    return class_probs(logits).gather(1, labels.unsqueeze(1)).squeeze(1)


class GCEReweighter(Reweighter):
    """Generalised cross-entropy (q = 0.5): the gradient of (1 - p^q) / q through weights p^q."""

    name = "gce"
    Options = GCEOptions
    options: GCEOptions

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Shape: returns (N, H, W) = p_y ** q, detached."""
        w = label_probability(ctx.logits.detach(), ctx.labels) ** self.options.q
        return mean_one(w) if self.options.normalise else w

    def preview(self, ctx: StepContext) -> torch.Tensor:
        return self.weigh(ctx)


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [GCEReweighter]
