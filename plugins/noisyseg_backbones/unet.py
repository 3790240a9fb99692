"""``unet``: a small U-Net of our own (Ronneberger et al., MICCAI 2015), CPU-friendly by default.

Each level is two 3x3 conv + BatchNorm + ReLU; the encoder halves the size with max pooling, the
decoder upsamples bilinearly (twice-differentiable, which the meta reweighters need) to the size
of the skip connection, so any input size works. Under the run's ``deterministic`` setting on
CUDA the upsampling is done as two matrix products with the same interpolation weights: torch's
bilinear kernel has no deterministic CUDA backward, a matrix product has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from noisyseg import Backbone


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; as matrix products
    (deterministic backward) when deterministic algorithms are on and ``x`` is on CUDA."""
    if not (x.is_cuda and torch.are_deterministic_algorithms_enabled()):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    rows = _interpolation_matrix(size[0], x.shape[-2], x)
    cols = _interpolation_matrix(size[1], x.shape[-1], x)
    return rows @ x @ cols.T


#: interpolation matrices by (n_out, n_in, device, dtype): built once, not at every forward
_MATRICES: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}


def _interpolation_matrix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i holds the two weights of bilinear interpolation (align_corners=False,
    torch's convention: source = (i + 0.5) * n_in / n_out - 0.5, clamped at 0)."""
    key = (n_out, n_in, like.device, like.dtype)
    if key not in _MATRICES:
        # a plain constant, also when the first call comes under no_grad or inference_mode
        with torch.inference_mode(False), torch.no_grad():
            _MATRICES[key] = _build_matrix(n_out, n_in, like)
    return _MATRICES[key]


def _build_matrix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    source = ((torch.arange(n_out, device=like.device, dtype=torch.float64) + 0.5) * (n_in / n_out)
              - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = (source - low).unsqueeze(1)
    columns = torch.arange(n_in, device=like.device)  # one-hot by comparison: no host sync
    matrix = (1 - frac) * (columns == low[:, None]) + frac * (columns == high[:, None])
    return matrix.to(like.dtype)


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``base`` channels at full resolution.

    Shape:
        input - (N, in_channels, H, W); output - (N, out_channels, H, W)
    """

    def __init__(
        self, in_channels: int, out_channels: int, base: int = 16, depth: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w, dropout))
            cin = w
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i], dropout) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = upsample_bilinear(x, skip.shape[-2:])
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class UNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_channels: int = Field(16, ge=1, le=512, description="channels at full resolution")
    depth: int = Field(3, ge=1, le=7, description="number of poolings")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each block (0: none)")


class UNetBackbone(Backbone):
    """Our own U-Net: BatchNorm, bilinear upsampling, depth and width configurable."""

    name = "unet"
    Options = UNetOptions

    def build(self, in_channels: int, out_channels: int) -> nn.Module:
        o = self.options
        return UNet(in_channels, out_channels, o.base_channels, o.depth, o.dropout)
