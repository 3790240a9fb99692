"""``mwnet``: Meta-Weight-Net.

Reference: Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping For Sample Weighting",
NeurIPS 2019. An MLP 1 -> 100 -> 1 (ReLU, sigmoid) maps each loss value to a weight (Sec. 3,
Eq. 2), learned through the same virtual/meta step as MCPM (Eqs. 4-6), see
:class:`noisyseg.reweighting.weighting_net.MetaNetReweighter`. Per pixel (default) each pixel's loss is mapped
alone — no spatial context, the difference MCPM exploits; per image the image's mean loss is.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from noisyseg import Reweighter, hookimpl
from noisyseg.reweighting.weighting_net import MetaNetOptions, MetaNetReweighter

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class WeightMLP(nn.Module):
    """MLP 1 -> hidden -> 1 applied to every value independently (as 1x1 convolutions, 1x1x1
    with ``dims = 3``); per image, to each image's mean loss.

    Shape:
        input - (N, 1, H, W) loss map, or (N, 1, D, H, W) with ``dims = 3``; output - the same
        shape per pixel, (N, 1, 1, 1) (or (N, 1, 1, 1, 1)) per image, logits
    """

    def __init__(self, hidden: int = 100, init_bias: float = 0.0, per: str = "pixel",
                 dims: int = 2) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"WeightMLP: dims must be 2 (images) or 3 (volumes), got {dims!r}")
        self.per = per
        conv = _CONV[dims]
        self.net = nn.Sequential(conv(1, hidden, 1), nn.ReLU(), conv(hidden, 1, 1))
        nn.init.constant_(self.net[2].bias, init_bias)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        if self.per == "image":
            loss = loss.mean(dim=tuple(range(2, loss.ndim)), keepdim=True)
        return self.net(loss)


class MWNetOptions(MetaNetOptions):
    hidden: int = Field(100, ge=1, description="hidden units of the MLP")
    normalize: bool = Field(
        False, description="scale the weights to mean 1 per batch (off by default for mwnet: "
        "measured worse, see docs/methods.md)")
    per: Literal["pixel", "image"] = Field("pixel", description="weigh each pixel or each image")


class MWNetReweighter(MetaNetReweighter):
    """Meta-Weight-Net: an MLP from each loss value to its weight, learned via a meta step."""

    name = "mwnet"
    Options = MWNetOptions
    options: MWNetOptions

    def build_net(self) -> nn.Module:
        o = self.options
        return WeightMLP(o.hidden, o.init_bias, o.per, self.run.spatial_dims)


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [MWNetReweighter]
