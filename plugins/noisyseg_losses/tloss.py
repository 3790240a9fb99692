"""``tloss``: the T-Loss (Gonzalez-Jimenez et al., "Robust T-Loss for Medical Image Segmentation",
MICCAI 2023).

Per image, the residual delta = p - y between the predicted probabilities and the one-hot label
(the foreground channel alone for a two-class task, as in the paper) is scored by the negative
log-likelihood of a multivariate Student-t with identity scale and nu degrees of freedom, D values:

    T = -lgamma((nu + D) / 2) + lgamma(nu / 2) + D/2 log(pi nu) + (nu + D)/2 log(1 + |delta|^2 / nu)

nu is learned with the network (log nu is the parameter, as in the authors' code, which starts it at
log nu = 1). Small nu bounds the pull of large residuals, the wrongly labelled pixels; large nu
tends to the squared error.

Choices where the paper leaves room, tested in tests/test_losses.py:
- the loss is divided by D, so its scale is a per-value mean like the other losses' (with Adam,
  the paper's optimiser, the factor changes nothing);
- the map's gradient is exactly T / D's, in delta and in nu: pixel i carries c delta_i^2 / (2 K)
  with c = (nu + D) / (nu + |delta|^2) held constant (T is the squared error with a per-image
  weight c that falls as the image's residual grows), and nu's terms ride along with value 0;
- the map's values are the squared residuals delta_i^2 / (2 K), not T's per-pixel share: T's
  constants (the lgamma terms) make its values meaningless per pixel, and reweighters that read
  loss values (co-teaching's small-loss ranking, MWNet's and MCPM's weighting nets) need values
  that compare across images. The logged training loss is therefore the halved mean squared
  residual, and the learned nu is logged as ``loss_nu``.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from noisyseg import Loss, RunContext
from noisyseg.outputs import class_probs


class TLossOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nu: float = Field(math.e, gt=0, description="starting degrees of freedom (the authors' code "
                                                "starts log nu at 1)")
    learn_nu: bool = Field(True, description="learn nu with the network (false: keep it fixed)")
    eps: float = Field(1e-8, gt=0, description="added to nu")


class TLoss(Loss):
    """T-Loss: Student-t likelihood of the per-image residual, with a learned nu."""

    name = "tloss"
    Options = TLossOptions
    options: TLossOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.log_nu = nn.Parameter(torch.tensor(math.log(self.options.nu)),
                                   requires_grad=self.options.learn_nu)

    def setup(self, run: RunContext) -> None:
        self.log_nu = nn.Parameter(self.log_nu.detach().to(run.device),
                                   requires_grad=self.options.learn_nu)

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_nu] if self.options.learn_nu else []

    @property
    def nu(self) -> float:
        return float(self.log_nu.detach().exp()) + self.options.eps

    def metrics(self) -> dict[str, float]:
        return {"loss_nu": self.nu}

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shape: logits (N, K, H, W), labels (N, H, W); returns (N, H, W)."""
        probs = class_probs(logits)
        onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
        delta = (probs - onehot)[:, 1:] if probs.shape[1] == 2 else probs - onehot
        k = delta.shape[1]
        squared = delta.square().sum(1)                                # (N, H, W)
        d = float(squared[0].numel() * k)                              # D values per image
        nu = self.log_nu.to(logits.dtype).exp() + self.options.eps
        total = squared.detach().flatten(1).sum(1)                     # |delta|^2 per image (N,)
        image_loss = (-torch.lgamma((nu + d) / 2) + torch.lgamma(nu / 2)
                      + d / 2 * torch.log(math.pi * nu)
                      + (nu + d) / 2 * torch.log1p(total / nu))        # T, gradient in nu only
        c = ((nu + d) / (nu + total)).detach().view(-1, *(1,) * (squared.dim() - 1))
        pull = c * squared / (2 * k)                                   # T's gradient in delta
        in_nu = (image_loss / d).view(c.shape)                         # T's gradient in nu
        return (squared.detach() / (2 * k)                             # the values: residuals
                + (pull - pull.detach()) + (in_nu - in_nu.detach()))
