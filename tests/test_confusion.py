"""The ``confusion`` loss: its map is the noisy-label likelihood through column-stochastic,
diagonally dominant confusion matrices plus the trace, and the matrices learn where labels flip."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest
import torch
from noisyseg_losses.confusion import ConfusionLoss

from noisyseg import run
from noisyseg.outputs import class_probs, per_pixel_loss
from noisyseg.testing import check_loss, cpu_run_context, random_masks, tiny_run_config


def _built(classes: int = 2, dims: int = 2, **options: object) -> ConfusionLoss:
    loss = ConfusionLoss(ConfusionLoss.Options.model_validate(options))
    context = cpu_run_context(classes)
    context.spatial_dims = dims
    loss.setup(context)
    return loss


@pytest.mark.parametrize("options", [{}, {"max_flip": 1.0, "trace_weight": 0.0}])
def test_passes_the_loss_check(options: dict) -> None:
    check_loss(ConfusionLoss, options)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_map_is_the_noisy_likelihood_plus_the_trace(classes: int) -> None:
    torch.manual_seed(0)
    loss = _built(classes, trace_weight=0.3)
    with torch.no_grad():  # matrices that differ from pixel to pixel and class to class
        for p in loss.parameters():
            p.normal_(0, 0.5)
    logits = torch.randn(2, 1 if classes == 2 else classes, 9, 9, dtype=torch.float64)
    labels = torch.from_numpy(random_masks(2, 9, classes, seed=3))
    a = loss.log_matrices(class_probs(logits).log()).exp().double()   # (N, K, K, H, W)
    assert torch.allclose(a.sum(1), torch.ones(()).double())          # columns are distributions
    diagonal = a.diagonal(dim1=1, dim2=2)
    assert (diagonal >= 0.5 - 1e-6).all()                             # max_flip 0.5
    assert (diagonal >= a.amax(1).movedim(1, -1) - 1e-6).all()        # dominant in its column
    noisy = torch.einsum("nickw,nckw->nikw", a, class_probs(logits))  # A p
    want = -noisy.gather(1, labels.unsqueeze(1)).squeeze(1).log() + 0.3 * diagonal.sum(-1)
    assert torch.allclose(loss(logits, labels), want, rtol=1e-5)


def test_starts_close_to_cross_entropy() -> None:
    torch.manual_seed(0)
    loss = _built(3, trace_weight=0.0, init_flip=1e-6)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    labels = torch.from_numpy(random_masks(2, 8, 3, seed=1))
    assert torch.allclose(loss(logits, labels), per_pixel_loss(logits, labels), rtol=1e-3, atol=1e-5)
    assert loss.metrics()["loss_cm_flip"] == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(loss.metrics()["loss_cm_flip"])   # reset: nothing seen since


def test_the_matrices_learn_a_band_of_flipped_labels_and_nothing_elsewhere() -> None:
    """Every image the same square, its true probabilities known; in 30% of the masks a 2-pixel
    band around it is labelled foreground. Fitted alone, the matrices put a flip rate of about
    0.3 on the band's background and none far from the square."""
    torch.manual_seed(0)
    truth = torch.zeros(20, 24, 24, dtype=torch.int64)
    truth[:, 8:16, 8:16] = 1
    labels = truth.clone()
    labels[:6, 6:18, 6:18] = 1                                       # 6 of 20 masks dilated
    logits = (8.0 * (2 * truth - 1)).float().unsqueeze(1)            # confident and right
    loss = _built(2, trace_weight=0.0)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        loss(logits, labels).mean().backward()
        optimizer.step()
    with torch.no_grad():
        flip_from_background = loss.log_matrices(class_probs(logits).log())[0, 1, 0].exp()
    band = torch.zeros(24, 24, dtype=torch.bool)
    band[6:18, 6:18] = True
    band[8:16, 8:16] = False
    assert float(flip_from_background[band].mean()) == pytest.approx(0.3, abs=0.05)
    assert flip_from_background[:3, :3].max() < 0.02


def test_matrices_that_explain_the_flips_pull_the_network_to_the_truth() -> None:
    """A pixel labelled foreground in 30% of the masks: plain cross-entropy pulls the network to
    p = 0.3; with matrices that already explain the flips, the pull is towards the true 0."""
    loss = _built(2, trace_weight=0.0)
    with torch.no_grad():  # bias channels [noisy i, true c] = i * K + c: column 0 flips 30%
        loss.parameters()[-1].copy_(torch.tensor([math.log(0.6 / 0.4), 0.0, 0.0, -20.0]))
    logit = torch.tensor([-1.0], requires_grad=True)                 # p(foreground) = 0.27
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]).view(10, 1, 1)
    value = loss(logit.view(1, 1, 1, 1).expand(10, 1, 1, 1), labels).mean()
    (pull,) = torch.autograd.grad(value, logit)
    assert pull > 0                                                   # gradient descent lowers p
    (ce_pull,) = torch.autograd.grad(per_pixel_loss(logit.view(1, 1, 1, 1).expand(10, 1, 1, 1),
                                                    labels).mean(), logit)
    assert ce_pull < 0                                                # CE raises it towards 0.3


def test_the_trace_pushes_the_matrices_from_the_identity() -> None:
    """With labels that agree with a confident network, only the trace moves the matrices: a
    step lowers the diagonal of the column of the class the network rules out, and the larger
    the weight, the further."""
    logits = torch.full((2, 1, 8, 8), -6.0)                           # sure: background
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    diagonals = []
    for weight in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        loss = _built(2, trace_weight=weight)
        optimizer = torch.optim.SGD(loss.parameters(), lr=1.0)
        loss(logits, labels).mean().backward()
        optimizer.step()
        a = loss.log_matrices(class_probs(logits).log()).exp()
        diagonals.append(float(a[:, 1, 1].mean()))                    # foreground's column
    assert diagonals[0] == pytest.approx(0.99, abs=1e-4)              # no trace: no pull
    assert diagonals[0] > diagonals[1] > diagonals[2]


def test_matrices_read_a_clipped_input_and_treat_borders_like_their_pixels() -> None:
    torch.manual_seed(0)
    loss = _built(2)
    with torch.no_grad():
        for p in loss.parameters():
            p.normal_(0, 0.5)
        sure = torch.tensor([0.0, -30.0]).view(1, 2, 1, 1).expand(1, 2, 9, 9)
        surer = torch.tensor([0.0, -60.0]).view(1, 2, 1, 1).expand(1, 2, 9, 9)
        a = loss.log_matrices(sure)
        assert torch.equal(a, loss.log_matrices(surer))       # below -10 is -10
        assert torch.allclose(a, a[..., 4:5, 4:5].expand_as(a), atol=1e-6)  # no zero border


def test_volumes_get_3d_convolutions_and_images_on_them_are_refused() -> None:
    loss = _built(3, dims=3)
    assert isinstance(loss.net[0], torch.nn.Conv3d)
    volume = torch.randn(2, 3, 5, 6, 6)
    got = loss(volume, torch.from_numpy(random_masks(2, 6, 3, seed=0, dims=3))[:, :5])
    assert got.shape == (2, 5, 6, 6) and torch.isfinite(got).all()
    with pytest.raises(ValueError, match="spatial_dims = 3"):
        loss(torch.randn(2, 3, 6, 6), torch.zeros(2, 6, 6, dtype=torch.int64))


def test_options_are_checked_when_read() -> None:
    with pytest.raises(pydantic.ValidationError, match="init_flip"):
        ConfusionLoss.Options(init_flip=0.6)
    with pytest.raises(pydantic.ValidationError):
        ConfusionLoss.Options(max_flip=0.0)


def test_a_run_trains_and_logs_the_flip_share_each_epoch(tmp_path: Path) -> None:
    result = run(tiny_run_config(loss={"name": "confusion"}, train={"epochs": 2},
                                 noise={"rate": 0.5}, output={"dir": str(tmp_path / "run")}),
                 progress=False)
    flips = [h["loss_cm_flip"] for h in result.history]
    assert len(flips) == 2 and all(0 < f <= 0.5 for f in flips)
    assert result.loss.net[-1].weight.abs().sum() > 0     # the run's optimiser trained it (from 0)
    assert math.isfinite(result.metrics["dice"])
