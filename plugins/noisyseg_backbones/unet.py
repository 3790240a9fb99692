"""``unet``: a small U-Net of our own (Ronneberger et al., MICCAI 2015), CPU-friendly by default;
for volumes the 3-D U-Net of Cicek et al. (MICCAI 2016), the same network with 3-D layers.

Each level is two 3x3 (3x3x3) conv + BatchNorm + ReLU; the encoder halves the size with 2x2
(2x2x2) max pooling (an odd size loses its last row), the decoder upsamples bilinearly
(trilinearly; twice-differentiable, which the meta reweighters need) to the size of the skip
connection, so any input size works. Under the run's ``deterministic`` setting on CUDA, the ops
whose CUDA backward has no deterministic kernel are done another way with the same values:

- upsampling as matrix products with the interpolation weights, one matrix per spatial axis
  (two for images, three for volumes);
- 3-D max pooling (2-D max pooling is deterministic) as the maximum over each 2x2x2 window of a
  reshaped view. Where a window holds the maximum twice, its gradient is shared among them
  instead of going to one; in this network that changes nothing, because the pooled maps come
  out of a ReLU, whose tied values are zeros that pass no gradient back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from noisyseg import Backbone


def _matrix_form(x: torch.Tensor) -> bool:
    """Whether to avoid ops without a deterministic CUDA backward."""
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; as matrix products
    (deterministic backward) when deterministic algorithms are on and ``x`` is on CUDA.

    Shape:
        x - (N, C, H, W); returns (N, C, *size)
    """
    if not _matrix_form(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return _bilinear_matrices(x, size)


def upsample_trilinear(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)``; as matrix products
    along D, H and W (deterministic backward) when deterministic algorithms are on and ``x`` is
    on CUDA.

    Shape:
        x - (N, C, D, H, W); returns (N, C, *size)
    """
    if not _matrix_form(x):
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return _trilinear_matrices(x, size)


def max_pool3d(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool3d(x, 2)``; as the maximum over the windows of a reshaped view (deterministic
    backward, ties share the gradient) when deterministic algorithms are on and ``x`` is on CUDA.

    Shape:
        x - (N, C, D, H, W); returns (N, C, D // 2, H // 2, W // 2)
    """
    if not _matrix_form(x):
        return F.max_pool3d(x, 2)
    return _window_max3d(x)


def _bilinear_matrices(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows = _interpolation_matrix(size[0], x.shape[-2], x)
    cols = _interpolation_matrix(size[1], x.shape[-1], x)
    return rows @ x @ cols.T


def _trilinear_matrices(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear interpolation is separable: 1-D interpolation along W, H, then D."""
    y = _bilinear_matrices(x, (size[1], size[2]))  # (N, C, D, H', W')
    depth = _interpolation_matrix(size[0], x.shape[-3], x)
    n, c, d, h, w = y.shape
    return (depth @ y.reshape(n, c, d, h * w)).reshape(n, c, size[0], h, w)


def _window_max3d(x: torch.Tensor) -> torch.Tensor:
    n, c, d, h, w = x.shape
    d, h, w = d // 2, h // 2, w // 2
    windows = x[..., : 2 * d, : 2 * h, : 2 * w].reshape(n, c, d, 2, h, 2, w, 2)
    return windows.amax(dim=(3, 5, 7))


#: interpolation matrices by (n_out, n_in, device, dtype): built once, not at every forward
_MATRICES: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}


def _interpolation_matrix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i holds the two weights of linear interpolation along one axis (the
    factor of bilinear and trilinear interpolation for that axis; align_corners=False, torch's
    convention: source = (i + 0.5) * n_in / n_out - 0.5, clamped at 0)."""
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


_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d), 3: (nn.Conv3d, nn.BatchNorm3d, nn.Dropout3d)}


def _block(cin: int, cout: int, dropout: float, dims: int = 2) -> nn.Sequential:
    conv, norm, drop = _LAYERS[dims]
    layers: list[nn.Module] = [
        conv(cin, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(drop(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``base`` channels at full resolution; ``dims = 3``
    builds the 3-D U-Net (3-D convolutions, BatchNorm, pooling, trilinear upsampling).

    Shape:
        input - (N, in_channels, H, W), or (N, in_channels, D, H, W) with ``dims = 3``; output -
        (N, out_channels, H, W) or (N, out_channels, D, H, W)
    """

    def __init__(
        self, in_channels: int, out_channels: int, base: int = 16, depth: int = 3,
        dropout: float = 0.0, dims: int = 2,
    ) -> None:
        super().__init__()
        if dims not in _LAYERS:
            raise ValueError(f"UNet: dims must be 2 (images) or 3 (volumes), got {dims!r}")
        self.dims = dims
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w, dropout, dims))
            cin = w
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i], dropout, dims)
            for i in reversed(range(depth))
        )
        self.head = _LAYERS[dims][0](widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsample = upsample_bilinear if self.dims == 2 else upsample_trilinear
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2) if self.dims == 2 else max_pool3d(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = upsample(x, skip.shape[2:])
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class UNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_channels: int = Field(16, ge=1, le=512, description="channels at full resolution")
    depth: int = Field(3, ge=1, le=7, description="number of poolings")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each block (0: none)")


class UNetBackbone(Backbone):
    """Our own U-Net, 2-D or 3-D: BatchNorm, bilinear (trilinear) upsampling, depth and width
    configurable."""

    name = "unet"
    Options = UNetOptions
    spatial_dims = (2, 3)

    def build(self, in_channels: int, out_channels: int, dims: int = 2) -> nn.Module:
        o = self.options
        return UNet(in_channels, out_channels, o.base_channels, o.depth, o.dropout, dims)
