"""GCE as a reweighter: mean(p^q * CE) has exactly the gradient of mean((1 - p^q) / q)."""

from __future__ import annotations

import pytest
import torch
from noisyseg_gce import label_probability

from noisyseg import Registry, StepContext, build_plugin_manager
from noisyseg.outputs import per_pixel_loss


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("q", [0.5, 1.0])
def test_gce_weights_give_the_gce_gradient(channels: int, q: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, channels, 5, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, max(channels, 2), (2, 5, 5))
    gce = Registry(build_plugin_manager()).build("reweighter", "gce", {"q": q})
    loss_map = per_pixel_loss(logits, labels)
    ctx = StepContext(model=None, optimizer=None, images=None, labels=labels, logits=logits,
                      loss_map=loss_map, step=0, epoch=0)
    (got,) = torch.autograd.grad((gce.weigh(ctx) * loss_map).mean(), logits)
    reference = ((1 - label_probability(logits, labels) ** q) / q).mean()
    (want,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(got, want, atol=1e-12)
