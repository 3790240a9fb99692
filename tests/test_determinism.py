"""The ``deterministic`` setting: CUDA runs repeatable bit for bit, settings put back after."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from noisyseg_backbones.unet import UNet, _interpolation_matrix, upsample_bilinear

import noisyseg
from noisyseg.determinism import determinism
from noisyseg.rundir import TIMINGS
from noisyseg.testing import tiny_run_config


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (16, 16)), ((7, 5), (15, 11)),
                                                   ((3, 6), (7, 13)), ((4, 4), (4, 4))])
def test_the_matrix_form_is_torchs_bilinear_interpolation(size_in: tuple[int, int],
                                                          size_out: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    rows, cols = (_interpolation_matrix(o, i, x) for o, i in zip(size_out, size_in, strict=True))
    ours = rows @ x @ cols.T
    theirs = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    g = torch.randn_like(theirs)
    assert torch.allclose(*(torch.autograd.grad(y, x, g)[0] for y in (ours, theirs)), atol=1e-12)


def test_on_the_cpu_the_setting_changes_nothing() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with determinism(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() == before
    assert noisyseg.Config().deterministic is True


@pytest.mark.cuda
def test_cuda_unet_gradients_are_bit_identical_and_settings_are_put_back() -> None:
    from torch.backends import cudnn

    device = torch.device("cuda")
    x = torch.randn(8, 1, 37, 45, device=device)
    with determinism(True, device):
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            net = UNet(1, 2, base=8, depth=3).to(device)
            net(x).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert torch.equal(*grads)
        y = torch.randn(2, 3, 5, 7, device=device)
        assert torch.allclose(upsample_bilinear(y, (10, 14)),
                              F.interpolate(y, size=(10, 14), mode="bilinear"), atol=1e-6)
    assert not torch.are_deterministic_algorithms_enabled()
    with determinism(False, device):
        assert cudnn.benchmark and not cudnn.deterministic
    assert not cudnn.benchmark


@pytest.mark.cuda
def test_cuda_runs_repeat_bit_for_bit_and_the_fast_setting_runs(tmp_path: Path) -> None:
    config = tiny_run_config(device="cuda", reweighter={"name": "mcpm"}, train={"epochs": 2})
    a, b = (noisyseg.run(config, output={"dir": str(tmp_path / n)}, progress=False) for n in "ab")

    def timeless(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in TIMINGS}

    assert [timeless(h) for h in a.history] == [timeless(h) for h in b.history]
    assert timeless(a.metrics) == timeless(b.metrics)
    fast = noisyseg.run(config, deterministic=False, output={"dir": str(tmp_path / "f")},
                        progress=False)
    assert 0 <= fast.metrics["dice"] <= 1 and len(fast.history) == 2
