"""Co-teaching with fixed networks: the exact small-loss pixels are chosen, crosswise."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from noisyseg_coteaching import forget_rate, small_loss_mask
from torch import nn

from noisyseg import ConfigError, Registry, StepContext
from noisyseg.outputs import per_pixel_loss
from noisyseg.testing import cpu_run_context


class FixedLogits(nn.Module):
    """Ignores its input and returns learnable logits of a fixed batch (N, 1, H, W)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_forget_rate_schedule() -> None:
    assert [forget_rate(e, 0.4, 5) for e in range(8)] == pytest.approx(
        [0.0, 0.08, 0.16, 0.24, 0.32, 0.4, 0.4, 0.4]
    )
    assert forget_rate(0, 0.3, 0) == 0.3


def test_small_loss_mask_keeps_exactly_the_smallest() -> None:
    loss = torch.tensor([[[5.0, 1.0], [3.0, 0.5]], [[2.0, 9.0], [0.1, 4.0]]])
    assert small_loss_mask(loss, 0.5).tolist() == [
        [[False, True], [False, True]], [[True, False], [True, False]]
    ]
    assert small_loss_mask(loss, 0.5, per_image=True).tolist() == [
        [[False, True], [False, True]], [[True, False], [True, False]]
    ]
    assert small_loss_mask(loss, 0.25, per_image=True).tolist() == [
        [[False, False], [False, True]], [[False, False], [True, False]]
    ]
    assert small_loss_mask(loss, 0.0).sum() == 1  # never an empty selection


@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_each_network_learns_from_the_pixels_the_other_kept(registry: Registry, epoch: int) -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (2, 4, 5))
    main_logits, peer_logits = torch.randn(2, 1, 4, 5), torch.randn(2, 1, 4, 5)
    main = FixedLogits(main_logits)
    run = dataclasses.replace(cpu_run_context(2), build_model=lambda: FixedLogits(peer_logits))
    cot = registry.build("reweighter", "coteaching", {"tau": 0.5, "num_gradual": 2})
    cot.setup(run)
    keep = 1 - forget_rate(epoch, 0.5, 2)
    k = round(keep * labels.numel())

    logits = main(None)
    ctx = StepContext(model=main, optimizer=torch.optim.SGD(main.parameters(), lr=0.1), images=labels,
                      labels=labels, logits=logits, loss_map=per_pixel_loss(logits, labels),
                      step=0, epoch=epoch)
    weights = cot.weigh(ctx)

    peer_loss = per_pixel_loss(peer_logits, labels).flatten()
    main_loss = per_pixel_loss(main_logits, labels).flatten()
    kept_by_peer = torch.zeros(labels.numel(), dtype=torch.bool)
    kept_by_peer[peer_loss.argsort()[:k]] = True
    kept_by_main = torch.zeros(labels.numel(), dtype=torch.bool)
    kept_by_main[main_loss.argsort()[:k]] = True
    assert torch.equal(weights.flatten() > 0, kept_by_peer)
    assert weights.flatten()[kept_by_peer] == pytest.approx(torch.full((k,), labels.numel() / k))
    assert (weights * ctx.loss_map).mean().item() == pytest.approx(main_loss[kept_by_peer].mean().item())
    grad = cot.peer.logits.grad.flatten()
    assert torch.equal(grad != 0, kept_by_main), "the peer learns only from the main network's choice"


def test_peer_follows_the_main_learning_rate_and_its_state_round_trips(registry: Registry) -> None:
    torch.manual_seed(0)
    cot = registry.build("reweighter", "coteaching", {})
    cot.setup(cpu_run_context(2))
    assert cot.tau == 0.1, "tau defaults to the fraction of pixels the noise changed"
    model = nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.123)
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    logits = model(x)
    cot.weigh(StepContext(model=model, optimizer=optimizer, images=x, labels=y, logits=logits,
                          loss_map=per_pixel_loss(logits, y), step=0, epoch=2))
    assert cot.peer_optimizer.param_groups[0]["lr"] == 0.123
    fresh = registry.build("reweighter", "coteaching", {})
    fresh.setup(cpu_run_context(2))
    fresh.load_state_dict(cot.state_dict())
    for a, b in zip(fresh.peer.state_dict().values(), cot.peer.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_tau_must_be_given_when_no_noise_is_configured(registry: Registry) -> None:
    cot = registry.build("reweighter", "coteaching", {})
    with pytest.raises(ConfigError, match="set reweighter.options.tau"):
        cot.setup(dataclasses.replace(cpu_run_context(2), noise_rate=0.0, pixel_noise_rate=0.0))
    cot = registry.build("reweighter", "coteaching", {"tau": 0.1})
    cot.setup(dataclasses.replace(cpu_run_context(2), noise_rate=0.0, pixel_noise_rate=0.0))
    assert cot.tau == 0.1
