"""Per-pixel losses (the ``loss`` kind): cross-entropy and the noise-robust losses.

- ``ce``: cross-entropy (binary for a one-logit net), the default;
- ``gce``: generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018);
- ``mae``: mean absolute error between probabilities and the one-hot label (Ghosh et al., AAAI 2017);
- ``nrdice``: the noise-robust Dice loss (Wang et al., IEEE TMI 2020);
- ``nwdice``: a noise-weighted Dice loss (Wang et al., IEEE TMI 2021): soft Dice whose pixels are
  weighted by the network's detached agreement with their label;
- ``tloss``: the T-Loss, a Student-t likelihood with a learned nu (Gonzalez-Jimenez et al., MICCAI 2023);
- ``confusion``: the noisy labels' likelihood through learned pixel-wise confusion matrices with a
  trace regulariser (Zhang, Tanno et al., NeurIPS 2020).

Each returns a map (N, H, W) ((N, D, H, W) for volumes) whose mean over the batch's pixels has the
published loss's gradient (and, but for tloss, its value), so plain training (weight 1) follows the
paper exactly (``confusion`` adapts its paper: see its module), and a reweighter's weights scale
each pixel's share of it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import Loss, hookimpl
from noisyseg.outputs import class_probs, per_pixel_loss
from noisyseg_losses.confusion import ConfusionLoss
from noisyseg_losses.nwdice import NWDiceLoss
from noisyseg_losses.tloss import TLoss


class CELoss(Loss):
    """Cross-entropy (binary cross-entropy for a two-class task): the default."""

    name = "ce"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_pixel_loss(logits, labels)


class GCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: float = Field(0.5, gt=0, le=1, description="0 -> cross-entropy, 1 -> mean absolute error")


class GCELoss(Loss):
    """Generalised cross-entropy (1 - p^q) / q of the label's probability p (q = 0.5)."""

    name = "gce"
    Options = GCEOptions
    options: GCEOptions

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        q = self.options.q  # p^q = exp(-q CE): no 0^q (an infinite gradient) when p underflows
        return (1 - torch.exp(-q * per_pixel_loss(logits, labels))) / q


class MAELoss(Loss):
    """Mean absolute error between the class probabilities and the one-hot label: 2 (1 - p)."""

    name = "mae"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 2 * (1 - torch.exp(-per_pixel_loss(logits, labels)))  # p = exp(-CE)


class NRDiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(1.5, ge=1, le=2, description="exponent of |p - y|: 2 is the Dice loss's "
                                                      "numerator, 1 the mean absolute error's")
    eps: float = Field(1e-5, gt=0, description="added to the denominator")
    denominator: Literal["squares", "sums"] = Field(
        "squares", description="squares: sum p^2 + sum y^2 (the Dice loss of V-Net); sums: sum (p + y), "
        "as PyMIC's NoiseRobustDiceLoss computes it")


class NRDiceLoss(Loss):
    """Noise-robust Dice: sum |p - y|^gamma / (sum p^2 + sum y^2) per class over the batch (1.5)."""

    name = "nrdice"
    Options = NRDiceOptions
    options: NRDiceOptions

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each pixel's share of the batch's loss, mean over the classes present in the batch's
        labels (background included, as in the paper), scaled so that the map's mean is the
        batch's loss. The sums run over the batch's pixels, as PyMIC's NoiseRobustDiceLoss does.
        A class absent from the labels is left out: its term, sum p^gamma / sum p^2, would fall
        as the prediction of that class grows (per image, a class absent from one image would).
        ``denominator = sums`` is PyMIC's sum (p + y), with which gamma = 1 is the soft Dice loss.

        Shape:
            returns (N, H, W) ((N, D, H, W) for volumes)
        """
        probs = class_probs(logits)                                    # (N, K, H, W)
        onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
        over = (0, *range(2, probs.dim()))                             # batch and pixels
        present = onehot.sum(over) > 0                                 # (K,)
        p_sum = probs.square().sum(over) if self.options.denominator == "squares" else probs.sum(over)
        denominator = p_sum + onehot.sum(over) + self.options.eps      # y^2 = y; (K,)
        share = (probs - onehot).abs().pow(self.options.gamma)
        view = (1, -1, *(1,) * (probs.dim() - 2))
        terms = share / denominator.view(view) * present.view(view)
        return terms.sum(1) * (labels.numel() / present.sum())


@hookimpl
def register_losses() -> list[type[Loss]]:
    return [CELoss, GCELoss, MAELoss, NRDiceLoss, NWDiceLoss, TLoss, ConfusionLoss]
