"""The machinery the meta reweighters share (MCPM, MW-Net, L2RW; the methods themselves are
plugins):

- :mod:`noisyseg.reweighting.virtual_step`: the differentiable virtual step W' = W - alpha *
  grad_W mean(R * L) and the meta-gradient of the clean meta loss through it (``higher`` or
  the one-jvp path);
- :mod:`noisyseg.reweighting.weighting_net`: a reweighter that learns a weighting network
  G(loss map) on the meta set through that step (MCPM's mask net, MW-Net's MLP).
"""

from noisyseg.reweighting.virtual_step import SecondOrderError, meta_gradient, meta_pixel_gradient
from noisyseg.reweighting.weighting_net import MetaNetOptions, MetaNetReweighter

__all__ = ["MetaNetOptions", "MetaNetReweighter", "SecondOrderError", "meta_gradient",
           "meta_pixel_gradient"]
