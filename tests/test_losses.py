"""The loss kind: each loss's map has the published loss as its mean and its gradient, and any
loss runs with any reweighter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from noisyseg_gce import GCEReweighter
from noisyseg_losses import GCELoss, MAELoss, NRDiceLoss, NWDiceLoss
from noisyseg_losses.nwdice import label_noise
from noisyseg_losses.tloss import TLoss

from noisyseg import Loss, Registry, StepContext, build_plugin_manager, hookimpl, run
from noisyseg.outputs import class_probs, per_pixel_loss
from noisyseg.testing import check_loss, cpu_run_context, random_masks, tiny_run_config


def _data(classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    logits = torch.randn(3, 1 if classes == 2 else classes, 12, 12, dtype=torch.float64,
                         requires_grad=True)
    return logits, torch.from_numpy(random_masks(3, 12, classes, seed=seed))


def _built(cls: type, classes: int = 2, **options: object) -> object:
    loss = cls(cls.Options.model_validate(options))
    loss.setup(cpu_run_context(classes))
    return loss


def _published_tloss(probs: torch.Tensor, onehot: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """The paper's T per image, written out from the formula (identity scale), over the foreground
    channel for two classes."""
    delta = (probs - onehot)[:, 1:] if probs.shape[1] == 2 else probs - onehot
    d = delta[0].numel()
    total = delta.square().flatten(1).sum(1)
    return (-torch.lgamma((nu + d) / 2) + torch.lgamma(nu / 2) + d / 2 * torch.log(math.pi * nu)
            + (nu + d) / 2 * torch.log(1 + total / nu)), d


@pytest.mark.parametrize("classes", [2, 3])
def test_tloss_map_has_the_published_gradient_and_residuals_as_values(classes: int) -> None:
    loss = _built(TLoss, classes)
    loss.log_nu.data = loss.log_nu.data.double()
    logits, labels = _data(classes)
    got = loss(logits, labels)
    got_grads = torch.autograd.grad(got.mean(), [logits, loss.log_nu])

    probs = class_probs(logits)
    onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
    nu = loss.log_nu.exp() + loss.options.eps
    image_loss, d = _published_tloss(probs, onehot, nu)
    want_grads = torch.autograd.grad((image_loss / d).mean(), [logits, loss.log_nu])
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-14)
    delta = (probs - onehot)[:, 1:] if classes == 2 else probs - onehot
    k = delta.shape[1]
    assert torch.allclose(got, delta.square().sum(1) / (2 * k), rtol=1e-12)  # comparable values


def test_tloss_values_rank_pixels_by_residual_across_images() -> None:
    loss = _built(TLoss)
    logits, labels = _data(2)
    residual = (torch.sigmoid(logits[:, 0]) - labels).square().flatten()
    values = loss(logits, labels).flatten()
    order = residual.argsort()
    assert (values[order].diff() >= -1e-12).all() and (values >= 0).all()
    assert loss.metrics() == {"loss_nu": pytest.approx(math.e)}
    assert _built(TLoss, learn_nu=False).parameters() == []


def test_nrdice_map_mean_is_the_published_loss_over_the_batch() -> None:
    loss = _built(NRDiceLoss, 3, gamma=1.5)
    logits, labels = _data(3)
    probs = class_probs(logits)
    onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
    numerator = (probs - onehot).abs().pow(1.5).sum((0, 2, 3))
    denominator = probs.square().sum((0, 2, 3)) + onehot.square().sum((0, 2, 3)) + 1e-5
    assert (onehot.sum((0, 2, 3)) > 0).all()
    want = (numerator / denominator).mean()   # over classes (all present here)
    assert torch.allclose(loss(logits, labels).mean(), want, rtol=1e-12)


def test_nrdice_does_not_reward_predicting_a_class_an_image_or_batch_lacks() -> None:
    loss = _built(NRDiceLoss)
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    labels[1, 4:12, 4:12] = 1                  # image 0 has no foreground
    for batch in (labels, labels[:1]):         # the batch has some foreground, or none
        costs = []
        for logit in (0.0, -5.0, -8.0):        # ever surer that image 0 is background
            logits = torch.full((len(batch), 1, 16, 16), 8.0) * (2 * batch[:, None] - 1)
            logits[0] = logit
            costs.append(float(loss(logits, batch).mean()))
        assert costs[0] > costs[1] > costs[2]


@pytest.mark.parametrize("cls", [GCELoss, MAELoss])
def test_robust_losses_keep_finite_gradients_when_the_label_probability_underflows(cls: type) -> None:
    logits = torch.tensor([[[[20.0, -20.0]]]], requires_grad=True)   # p(label) = 0 in float32
    labels = torch.tensor([[[0, 1]]])
    value = _built(cls)(logits, labels)
    (grad,) = torch.autograd.grad(value.mean(), logits)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_gce_loss_has_the_gce_reweighters_gradient_and_mae_is_q1() -> None:
    logits, labels = _data(2)
    (as_loss,) = torch.autograd.grad(_built(GCELoss, q=0.7)(logits, labels).mean(), logits)
    weights = GCEReweighter(GCEReweighter.Options(q=0.7)).weigh(StepContext(
        model=None, optimizer=None, images=None, labels=labels, logits=logits,
        loss_map=per_pixel_loss(logits, labels), step=0, epoch=0))
    (as_weights,) = torch.autograd.grad((weights * per_pixel_loss(logits, labels)).mean(), logits)
    assert torch.allclose(as_loss, as_weights, rtol=1e-9)
    mae, gce1 = _built(MAELoss)(logits, labels), _built(GCELoss, q=1.0)(logits, labels)
    assert torch.allclose(mae, 2 * gce1)


@pytest.mark.parametrize("method", [{"reweighter": {"name": "l2rw"}},
                                    {"reweighter": {"name": "mwnet", "options": {"virtual": "adam"}}},
                                    {"reweighter": {"name": "coteaching"}},
                                    {"corrector": {"name": "plc", "options": {"warmup_epochs": 1}}}])
def test_tloss_trains_with_any_method_and_learns_nu(tmp_path: Path, method: dict) -> None:
    result = run(tiny_run_config(loss={"name": "tloss"}, train={"epochs": 2}, noise={"rate": 0.5},
                                 output={"dir": str(tmp_path / "run")}, **method), progress=False)
    nus = [h["loss_nu"] for h in result.history]
    assert all(math.isfinite(v) for v in nus) and nus[-1] != pytest.approx(math.e, abs=1e-9)
    assert math.isfinite(result.metrics["dice"]) and result.loss.nu == pytest.approx(nus[-1])


class SquaredError(Loss):
    """(1 - p)^2 of the label's probability p (a throwaway third-party loss)."""

    name = "squared"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (1 - class_probs(logits).gather(1, labels.unsqueeze(1)).squeeze(1)) ** 2


class SquaredPlugin:
    @hookimpl
    def register_losses(self) -> list[type[Loss]]:
        return [SquaredError]


def test_a_plugin_loss_passes_the_check_and_drives_a_meta_reweighter(tmp_path: Path) -> None:
    check_loss(SquaredError)
    pm = build_plugin_manager(plugins=[SquaredPlugin()])
    try:
        assert "squared" in Registry(pm).names("loss")
        result = run(tiny_run_config(loss={"name": "squared"}, reweighter={"name": "mcpm"},
                                     output={"dir": str(tmp_path / "r")}),
                     plugin_manager=pm, progress=False)
        assert result.config.loss.name == "squared" and math.isfinite(result.metrics["dice"])
    finally:
        for plugin in list(pm.get_plugins()):
            pm.unregister(plugin)


def test_the_default_loss_is_cross_entropy(tmp_path: Path) -> None:
    plain = run(tiny_run_config(output={"dir": str(tmp_path / "a")}), progress=False)
    named = run(tiny_run_config(loss={"name": "ce"}, output={"dir": str(tmp_path / "b")}),
                progress=False)
    assert plain.config.loss.name == "ce" and plain.metrics["dice"] == named.metrics["dice"]


# --------------------------------------------------------------------- Dice losses vs PyMIC
def _probs_onehot(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, ...]:
    probs = class_probs(logits)
    return probs, torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).to(probs.dtype)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("gamma", [1.0, 1.5, 2.0])
def test_nrdice_with_sums_is_pymics_noise_robust_dice(classes: int, gamma: float) -> None:
    """PyMIC (a test-only dependency, ``pip install --no-deps PYMIC``) sums p + y in the
    denominator; ``nrdice`` does with ``denominator = sums`` (value and gradient)."""
    dice = pytest.importorskip("pymic.loss.seg.dice")
    logits, labels = _data(classes, seed=1)
    probs, onehot = _probs_onehot(logits, labels, classes)
    assert (onehot.sum((0, 2, 3)) > 0).all()  # PyMIC averages over every class; nrdice over present ones
    pymic = dice.NoiseRobustDiceLoss({"noiserobustdiceloss_gamma": gamma, "loss_acti_func": None})
    want = pymic({"prediction": probs, "ground_truth": onehot})
    got = _built(NRDiceLoss, classes, gamma=gamma, denominator="sums")(logits, labels).mean()
    assert abs(got.item() - want.item()) < 1e-6
    g_got, g_want = (torch.autograd.grad(v, logits)[0] for v in (got, want))
    assert torch.allclose(g_got, g_want, atol=1e-6)


def test_nrdice_denominators_written_out_and_soft_dice_at_gamma_1() -> None:
    """Without PyMIC: both denominators against the formula by hand; with sums and gamma = 1 the
    loss is the soft Dice loss 1 - 2 sum p y / sum (p + y), mean over classes."""
    logits, labels = _data(3)
    probs, onehot = _probs_onehot(logits, labels, 3)
    over = (0, 2, 3)
    for gamma in (1.0, 1.7):
        numerator = (probs - onehot).abs().pow(gamma).sum(over)
        for name, p_sum in (("squares", probs.square().sum(over)), ("sums", probs.sum(over))):
            want = (numerator / (p_sum + onehot.sum(over) + 1e-5)).mean()
            got = _built(NRDiceLoss, 3, gamma=gamma, denominator=name)(logits, labels).mean()
            assert torch.allclose(got, want, rtol=1e-12), (name, gamma)
    soft_dice = 1 - ((2 * (probs * onehot).sum(over) + 1e-5) / ((probs + onehot).sum(over) + 1e-5)).mean()
    assert torch.allclose(_built(NRDiceLoss, 3, gamma=1.0, denominator="sums")(logits, labels).mean(),
                          soft_dice, rtol=1e-9)
    check_loss(NRDiceLoss, {"denominator": "sums"})


@pytest.mark.parametrize("classes", [2, 3])
def test_nwdice_is_pymics_dice_loss_with_the_noise_weights(classes: int) -> None:
    """PyMIC's DiceLoss with pixel_weight = p_label (detached) is ``nwdice`` (value, gradient);
    without weights (power 0) both are the soft Dice loss."""
    dice = pytest.importorskip("pymic.loss.seg.dice")
    logits, labels = _data(classes, seed=2)
    pymic = dice.DiceLoss({"loss_acti_func": None})
    for power in (1.0, 2.0, 0.0):
        probs, onehot = _probs_onehot(logits, labels, classes)
        inputs = {"prediction": probs, "ground_truth": onehot}
        if power > 0:
            inputs["pixel_weight"] = probs.gather(1, labels.unsqueeze(1)).detach() ** power
        want = pymic(inputs)
        got = _built(NWDiceLoss, classes, power=power)(logits, labels).mean()
        assert abs(got.item() - want.item()) < 1e-6, power
        g_got, g_want = (torch.autograd.grad(v, logits)[0] for v in (got, want))
        assert torch.allclose(g_got, g_want, atol=1e-6), power


def test_nwdice_written_out() -> None:
    """Without PyMIC: mean over classes of sum w |p - y| / (sum w (p + y) + eps), w = (1 - eta)^power
    held constant, eta = 1 - p_label = half the L1 distance between p and the one-hot label."""
    logits, labels = _data(3, seed=3)
    probs, onehot = _probs_onehot(logits, labels, 3)
    eta = label_noise(probs, onehot)
    assert not eta.requires_grad
    assert torch.allclose(eta, 1 - probs.gather(1, labels.unsqueeze(1)).squeeze(1), atol=1e-12)
    w = (1 - eta).pow(1.5).unsqueeze(1)
    over = (0, 2, 3)
    want = ((w * (probs - onehot).abs()).sum(over) / ((w * (probs + onehot)).sum(over) + 1e-5)).mean()
    loss = _built(NWDiceLoss, 3, power=1.5)
    got = loss(logits, labels)
    assert got.shape == labels.shape and torch.allclose(got.mean(), want, rtol=1e-12)
    g_got, g_want = (torch.autograd.grad(v, logits)[0] for v in (got.mean(), want))
    assert torch.allclose(g_got, g_want, rtol=1e-9, atol=1e-14)


def test_nwdice_pulls_less_on_pixels_the_network_confidently_contradicts() -> None:
    """Flip the label of pixels the network is sure about: under the noise-weighted Dice their pull
    (gradient) is a small share of the soft Dice's, while an equally sure but agreeing batch is
    learned as before; a class the network gets wrong everywhere still costs 1."""
    torch.manual_seed(0)
    truth = torch.from_numpy(random_masks(4, 16, 2, seed=4))
    logits = (6.0 * (2 * truth[:, None].double() - 1)).requires_grad_(True)  # sure of the truth
    noisy = truth.clone()
    flipped = torch.zeros_like(truth, dtype=torch.bool)
    flipped[:, :3] = True                                                  # three wrong rows
    noisy[flipped] = 1 - noisy[flipped]
    (g_nw,) = torch.autograd.grad(_built(NWDiceLoss)(logits, noisy).mean(), logits)
    (g_soft,) = torch.autograd.grad(_built(NWDiceLoss, power=0.0)(logits, noisy).mean(), logits)
    share_nw = g_nw.abs()[:, 0][flipped].sum() / g_nw.abs().sum()
    share_soft = g_soft.abs()[:, 0][flipped].sum() / g_soft.abs().sum()
    assert share_nw < 0.1 * share_soft
    wrong_everywhere = torch.full((2, 1, 8, 8), -8.0, dtype=torch.float64)   # predicts 0, label 1
    ones = torch.ones(2, 8, 8, dtype=torch.int64)
    assert float(_built(NWDiceLoss)(wrong_everywhere, ones).mean()) == pytest.approx(1.0, abs=1e-3)


def test_nwdice_trains_a_run(tmp_path: Path) -> None:
    result = run(tiny_run_config(loss={"name": "nwdice"}, noise={"rate": 0.5},
                                 output={"dir": str(tmp_path / "run")}), progress=False)
    assert result.config.loss.name == "nwdice" and math.isfinite(result.metrics["dice"])
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
