"""Per-pixel losses (the ``loss`` kind): cross-entropy and the noise-robust losses.

- ``ce``: cross-entropy (binary for a one-logit net), the default;
- ``gce``: generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018);
- ``mae``: mean absolute error between probabilities and the one-hot label (Ghosh et al., AAAI 2017);
- ``nrdice``: the noise-robust Dice loss (Wang et al., IEEE TMI 2020);
- ``tloss``: the T-Loss, a Student-t likelihood with a learned nu (Gonzalez-Jimenez et al., MICCAI 2023).

Each returns a map (N, H, W) whose mean over the batch's pixels is the published loss of the batch,
so plain training (weight 1) follows the paper's gradient exactly, and a reweighter's weights scale
each pixel's share of it.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import Loss, hookimpl
from noisyseg.losses import class_probs, per_pixel_loss
from noisyseg_losses.tloss import TLoss


class CELoss(Loss):
    """Cross-entropy (binary cross-entropy for a two-class task): the default."""

    name = "ce"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_pixel_loss(logits, labels)


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Predicted probability of each pixel's label.

    Shape:
        logits - (N, K, H, W) (K = 1 for a binary net); labels - (N, H, W); returns (N, H, W)
    """
    return class_probs(logits).gather(1, labels.unsqueeze(1)).squeeze(1)


class GCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: float = Field(0.5, gt=0, le=1, description="0 -> cross-entropy, 1 -> mean absolute error")


class GCELoss(Loss):
    """Generalised cross-entropy (1 - p^q) / q of the label's probability p (q = 0.5)."""

    name = "gce"
    Options = GCEOptions
    options: GCEOptions

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        q = self.options.q
        return (1 - label_probability(logits, labels) ** q) / q


class MAELoss(Loss):
    """Mean absolute error between the class probabilities and the one-hot label: 2 (1 - p)."""

    name = "mae"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 2 * (1 - label_probability(logits, labels))


class NRDiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(1.5, ge=1, le=2, description="exponent of |p - y|: 2 is the Dice loss's "
                                                      "numerator, 1 the mean absolute error's")
    eps: float = Field(1e-5, gt=0, description="added to the denominator")


class NRDiceLoss(Loss):
    """Noise-robust Dice: sum |p - y|^gamma / (sum p^2 + sum y^2) per image and class (gamma 1.5)."""

    name = "nrdice"
    Options = NRDiceOptions
    options: NRDiceOptions

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each pixel's share of its image's loss, mean over classes (background included, as in
        the paper), scaled so that the map's mean over an image is the image's loss.

        Shape:
            returns (N, H, W)
        """
        probs = class_probs(logits)                                    # (N, K, H, W)
        onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
        pixels = tuple(range(2, probs.dim()))
        denominator = (probs.square().sum(pixels) + onehot.sum(pixels)  # y^2 = y
                       + self.options.eps)                             # (N, K)
        share = (probs - onehot).abs().pow(self.options.gamma)
        scale = labels[0].numel() / probs.shape[1]
        view = (*denominator.shape, *(1,) * len(pixels))
        return (share / denominator.view(view)).sum(1) * scale


@hookimpl
def register_losses() -> list[type[Loss]]:
    return [CELoss, GCELoss, MAELoss, NRDiceLoss, TLoss]
