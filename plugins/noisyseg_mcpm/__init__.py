"""``mcpm``: Meta Corrupted Pixels Mining.

Reference: Wang, Zhou, et al., "Meta Corrupted Pixels Mining for Medical Image Segmentation",
MICCAI 2020. A meta mask network G reads the per-pixel loss map L and gives every pixel a weight
R = G(L; Theta) (Sec. 3.2); Theta is learned on a clean meta set through a virtual step of the
segmentation network (Eqs. 3-4) and the real step uses the updated weights (Eq. 5). The iteration
itself is :class:`noisyseg.reweighting.weighting_net.MetaNetReweighter`.

Our default differs from the paper's meta step at every iteration: ``interval_max = 10`` lets the
interval grow from 1 to 10 over the run (about a quarter of the steps take a meta step, 1.83
plain steps per step instead of 4.00 on the 2-core CPU), chosen because Dice and detection stayed within
the exact method's seed spread at r = 0.4 and 0.8 (docs/history.md). ``interval_max = null``
is the paper's schedule.

A run pairs mcpm with the ``relabel`` corrector unless its config names a corrector: the pixels
the mask net keeps down-weighting take the network's confident prediction (chosen on the meta
images' validation share; docs/methods/mcpm.md). ``corrector.name = none``: the mask net alone
(Eqs. 3-5).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from noisyseg import Reweighter, hookimpl
from noisyseg.reweighting.weighting_net import MetaNetOptions, MetaNetReweighter

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class MaskNet(nn.Module):
    """Meta mask network (Sec. 3.2): parallel 3x3 and 5x5 conv branches on the loss map, their
    outputs concatenated with the input and fused by a 1x1 conv into one logit per pixel. With
    ``dims = 3`` (volumes) the same with 3x3x3, 5x5x5 and 1x1x1 convolutions.

    Shape:
        input - (N, 1, H, W) loss map, or (N, 1, D, H, W) with ``dims = 3``; output - the same
        shape, logits (sigmoid gives R)
    """

    def __init__(self, width3: int = 16, width5: int = 16, activation: str = "relu",
                 init_bias: float = 0.0, dims: int = 2, in_channels: int = 1,
                 monotone: bool = False) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"MaskNet: dims must be 2 (images) or 3 (volumes), got {dims!r}")
        conv = _CONV[dims]
        self.branch3 = conv(in_channels, width3, 3, padding=1)
        self.branch5 = conv(in_channels, width5, 5, padding=2)
        self.fuse = conv(width3 + width5 + in_channels, 1, 1)
        nn.init.constant_(self.fuse.bias, init_bias)
        self.activation = activation
        #: the output never rises with the loss of any pixel it reads (see :meth:`forward`)
        self.monotone = monotone
        self._conv = F.conv2d if dims == 2 else F.conv3d

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        """With ``monotone`` the loss channel (the first) enters the branches through weights
        >= 0 (their absolute values) and the fuse through weights <= 0, and both activations
        are non-decreasing: the logit is non-increasing in every pixel's loss, so the net can
        learn how fast a high loss lowers the weight and over which neighbourhood, but never a
        weight that rises with the loss (the flipped solutions a meta step can fall into)."""
        if not self.monotone:
            a, b = self.branch3(loss), self.branch5(loss)
            if self.activation == "relu":
                a, b = F.relu(a), F.relu(b)
            return self.fuse(torch.cat([a, b, loss], dim=1))
        a, b = (self._conv(loss, _signed(m.weight, 1), m.bias, padding=m.padding)
                for m in (self.branch3, self.branch5))
        if self.activation == "relu":
            a, b = F.relu(a), F.relu(b)
        fuse = -_signed(self.fuse.weight, self.branch3.out_channels + self.branch5.out_channels + 1)
        return self._conv(torch.cat([a, b, loss], dim=1), fuse, self.fuse.bias)


def _signed(weight: torch.Tensor, first: int) -> torch.Tensor:
    """``weight`` with its first ``first`` input channels made >= 0 (absolute values); the other
    input channels (the label map of ``inputs = loss_label``) keep their sign."""
    return torch.cat([weight[:, :first].abs(), weight[:, first:]], dim=1)


class MCPMOptions(MetaNetOptions):
    width3: int = Field(16, ge=1, description="channels of the 3x3 branch")
    width5: int = Field(16, ge=1, description="channels of the 5x5 branch")
    activation: str = Field("relu", pattern="^(relu|none)$", description="after each branch")
    meta_lr: float = Field(
        1e-2, gt=0, description="Adam learning rate (beta) of the mask net; 0.01 chosen on the meta "
        "images' validation share (benchmarks/mcpm_sweep.py), where the paper's 0.001 barely moved "
        "the weights in 20 epochs")
    inputs: Literal["loss", "loss_label"] = Field(
        "loss", description="what the mask net reads: the loss map (the paper), or the loss map "
        "and the label map one-hot (it can then tell a high loss on a foreground label from one on "
        "background)")
    monotone: bool = Field(
        False, description="the weight can only fall as the loss rises (the mask net's loss "
        "weights are kept >= 0 into its branches and <= 0 into its output); false: any function "
        "of the loss map, as in the paper")
    interval_max: int | None = Field(
        10, ge=1, description="adaptive interval: it grows linearly from `interval` at the first "
        "step to this at the last (a meta step at about a quarter of the steps with 1 -> 10); "
        "null: a meta step every `interval` steps. Setting `interval` alone makes it fixed")

    @model_validator(mode="before")
    @classmethod
    def _fixed_when_interval_is_given(cls, data: Any) -> Any:
        """``interval = k`` alone asks for a fixed interval, not the adaptive default."""
        if isinstance(data, dict) and "interval" in data and "interval_max" not in data:
            return {**data, "interval_max": None}
        return data


class MCPMReweighter(MetaNetReweighter):
    """Meta Corrupted Pixels Mining: a conv mask net on the loss map, learned via a meta step."""

    name = "mcpm"
    Options = MCPMOptions
    options: MCPMOptions
    #: the meta images are training images too (train.train_on_meta = false keeps them out): on
    #: the validation share this beat keeping them for the meta step alone
    trains_on_meta = True
    #: corrector "auto" (the default) relabels what it keeps down-weighting: on the validation
    #: share this beat mcpm alone (docs/methods/mcpm.md); corrector.name=none turns it off
    default_corrector = "relabel"

    def build_net(self) -> nn.Module:
        o = self.options
        channels = 1 + (self.run.num_classes if o.inputs == "loss_label" else 0)
        return MaskNet(o.width3, o.width5, o.activation, o.init_bias, self.run.spatial_dims, channels,
                       o.monotone)

    def net_input(self, loss_map: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss map, and with ``inputs = loss_label`` the labels one-hot after it.

        Shape:
            loss_map, labels - (N, H, W) or (N, D, H, W); returns (N, 1 [+ K], ...)
        """
        loss = loss_map.detach().unsqueeze(1)
        if self.options.inputs == "loss":
            return loss
        if labels is None:
            raise ValueError("mcpm with inputs = loss_label needs the labels")
        one_hot = F.one_hot(labels.long(), self.run.num_classes).movedim(-1, 1).to(loss.dtype)
        return torch.cat([loss, one_hot], dim=1)


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [MCPMReweighter]
