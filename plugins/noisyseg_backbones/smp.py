"""``smp``: any segmentation-models-pytorch architecture with any encoder it supports, timm's
``tu-*`` encoders included. Weights are never downloaded unless ``encoder_weights`` is set.

Reference: Iakubovskii, segmentation_models.pytorch, https://github.com/qubvel-org/segmentation_models.pytorch
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from noisyseg import Backbone, ConfigError


class PadToMultiple(nn.Module):
    """Pads the input to a multiple of ``multiple`` (reflect) and crops the output back.

    Shape:
        input - (N, C, H, W); output - (N, K, H, W)
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return self.net(x)[..., :h, :w]


class SMPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str = Field("Unet", description="Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, ...")
    encoder_name: str = Field("resnet18", description="an smp encoder or a timm one as tu-<name>")
    encoder_weights: str | None = Field(None, description="e.g. imagenet (downloads!); default none")
    encoder_depth: int = Field(5, ge=1, le=5, description="encoder stages used (fewer: a smaller network)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="more arguments for the arch")


class SMPBackbone(Backbone):
    """segmentation-models-pytorch: any architecture x any encoder (timm tu-* included)."""

    name = "smp"
    Options = SMPOptions

    def build(self, in_channels: int, out_channels: int) -> nn.Module:
        import segmentation_models_pytorch as smp  # heavy: import only when used

        o = self.options
        known = getattr(smp, "_MODEL_ARCHITECTURES", None) or []  # absent in old smp releases
        archs = {cls.__name__.lower(): cls.__name__ for cls in known}
        if archs and o.arch.lower() not in archs:
            raise ConfigError(
                f"unknown smp architecture '{o.arch}'; choose one of: {', '.join(sorted(archs.values()))}"
            )
        try:
            net = smp.create_model(
                archs.get(o.arch.lower(), o.arch), encoder_name=o.encoder_name,
                encoder_weights=o.encoder_weights, encoder_depth=o.encoder_depth,
                in_channels=in_channels, classes=out_channels, **o.kwargs,
            )
        except (KeyError, ValueError, TypeError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise ConfigError(f"smp cannot build {o.arch} with encoder '{o.encoder_name}': {msg}") from None
        return PadToMultiple(net, 2**o.encoder_depth)
