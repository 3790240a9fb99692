"""The meta-gradient is right: higher's double backward, the forward-mode (jvp) path and a
central finite-difference estimate agree, in float64, on our U-Net and on an smp model."""

from __future__ import annotations

import pytest
import torch
from noisyseg_backbones.unet import UNet
from torch.func import functional_call

from noisyseg import ConfigError, Registry, StepContext
from noisyseg.outputs import per_pixel_loss
from noisyseg.reweighting.virtual_step import meta_gradient, meta_pixel_gradient
from noisyseg.testing import cpu_run_context

ALPHA = 0.5


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _batch(n: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(n, size, size, generator=g) > 0.3).long()
    return x, y


def _reference_meta_loss(model, x, y, xm, ym, weights_fn) -> torch.Tensor:
    """Meta loss after a virtual SGD step, written out directly (first-order grads only)."""
    params = dict(model.named_parameters())
    loss = per_pixel_loss(functional_call(model, params, (x,)), y)
    w = weights_fn(loss.detach())
    grads = torch.autograd.grad((w * loss).mean(), list(params.values()))
    virtual = {k: p - ALPHA * g for (k, p), g in zip(params.items(), grads, strict=True)}
    return per_pixel_loss(functional_call(model, virtual, (xm,)), ym).mean()


def _finite_difference(f, tensor: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(tensor)
    flat, grad = tensor.data.view(-1), out.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        plus = f().item()
        flat[i] = old - h
        minus = f().item()
        flat[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return out


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _build(registry: Registry, name: str, **options):
    reweighter = registry.build("reweighter", name, {"alpha": ALPHA, **options})
    torch.manual_seed(0)
    model = UNet(1, 1, base=2, depth=1)
    ctx = cpu_run_context(2)
    reweighter.setup(ctx)
    return reweighter, model


@pytest.mark.parametrize(("name", "temperature"), [("mcpm", 1.0), ("mcpm", 0.25), ("mwnet", 1.0)])
def test_weighting_net_meta_gradient_matches_finite_differences(registry: Registry, name: str,
                                                                temperature: float) -> None:
    opts = {"width3": 2, "width5": 2} if name == "mcpm" else {"hidden": 4}
    reweighter, model = _build(registry, name, temperature=temperature, **opts)
    x, y = _batch(2)
    xm, ym = _batch(2, seed=1)
    loss = per_pixel_loss(model(x), y)
    params = list(reweighter.net.parameters())
    _, grads = meta_gradient(model, loss, reweighter.weights(loss), xm, ym, params,
                             per_pixel_loss, ALPHA)
    for p, g in zip(params, grads, strict=True):
        fd = _finite_difference(
            lambda: _reference_meta_loss(model, x, y, xm, ym, reweighter.weights), p)
        assert _rel_err(g, fd) < 1e-4, (name, p.shape, _rel_err(g, fd))


def test_l2rw_eps_gradient_matches_finite_differences(registry: Registry) -> None:
    torch.manual_seed(0)
    model = UNet(1, 1, base=2, depth=1)
    x, y = _batch(2)
    xm, ym = _batch(2, seed=1)
    loss = per_pixel_loss(model(x), y)
    eps = torch.zeros_like(loss, requires_grad=True)
    _, (g,) = meta_gradient(model, loss, eps, xm, ym, [eps], per_pixel_loss, ALPHA)
    probe = torch.zeros_like(loss)
    fd = _finite_difference(lambda: _reference_meta_loss(model, x, y, xm, ym, lambda _: probe), probe)
    assert _rel_err(g, fd) < 1e-4
    _, g_jvp = meta_pixel_gradient(model, x, y, loss, torch.zeros_like(loss), xm, ym,
                                   per_pixel_loss, ALPHA)
    assert _rel_err(g_jvp, g) < 1e-10


def _smp_model() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1, encoder_depth=3,
                    decoder_channels=(16, 8, 4))


@pytest.mark.parametrize("backbone", ["unet", "smp"])
@pytest.mark.parametrize("name", ["mcpm", "mwnet"])
def test_higher_and_jvp_paths_agree(registry: Registry, backbone: str, name: str) -> None:
    """The same meta-gradient whatever the path, on our U-Net and on an smp model."""
    torch.manual_seed(0)
    model = UNet(1, 1, base=4, depth=2) if backbone == "unet" else _smp_model()
    x, y = _batch(4, size=16)
    xm, ym = _batch(2, size=16, seed=1)
    loss = per_pixel_loss(model(x), y)
    grads = {}
    for method in ("higher", "jvp"):
        reweighter = registry.build("reweighter", name, {"alpha": ALPHA, "method": method})
        reweighter.setup(cpu_run_context(2))
        ctx = StepContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          images=x, labels=y, logits=None, loss_map=loss, step=0, epoch=0,
                          meta_images=xm, meta_labels=ym)
        reweighter.meta_step(ctx)
        grads[method] = torch.cat([p.grad.flatten() for p in reweighter.net.parameters()])
    assert grads["higher"].norm() > 0
    assert _rel_err(grads["jvp"], grads["higher"]) < 1e-8


@pytest.mark.parametrize("method", ["higher", "jvp"])
@pytest.mark.parametrize("name", ["mcpm", "mwnet", "l2rw"])
def test_batchnorm_buffers_unchanged_by_a_meta_step(registry: Registry, name: str, method: str) -> None:
    reweighter, model = _build(registry, name, method=method)
    x, y = _batch(4)
    xm, ym = _batch(2, seed=1)
    loss = per_pixel_loss(model(x), y)       # the real forward: this one may update them
    before = {k: b.clone() for k, b in model.named_buffers()}
    ctx = StepContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      images=x, labels=y, logits=None, loss_map=loss, step=0, epoch=0,
                      meta_images=xm, meta_labels=ym)
    reweighter.weigh(ctx)
    after = dict(model.named_buffers())
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["higher", "jvp"])
def test_l2rw_gives_zero_weight_to_labels_that_contradict_the_meta_set(registry: Registry,
                                                                       method: str) -> None:
    """A 1x1-conv model; label = (x > 0) on the meta set. Training pixels whose label follows
    that rule get positive weight, those with the flipped label get zero weight."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(0.1)
        model.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    xm = torch.randn(4, 1, 8, 8, generator=g)
    ym = (xm[:, 0] > 0).long()
    flipped = torch.zeros(2, 8, 8, dtype=torch.bool)
    flipped[:, :, :4] = True                      # left half of every image mislabelled
    y = torch.where(flipped, (x[:, 0] <= 0).long(), (x[:, 0] > 0).long())
    loss = per_pixel_loss(model(x), y)
    reweighter = registry.build("reweighter", "l2rw", {"alpha": ALPHA, "method": method})
    reweighter.setup(cpu_run_context(2))
    ctx = StepContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      images=x, labels=y, logits=None, loss_map=loss, step=0, epoch=0,
                      meta_images=xm, meta_labels=ym)
    w = reweighter.weigh(ctx)
    big = x[:, 0].abs() > 0.3                     # pixels near x = 0 carry little signal
    assert (w[flipped & big] == 0).all()
    assert (w[~flipped & big] > 0).all()
    assert w.mean().item() == pytest.approx(1.0)


def _unet_case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                         torch.Tensor, torch.Tensor]:
    """A small U-Net, a training batch of 4 and a meta batch of 2 of 16x16, the loss map and
    random weights: (model, x, y, xm, ym, loss, weights)."""
    torch.manual_seed(0)
    model = UNet(1, 1, base=4, depth=2)
    x, y = _batch(4, size=16)
    xm, ym = _batch(2, size=16, seed=1)
    loss = per_pixel_loss(model(x), y)
    return model, x, y, xm, ym, loss, torch.rand_like(loss)


def test_first_order_meta_gradient_is_the_small_alpha_limit() -> None:
    model, x, y, xm, ym, loss, w = _unet_case()
    for alpha, tol in ((1e-3, 1e-2), (1e-5, 1e-4)):
        _, exact = meta_pixel_gradient(model, x, y, loss, w, xm, ym, per_pixel_loss, alpha)
        _, first = meta_pixel_gradient(model, x, y, loss, w, xm, ym, per_pixel_loss, alpha,
                                       first_order=True)
        assert _rel_err(first, exact) < tol


def test_model_without_second_derivative_gets_a_clear_error() -> None:
    from noisyseg.reweighting.virtual_step import SecondOrderError, _explain

    # what torch says for an op without double backward (e.g. hardswish in older releases)
    err = RuntimeError("derivative for aten::hardswish_backward is not implemented")
    assert isinstance(_explain(err), SecondOrderError)
    assert "Hardswish" in str(_explain(err))
    assert _explain(RuntimeError("something else")).__class__ is RuntimeError

    x, y = _batch(2)
    compiled = torch.nn.Conv2d(1, 1, 1)
    compiled._orig_mod = torch.nn.Conv2d(1, 1, 1)      # what torch.compile's wrapper carries
    loss = per_pixel_loss(compiled(x), y)
    eps = torch.rand_like(loss, requires_grad=True)
    with pytest.raises(SecondOrderError, match="torch.compile"):
        meta_gradient(compiled, loss, eps, x, y, [eps], per_pixel_loss, ALPHA)


@pytest.mark.parametrize("layers", [1, 3])
def test_meta_layers_is_the_exact_gradient_with_the_other_layers_fixed(layers: int) -> None:
    """meta_layers = k equals higher's double backward on the same model with every parameter
    outside the last k modules frozen; with k covering every module it is the exact gradient."""
    from noisyseg.reweighting.virtual_step import last_layers

    model, x, y, xm, ym, loss, weights = _unet_case()
    _, cheap = meta_pixel_gradient(model, x, y, loss, weights, xm, ym, per_pixel_loss, ALPHA,
                                   layers=layers)
    chosen = set(last_layers(model, layers))
    assert chosen and len(chosen) < len(list(model.parameters()))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    r = weights.clone().requires_grad_()
    frozen_loss = per_pixel_loss(model(x), y)
    _, (reference,) = meta_gradient(model, frozen_loss, r, xm, ym, [r], per_pixel_loss, ALPHA)
    assert reference.norm() > 0
    assert _rel_err(cheap, reference) < 1e-8
    for p in model.parameters():
        p.requires_grad_(True)
    everything = len({n.rpartition(".")[0] for n, _ in model.named_parameters()})
    full_loss = per_pixel_loss(model(x), y)
    _, exact = meta_pixel_gradient(model, x, y, full_loss, weights, xm, ym, per_pixel_loss, ALPHA)
    _, all_layers = meta_pixel_gradient(model, x, y, full_loss, weights, xm, ym, per_pixel_loss,
                                        ALPHA, layers=everything)
    assert _rel_err(all_layers, exact) < 1e-12


def test_the_adaptive_interval_steps_often_early_rarely_late_and_depends_on_the_step_alone() -> None:
    import math

    from noisyseg.reweighting.weighting_net import takes_meta_step

    total = 420
    fixed = [s for s in range(total) if takes_meta_step(s, total, 3, None)]
    assert fixed == list(range(0, total, 3))
    taken = [s for s in range(total) if takes_meta_step(s, total, 1, 10)]
    expected = total * math.log(10) / 9  # the integral of 1 / interval over the run
    assert abs(len(taken) - expected) <= 2
    gaps = [b - a for a, b in zip(taken, taken[1:], strict=False)]
    assert max(gaps[:10]) <= 2 and min(gaps[-5:]) >= 8  # dense early, sparse late
    assert [takes_meta_step(s, total, 1, 10) for s in taken] == [True] * len(taken)  # no state
    with pytest.raises(ValueError, match="interval_max"):
        from noisyseg.reweighting import MetaNetOptions
        MetaNetOptions(interval=5, interval_max=2)


def test_mcpm_takes_the_adaptive_interval_by_default_and_a_fixed_one_when_asked(
        registry: Registry) -> None:
    def options(**given: object) -> tuple[int, int | None]:
        o = registry.build("reweighter", "mcpm", dict(given)).options
        return o.interval, o.interval_max

    assert options() == (1, 10)
    assert options(interval=5) == (5, None)  # interval alone: the fixed interval asked for
    assert options(interval=2, interval_max=20) == (2, 20)
    assert options(interval_max=None) == (1, None)  # the papers' schedule
    assert registry.build("reweighter", "mwnet", {}).options.interval_max is None
    with pytest.raises(ConfigError, match="interval_max"):
        options(interval=20, interval_max=10)


def test_a_temperature_sharpens_the_weights_of_the_same_net(registry: Registry) -> None:
    """With ``temperature = T`` the weight is sigmoid(logit / T) of the same net (same init):
    below 1 the weights spread further from their mean, never reordered."""
    loss = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3)) * 3
    built = {t: _build(registry, "mcpm", width3=2, width5=2, normalize=False, temperature=t)[0]
             for t in (1.0, 0.25)}
    logits = built[1.0].net(loss.unsqueeze(1)).squeeze(1)
    for t, reweighter in built.items():
        assert torch.allclose(reweighter.weights(loss), torch.sigmoid(logits / t))
    plain, sharp = (built[t].weights(loss) for t in (1.0, 0.25))
    assert (sharp - 0.5).abs().gt((plain - 0.5).abs() - 1e-12).all()
    assert torch.equal(plain.flatten().argsort(), sharp.flatten().argsort())


@pytest.mark.parametrize(("dims", "channels"), [(2, 1), (2, 3), (3, 1)])
def test_a_monotone_mask_net_never_raises_a_weight_with_a_loss(dims: int, channels: int) -> None:
    """Every output logit is non-increasing in the loss of every pixel it reads (the Jacobian
    of a random monotone net on a random loss map is <= 0), whatever the label channels; the
    plain net has entries of both signs."""
    from noisyseg_mcpm import MaskNet

    g = torch.Generator().manual_seed(dims + channels)
    shape = (2, channels, *(6,) * dims)
    for monotone, expect_both_signs in ((True, False), (False, True)):
        torch.manual_seed(channels)
        net = MaskNet(4, 4, dims=dims, in_channels=channels, monotone=monotone)
        x = torch.rand(shape, generator=g).requires_grad_(True)
        signs = set()
        for pixel in [(0, 0, *(3,) * dims), (1, 0, *(0,) * dims), (0, 0, *(5,) * dims)]:
            (grad,) = torch.autograd.grad(net(x)[pixel], x)
            loss_grad = grad[:, 0]
            assert not monotone or (loss_grad <= 0).all(), "a weight rises with a loss"
            signs |= {int(torch.sign(v)) for v in loss_grad.flatten() if v != 0}
        assert (signs == {-1, 1}) == expect_both_signs
