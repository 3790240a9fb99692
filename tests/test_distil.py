"""Distil (Shi & Wu, MICCAI 2021): the weights, the pseudo-label gradient and the bounded image
weights, exactly on a hand-built step; the weights favour the clean pixels of a noisy run; the
processes stay in step; volumes."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from noisyseg_distil import image_weights, noise_estimate, pixel_loss, rampup, uncertainty, update_teacher
from torch import nn

from noisyseg import Registry, StepContext, run
from noisyseg.outputs import class_probs, per_pixel_loss
from noisyseg.testing import cpu_run_context, random_masks, tiny_run_config


def test_image_weights_sum_to_one_and_stay_within_e_to_the_2_lambda() -> None:
    scores = torch.tensor([-50.0, -1.0, 0.0, 3.0, 50.0])
    for lam in (0.5, 1.0, 2.0):
        q = image_weights(scores, lam)
        assert q.sum().item() == pytest.approx(1.0)
        assert (q.max() / q.min()).item() <= math.exp(2 * lam) * (1 + 1e-6)
        assert (q.max() / q.min()).item() == pytest.approx(math.exp(2 * lam), rel=1e-3)  # reached


def test_uncertainty_is_normalised_entropy_and_the_ramp_rises_to_one() -> None:
    for k in (2, 3):
        uniform = torch.full((1, k, 2, 2), 1.0 / k)
        sure = torch.zeros(1, k, 2, 2)
        sure[:, 0] = 1.0
        assert torch.allclose(uncertainty(uniform), torch.ones(1, 2, 2))
        assert torch.allclose(uncertainty(sure), torch.zeros(1, 2, 2))
    assert rampup(0.0, 3.0) == pytest.approx(math.exp(-5)) and rampup(3.0, 3.0) == 1.0
    assert rampup(0.0, 0.0) == 1.0 and rampup(1.0, 3.0) < rampup(2.0, 3.0) < 1.0


def test_the_noise_estimates() -> None:
    """entropy: high wherever the teacher is unsure; mutual_info: only where its passes disagree
    (0 when they agree, however unsure); disagreement: its probability that the label is wrong."""
    unsure = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    sure_0, sure_1 = torch.tensor([0.99, 0.01]).view(1, 2, 1, 1), torch.tensor([0.01, 0.99]).view(1, 2, 1, 1)
    label_0 = torch.zeros(1, 1, 1, dtype=torch.long)
    agree = [unsure, unsure]
    assert noise_estimate("entropy", agree, unsure, label_0).item() == pytest.approx(1.0)
    assert noise_estimate("mutual_info", agree, unsure, label_0).item() == pytest.approx(0.0, abs=1e-6)
    split = [sure_0, sure_1]
    mean = (sure_0 + sure_1) / 2
    assert noise_estimate("mutual_info", split, mean, label_0).item() > 0.9
    assert noise_estimate("disagreement", [sure_1], sure_1, label_0).item() == pytest.approx(0.99)
    assert noise_estimate("disagreement", [sure_0], sure_0, label_0).item() == pytest.approx(0.01)


def test_the_teacher_is_a_moving_average_of_the_student() -> None:
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    update_teacher(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    update_teacher(teacher, student, 0.75)
    for t, b in zip(teacher.parameters(), before, strict=True):
        assert torch.allclose(t, b + 0.25)


def _step(registry: Registry, options: dict, seed: int = 0) -> tuple:
    """A distil reweighter and a step context on a tiny BatchNorm net, teacher = the student."""
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, 1, 3, padding=1))
    run_context = dataclasses.replace(cpu_run_context(2), build_model=lambda: copy.deepcopy(student))
    reweighter = registry.build("reweighter", "distil", options)
    reweighter.setup(run_context)
    x = torch.randn(4, 1, 12, 12)
    y = torch.from_numpy(random_masks(4, 12, 2, seed=seed))
    logits = student(x)
    ctx = StepContext(model=student, optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
                      images=x, labels=y, logits=logits, loss_map=per_pixel_loss(logits, y),
                      step=0, epoch=0)
    return reweighter, student, ctx


@pytest.mark.parametrize("image_level", [True, False])
def test_the_step_has_the_gradient_of_the_written_out_objective(registry: Registry,
                                                                image_level: bool) -> None:
    """weights * L(y) through the loop, plus the hook's pseudo-label term, is exactly
    mean(q (1 - u) L(y) + u L(y^)) with the teacher's u and y^ (at the first step the teacher is
    the student, one pass without input noise: its probabilities are the student's own)."""
    options = {"passes": 1, "input_noise": 0.0, "rampup_epochs": 0, "image_weights": image_level,
               "estimate": "entropy"}
    reweighter, student, ctx = _step(registry, options)
    probs = class_probs(ctx.logits.detach())
    u, pseudo = uncertainty(probs), probs.argmax(1)
    assert 0.05 < u.mean() < 0.999
    if image_level:
        reweighter._build_quality(1)
        frozen = copy.deepcopy(reweighter.quality)
        onehot = nn.functional.one_hot(ctx.labels, 2).movedim(-1, 1).float()
        q = image_weights(frozen(torch.cat([ctx.images, onehot], 1)), 1.0).detach() * 4
    else:
        q = torch.ones(4)
    weights = reweighter.weigh(ctx)
    assert torch.allclose(weights, q.view(-1, 1, 1) * (1 - u), atol=1e-6)
    student.zero_grad()
    (weights.detach() * ctx.loss_map).mean().backward()          # what the loop does
    got = [p.grad.clone() for p in student.parameters()]

    logits = student(ctx.images)                                 # the same forward, written out
    want_loss = pixel_loss(per_pixel_loss(logits, ctx.labels), per_pixel_loss(logits, pseudo), u, q, 1.0)
    want = torch.autograd.grad(want_loss.mean(), list(student.parameters()))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-6)
    if image_level:  # the quality net took one Adam step on sum q_n L_n
        assert not all(torch.equal(a, b) for a, b in zip(frozen.parameters(),
                                                          reweighter.quality.parameters(), strict=True))


def test_without_pseudo_labels_no_gradient_is_added(registry: Registry) -> None:
    reweighter, student, ctx = _step(registry, {"pseudo": False, "image_weights": False,
                                               "rampup_epochs": 0})
    weights = reweighter.weigh(ctx)
    student.zero_grad()
    (weights.detach() * ctx.loss_map).mean().backward()
    got = [p.grad.clone() for p in student.parameters()]
    want = torch.autograd.grad((weights.detach() * per_pixel_loss(student(ctx.images), ctx.labels)).mean(),
                               list(student.parameters()))
    assert all(torch.allclose(g, w, atol=1e-7) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("image_level", [False, True])
def test_weights_favour_the_clean_pixels_of_a_noisy_run(tmp_path: Path, image_level: bool) -> None:
    """Half the masks dilated: the corrupted pixels weigh less than the clean ones on average, and
    the weights rank them better than chance (AUROC of 1 - w). With the image weights in every
    epoch of two; by the pixel-wise estimate alone (the default) in the second half of ten: the
    teacher needs a few epochs to learn where its passes disagree."""
    epochs = 2 if image_level else 10
    options = {"image_weights": image_level, "rampup_epochs": 1}
    result = run(tiny_run_config(seed=0, reweighter={"name": "distil", "options": options},
                                 noise={"rate": 0.5}, train={"epochs": epochs},
                                 output={"dir": str(tmp_path / "run")}), progress=False)
    judged = result.history if image_level else result.history[len(result.history) // 2:]
    for record in judged:
        assert record["weight_mean_corrupted"] < record["weight_mean_clean"], record
        assert record["weight_auroc"] > 0.5, record
    assert math.isfinite(result.metrics["dice"])
    quality = {"quality", "quality_optimizer"}
    state = set(result.reweighter.state_dict())
    assert state >= {"teacher", "generator"} | (quality if image_level else set())
    assert image_level or not quality & state


def test_volumes_get_a_3d_quality_net(registry: Registry) -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(),
                            nn.Conv3d(3, 1, 3, padding=1))
    run_context = dataclasses.replace(cpu_run_context(2), build_model=lambda: copy.deepcopy(student),
                                      spatial_dims=3)
    reweighter = registry.build("reweighter", "distil", {"image_weights": True})
    reweighter.setup(run_context)
    x = torch.randn(2, 1, 8, 8, 8)
    y = torch.from_numpy(random_masks(2, 8, 2, seed=1, dims=3))
    logits = student(x)
    weights = reweighter.weigh(StepContext(
        model=student, optimizer=torch.optim.SGD(student.parameters(), lr=0.1), images=x, labels=y,
        logits=logits, loss_map=per_pixel_loss(logits, y), step=0, epoch=0))
    assert weights.shape == (2, 8, 8, 8) and torch.isfinite(weights).all() and (weights >= 0).all()
    assert isinstance(reweighter.quality.features[0], nn.Conv3d)


def test_two_processes_hold_one_teacher_and_one_quality_net(tmp_path: Path) -> None:
    from noisyseg.lockstep import process_differences, run_in_processes

    config = tiny_run_config(device="cpu", reweighter={"name": "distil", "options": {"image_weights": True}},
                             train={"epochs": 1},
                             output={"dir": str(tmp_path / "run")})
    a, b = run_in_processes(2, config)
    assert {"teacher", "quality"} <= set(a["reweighter"])
    assert process_differences([a, b]) == {"model": [], "reweighter": [], "labels": []}
