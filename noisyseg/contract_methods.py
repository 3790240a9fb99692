"""Contract checks of the kinds of a training method and of recipes: :func:`check_loss`,
:func:`check_reweighter`, :func:`check_corrector` and :func:`check_recipe` (exported by
:mod:`noisyseg.testing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from noisyseg.components import (
    LabelCorrector,
    Loss,
    Recipe,
    RecipeOptions,
    Reweighter,
    RunContext,
    StepContext,
)
from noisyseg.fixtures import cpu_run_context, random_masks, saved_and_loaded, tiny_model
from noisyseg.outputs import out_channels, per_pixel_loss
from noisyseg.precision import FP32, Precision, upcast


def _batch(cls: type[Reweighter], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           run: RunContext, seed: int) -> StepContext:
    """A step context of 4 images of 16x16 from ``seed``, through ``model`` (under the autocast
    of ``run.precision``, the logits cast to float32, as the training step does)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 16, 16, generator=generator)
    y = torch.from_numpy(random_masks(4, 16, 2, seed=seed))
    with run.precision.autocast():
        logits = model(x)
    logits = upcast(logits)
    index = torch.arange(4) + 4 * (seed % 2)
    return StepContext(
        model=model, optimizer=optimizer, images=x, labels=y, logits=logits,
        loss_map=per_pixel_loss(logits, y), step=seed, epoch=0,
        meta_images=x[:2].clone() if cls.needs_meta_batch else None,
        meta_labels=y[:2].clone() if cls.needs_meta_batch else None,
        index=index, clean_labels=run.clean_labels[index],
    )


def _reweighter(cls: type[Reweighter], options: dict[str, Any] | None, seed: int,
                precision: Precision = FP32,
                ) -> tuple[Reweighter, torch.nn.Module, torch.optim.Optimizer, RunContext]:
    torch.manual_seed(seed)
    reweighter = cls(cls.Options.model_validate(options or {}))
    model = tiny_model(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = cpu_run_context(2)
    run.precision = precision
    reweighter.setup(run)
    return reweighter, model, optimizer, run


def _weights_once(cls: type[Reweighter], options: dict[str, Any] | None, seed: int) -> torch.Tensor:
    reweighter, model, optimizer, run = _reweighter(cls, options, seed)
    return reweighter.weigh(_batch(cls, model, optimizer, run, seed)).detach()


def _valid(cls: type[Reweighter], w: torch.Tensor | None, what: str) -> None:
    assert w is not None and w.shape == (4, 16, 16), (
        f"{cls.name}: {what} shape {None if w is None else tuple(w.shape)}, expected (4, 16, 16)")
    assert torch.isfinite(w).all(), f"{cls.name}: non-finite {what}"
    assert (w >= 0).all(), f"{cls.name}: negative {what}"


def _same_state(cls: type[Reweighter], a: Any, b: Any, where: str = "state") -> None:
    """Two state_dict()s hold the same keys and values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (
            f"{cls.name}: {where} keys differ: {sorted(map(str, a))} vs "
            f"{sorted(map(str, b)) if isinstance(b, dict) else type(b).__name__}")
        for key in a:
            _same_state(cls, a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{cls.name}: {where} differs"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_state(cls, x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), (
            f"{cls.name}: {where} differs after a round trip")
    else:
        assert a == b or (a != a and b != b), f"{cls.name}: {where} differs: {a!r} vs {b!r}"


def check_reweighter(cls: type[Reweighter], options: dict[str, Any] | None = None) -> None:
    """Weights (N, H, W), finite, non-negative, the same for the same seed; ``metrics`` gives
    floats under keys starting with the name; ``preview`` gives
    None or valid weights and learns nothing; the state survives a round trip into a fresh
    instance: after two steps, a fresh reweighter loaded with the state weighs a third batch
    exactly as the original does."""
    w = _weights_once(cls, options, seed=0)
    _valid(cls, w, "weights")
    assert torch.equal(w, _weights_once(cls, options, seed=0)), f"{cls.name}: not deterministic"

    trained, model, optimizer, run = _reweighter(cls, options, seed=1)
    for seed in (1, 2):  # two steps: a reweighter that learns has something to remember
        trained.weigh(_batch(cls, model, optimizer, run, seed))
    metrics = trained.metrics()
    assert isinstance(metrics, dict) and all(
        k.startswith(f"{cls.name}_") and isinstance(v, float) for k, v in metrics.items()), (
        f"{cls.name}: metrics() must give floats under keys starting with '{cls.name}_'")
    before = trained.state_dict()
    shown = trained.preview(_batch(cls, model, optimizer, run, 3))
    if shown is not None:
        _valid(cls, shown.detach(), "preview weights")
    _same_state(cls, before, trained.state_dict(), "state after preview()")

    fresh, *_ = _reweighter(cls, options, seed=99)  # other random initialisation
    fresh.load_state_dict(saved_and_loaded(trained.state_dict()))
    _same_state(cls, trained.state_dict(), fresh.state_dict())
    rng = torch.get_rng_state()
    expected = trained.weigh(_batch(cls, model, optimizer, run, 4)).detach()
    torch.set_rng_state(rng)
    got = fresh.weigh(_batch(cls, model, optimizer, run, 4)).detach()
    assert torch.allclose(expected, got, atol=1e-6), (
        f"{cls.name}: a fresh instance loaded with state_dict() weighs differently: the state "
        "misses something the weights depend on")
    _check_precisions(cls, options)


def _check_precisions(cls: type[Reweighter], options: dict[str, Any] | None) -> None:
    """In a bf16 run (and an fp16 one, unless the class sets ``supports_fp16 = False``), two
    steps on forwards under autocast give valid float32 weights."""
    for name in ("bf16", "fp16") if cls.supports_fp16 else ("bf16",):
        reweighter, model, optimizer, run = _reweighter(cls, options, 5, Precision(name))
        for seed in (5, 6):
            w = reweighter.weigh(_batch(cls, model, optimizer, run, seed)).detach()
            _valid(cls, w, f"weights in {name}")
            assert w.dtype == torch.float32, f"{cls.name}: weights in {name} are {w.dtype}, not float32"


def check_loss(cls: type[Loss], options: dict[str, Any] | None = None) -> None:
    """For a binary net (one logit) and a 3-class net: a finite map (N, H, W) of the logits'
    dtype, the same twice; gradients reach the logits, finite; a confident right prediction costs
    less than a confident wrong one, pixel by pixel on average; learned parameters and
    ``metrics()`` survive a round trip into a fresh instance, which then gives the same map;
    volumes (N, K, D, H, W) give a finite (N, D, H, W) map."""
    for classes in (2, 3):
        torch.manual_seed(0)
        loss = cls(cls.Options.model_validate(options or {}))
        loss.setup(cpu_run_context(classes))
        labels = torch.from_numpy(random_masks(4, 16, classes, seed=classes))
        logits = torch.randn(4, out_channels(classes), 16, 16, requires_grad=True)
        got = loss(logits, labels)
        assert got.shape == (4, 16, 16), (
            f"{cls.name}: map of shape {tuple(got.shape)} for {classes} classes, expected (4, 16, 16)")
        assert got.dtype == logits.dtype and torch.isfinite(got).all(), (
            f"{cls.name}: the map must be finite and of the logits' dtype ({got.dtype})")
        assert torch.equal(got, loss(logits, labels)), f"{cls.name}: not deterministic"
        (grad,) = torch.autograd.grad(got.mean(), logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, (
            f"{cls.name}: no finite gradient reaches the logits ({classes} classes)")
        if classes == 2:
            right, wrong = 8.0 * (2 * labels[:, None].float() - 1), -8.0 * (2 * labels[:, None].float() - 1)
        else:
            onehot = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
            right, wrong = 8.0 * onehot, 8.0 * (1 - onehot)
        assert loss(right, labels).mean() < loss(wrong, labels).mean(), (
            f"{cls.name}: a confident right prediction does not cost less than a wrong one")
        metrics = loss.metrics()
        assert isinstance(metrics, dict) and all(
            k.startswith("loss_") and isinstance(v, float) for k, v in metrics.items()), (
            f"{cls.name}: metrics() must give floats under keys starting with 'loss_'")
        params = loss.parameters()
        if params:  # a learning loss: one optimiser step moves its parameters
            optimizer = torch.optim.SGD(params, lr=0.1)
            loss(logits.detach(), labels).mean().backward()
            optimizer.step()
        fresh = cls(cls.Options.model_validate(options or {}))
        fresh.setup(cpu_run_context(classes))
        fresh.load_state_dict(saved_and_loaded(loss.state_dict()))
        assert torch.allclose(loss(logits, labels), fresh(logits, labels), atol=1e-6), (
            f"{cls.name}: a fresh instance loaded with state_dict() gives another map")
        volume = torch.randn(2, out_channels(classes), 6, 6, 6, requires_grad=True)
        got = loss(volume, torch.from_numpy(random_masks(2, 6, classes, seed=classes, dims=3)))
        assert got.shape == (2, 6, 6, 6) and torch.isfinite(got).all(), (
            f"{cls.name}: volumes (N, K, D, H, W) must give a finite (N, D, H, W) map, got "
            f"{tuple(got.shape)}")


def check_corrector(cls: type[LabelCorrector], options: dict[str, Any] | None = None) -> None:
    """Labels keep shape, dtype and range through observe / end_epoch; state round-trips."""
    corrector = cls(cls.Options.model_validate(options or {}))
    labels = torch.from_numpy(random_masks(6, 16, 2))
    corrector.setup(labels, cpu_run_context(2))
    index = torch.tensor([0, 2, 4])
    got = corrector.labels(index)
    assert got.shape == (3, 16, 16) and got.dtype == torch.int64, (
        f"{cls.name}: labels() gave {tuple(got.shape)} {got.dtype}, expected (3, 16, 16) int64"
    )
    if corrector.observes_weights:  # read after setup, as the loop does (may be a property)
        corrector.observe_weights(index, torch.rand(3, 16, 16) * 2)
    if corrector.observes_predictions:
        probs = torch.softmax(torch.randn(3, 2, 16, 16), dim=1)
        corrector.observe(index, probs)
    metrics = corrector.end_epoch(0)
    assert isinstance(metrics, dict), f"{cls.name}: end_epoch() must return a dict"
    after = corrector.labels(torch.arange(6))
    assert after.min() >= 0 and after.max() < 2, f"{cls.name}: labels out of range"
    state = corrector.state_dict()
    fresh = cls(cls.Options.model_validate(options or {}))
    fresh.setup(labels, cpu_run_context(2))
    fresh.load_state_dict(saved_and_loaded(state))
    assert torch.equal(fresh.labels(torch.arange(6)), after), f"{cls.name}: state does not round-trip"


def check_recipe(cls: type[Recipe], options: dict[str, Any] | None = None) -> None:
    """Options built on RecipeOptions; every stage's config resolves from the default run's (its
    overlay names real settings and components), and a stage's rules fit the stage before."""
    from noisyseg.build import build_components
    from noisyseg.config import Config
    from noisyseg.plugins import Registry, build_plugin_manager
    from noisyseg.recipes import Finished, stage_config

    assert issubclass(cls.Options, RecipeOptions), (
        f"{cls.name}: Options must subclass noisyseg.RecipeOptions (RecipeOptions.defaults(...))")
    recipe = cls(cls.Options.model_validate(options or {}))
    assert recipe.stages, f"{cls.name}: a recipe needs at least one stage"
    registry = Registry(build_plugin_manager())
    base = Config(output={"dir": "runs/check"})
    previous = None
    for i, stage in enumerate(recipe.stages):
        out = None if len(recipe.stages) == 1 else Path("runs/check") / f"{i + 1}-{stage.name}"
        config = stage_config(base, recipe, i, previous, registry, out)
        build_components(config, registry)  # every component the stage picks exists, valid
        previous = Finished(config, {"steps": 100})
