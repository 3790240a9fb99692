"""Built-in backbones: our ``unet`` and segmentation-models-pytorch's architectures (``smp``)."""

from __future__ import annotations

from noisyseg import Backbone, hookimpl
from noisyseg_backbones.smp import SMPBackbone
from noisyseg_backbones.unet import UNetBackbone


@hookimpl
def register_backbones() -> list[type[Backbone]]:
    return [UNetBackbone, SMPBackbone]
