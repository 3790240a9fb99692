"""``nwdice``: a noise-weighted Dice loss.

Reference: Wang, Guo, Wang & Zhang, "Annotation-Efficient Learning for Medical Image Segmentation
based on Noisy Pseudo Labels and Adversarial Learning", IEEE TMI 2021 (arXiv 2012.14584): its
noise-robust iterative learning trains on noisy pseudo labels with a *noise-weighted Dice loss*, a
Dice loss whose pixels are weighted by an estimate of their label noise. The paper's own noise
estimate and formula were out of reach when this was written; what follows is this plugin's.

Noise estimate (:func:`label_noise`): the network's own disagreement with the label, detached,

    eta_i = (1/2) sum_c |p_ic - y_ic| = 1 - p_{i, y_i}

(the total-variation distance between the predicted distribution and the one-hot label), and the
pixel weight w_i = (1 - eta_i)^power = p_{i, y_i}^power, held constant in the gradient.

Loss (:meth:`NWDiceLoss.__call__`): the weighted soft Dice loss over the batch, per class c among
the classes present in the batch's labels (background included), then their mean:

    L = mean_c  1 - (2 sum_i w_i p_ic y_ic + eps) / (sum_i w_i (p_ic + y_ic) + eps)

which for a one-hot y is  mean_c  sum_i w_i |p_ic - y_ic| / (sum_i w_i (p_ic + y_ic) + eps): each
pixel's share of that numerator (scaled so that the map's mean is L) is its map value. With all
weights 1 it is PyMIC's ``DiceLoss`` (and ``nrdice`` with gamma = 1 and ``denominator = sums``); with
pixel weights it is PyMIC's ``DiceLoss`` given the same ``pixel_weight`` (tests/test_losses.py
checks both to 1e-6 when PyMIC is installed). Because Dice is a ratio, weights that are equal
over a class change nothing: only the *relative* weight of a pixel within its class counts, so a
confidently contradicted pixel stops pulling while a class the network gets wrong everywhere
still costs 1.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import Loss
from noisyseg.outputs import class_probs


class NWDiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: float = Field(1.0, ge=0, description="pixel weight (1 - noise)^power; 0: the plain soft "
                                                "Dice loss")
    eps: float = Field(1e-5, gt=0, description="added to the Dice's numerator and denominator")


def label_noise(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """The noise estimate eta = (1/2) sum_c |p_c - y_c| = 1 - p_y of each pixel, detached.

    Shape:
        probs, onehot - (N, K, H, W) (or (N, K, D, H, W)); returns (N, H, W) in [0, 1]
    """
    return (0.5 * (probs.detach() - onehot).abs().sum(1)).clamp(0.0, 1.0)


class NWDiceLoss(Loss):
    """Noise-weighted Dice: soft Dice with pixel weights (1 - noise)^power, noise = 1 - p_label."""

    name = "nwdice"
    Options = NWDiceOptions
    options: NWDiceOptions

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each pixel's share of the batch's noise-weighted Dice loss, scaled so that the map's mean
        is the loss; the sums run over the batch's pixels, the mean over the classes present in its
        labels (a class absent from the batch is left out, as in ``nrdice``).

        Shape:
            logits - (N, K, H, W) (K = 1 for a binary net), labels - (N, H, W); returns (N, H, W)
            ((N, D, H, W) for volumes)
        """
        probs = class_probs(logits)                                    # (N, K, H, W)
        onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
        weight = (1.0 - label_noise(probs, onehot)).pow(self.options.power).unsqueeze(1)
        over = (0, *range(2, probs.dim()))                             # batch and pixels
        present = onehot.sum(over) > 0                                 # (K,)
        denominator = (weight * (probs + onehot)).sum(over) + self.options.eps   # (K,)
        share = weight * (probs - onehot).abs()                        # = w (p + y - 2 p y)
        view = (1, -1, *(1,) * (probs.dim() - 2))
        terms = share / denominator.view(view) * present.view(view)
        return terms.sum(1) * (labels.numel() / present.sum())
