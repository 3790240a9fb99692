"""Contract checks every component must pass, exported so that third-party plugin packages can
run them on their own components:

    from noisyseg.testing import check_reweighter
    def test_my_reweighter():
        check_reweighter(MyReweighter)

Each ``check_*`` takes a component class (built with default options unless ``options`` is
given) and raises AssertionError with a readable message when the contract is broken.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisyseg.components import (
    Backbone,
    Dataset,
    LabelCorrector,
    Loss,
    NoiseModel,
    Recipe,
    RecipeOptions,
    Reweighter,
    RunContext,
    Split,
    Splits,
    StepContext,
)
from noisyseg.kinds import KINDS
from noisyseg.outputs import out_channels, per_pixel_loss


def tiny_run_config(**overrides: Any) -> dict[str, Any]:
    """Plain config data for a run that takes a few seconds on a CPU (tests, examples)."""
    from noisyseg.config import merge

    base = {
        "dataset": {"name": "synthetic",
                    "options": {"size": 32, "n_train": 24, "n_meta": 8, "n_test": 8,
                                "min_radius": 2.0, "max_radius": 5.0}},
        "backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"figure_images": 2},
    }
    for key, value in overrides.items():  # a component picked by another name drops the options
        if isinstance(value, dict) and value.get("name", base.get(key, {}).get("name")) != base.get(
            key, {}
        ).get("name"):
            base.pop(key, None)
    return merge(base, overrides)


def random_masks(n: int, size: int, num_classes: int, seed: int = 0, dims: int = 2) -> np.ndarray:
    """A few blob-like integer masks (n, size, size) for contract checks; with ``dims = 3``
    ball-shaped volumes (n, size, size, size)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * dims)
    masks = np.zeros((n, *(size,) * dims), dtype=np.int64)
    for i in range(n):
        for c in range(1, num_classes):
            centre = rng.uniform(size * 0.25, size * 0.75, size=dims)
            r = rng.uniform(size * 0.1, size * 0.25)
            distance2 = sum((g - x) ** 2 for g, x in zip(grid, centre, strict=True))
            masks[i][distance2 <= r * r] = c
    return masks


def label_fields(n: int, size: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Smooth random integer masks (n, size, size) in which every class holds 1/num_classes of
    each mask's pixels (quantile cuts of filtered noise): for comparing metrics."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).normal(size=(n, size, size))
    fields = ndimage.gaussian_filter(noise, (0, 1.5, 1.5))
    cuts = np.quantile(fields, np.linspace(0, 1, num_classes + 1)[1:-1], axis=(1, 2))  # (K-1, n)
    return (fields[:, None] > cuts.T[:, :, None, None]).sum(axis=1)


def monai_metrics(preds: np.ndarray, truths: np.ndarray, num_classes: int) -> dict[str, float]:
    """MONAI's Dice, IoU, HD and HD95 under the keys of :func:`noisyseg.metrics.evaluate`, as a
    reference: background left out, ``reduction="mean"`` for the headline (the mean over images
    of each image's mean over the classes that count) and ``"mean_batch"`` per class. Needs
    ``monai`` (a test dependency). Agrees with ``evaluate`` where every class is in every truth.

    Shape:
        preds, truths - (N, H, W) integer labels
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    def one_hot(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.eye(num_classes, dtype=np.float32)[labels]).permute(0, 3, 1, 2)

    y_pred, y = one_hot(preds), one_hot(truths)
    metrics = {
        "dice": DiceMetric(include_background=False),
        "iou": MeanIoU(include_background=False),
        "hd": HausdorffDistanceMetric(include_background=False),
        "hd95": HausdorffDistanceMetric(include_background=False, percentile=95),
    }
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes itself
            warnings.simplefilter("ignore", FutureWarning)
            metric(y_pred, y)
        out[name] = float(metric.aggregate("mean"))
        if num_classes > 2:
            for c, value in enumerate(metric.aggregate("mean_batch").tolist(), start=1):
                out[f"{name}_class{c}"] = value
    return out


def check_backbone(cls: type[Backbone], options: dict[str, Any] | None = None) -> None:
    """(N, C, H, W) -> finite (N, K, H, W) logits with finite gradients, binary and 3-class; the
    same for (N, C, D, H, W) volumes when the class's ``spatial_dims`` has 3."""
    backbone = cls(cls.Options.model_validate(options or {}))
    torch.manual_seed(0)
    shapes = [(64, 64)] + ([(16, 16, 16)] if 3 in cls.spatial_dims else [])
    for spatial, (in_ch, classes) in ((s, c) for s in shapes for c in ((1, 2), (3, 3))):
        net = backbone.build_for(in_ch, out_channels(classes), len(spatial))
        x = torch.randn(2, in_ch, *spatial)
        logits = net(x)
        assert logits.shape == (2, out_channels(classes), *spatial), (
            f"{cls.name}: logits shape {tuple(logits.shape)}, expected "
            f"{(2, out_channels(classes), *spatial)}"
        )
        assert torch.isfinite(logits).all(), f"{cls.name}: non-finite logits"
        y = torch.randint(0, classes, (2, *spatial))
        per_pixel_loss(logits, y).mean().backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), (
            f"{cls.name}: missing or non-finite gradients"
        )


def check_noise_model(cls: type[NoiseModel], options: dict[str, Any] | None = None) -> None:
    """Same shape and dtype, labels in range, deterministic for a seed, input left untouched; on
    (D, H, W) volumes too when the class's ``spatial_dims`` has 3. The masks go the core's way:
    ``image_share`` in [0, 1], ``prepare`` on splits made of them (images: the masks plus noise;
    it must leave them untouched), then ``corrupt_at`` for each training image."""
    noise = cls(cls.Options.model_validate(options or {}))
    share = noise.image_share(0.4)
    assert 0 <= share <= 1, f"{cls.name}: image_share(0.4) = {share}, not a share in [0, 1]"
    for num_classes in (2, 3):
        sets = [(random_masks(4, 48, num_classes, seed=num_classes),
                 random_masks(2, 48, num_classes, seed=num_classes + 10))]
        if 3 in cls.spatial_dims:
            sets.append((random_masks(2, 20, num_classes, seed=num_classes, dims=3),
                         random_masks(2, 20, num_classes, seed=num_classes + 10, dims=3)))
        for masks, meta_masks in sets:
            splits = Splits(train=_split_of(masks, num_classes), meta=_split_of(meta_masks, num_classes),
                            test=_split_of(meta_masks[:1], num_classes), num_classes=num_classes)
            kept = [(s.images.copy(), s.masks.copy()) for s in (splits.train, splits.meta)]
            noise.prepare(splits, 0)
            assert all(np.array_equal(s.images, i) and np.array_equal(s.masks, m)
                       for s, (i, m) in zip((splits.train, splits.meta), kept, strict=True)), (
                f"{cls.name}: prepare() modified the splits")
            for index, mask in enumerate(masks):
                before = mask.copy()
                a = noise.corrupt_at(mask.copy(), index, np.random.default_rng(7), num_classes)
                b = noise.corrupt_at(mask.copy(), index, np.random.default_rng(7), num_classes)
                noise.corrupt_at(mask, index, np.random.default_rng(7), num_classes)
                assert np.array_equal(mask, before), f"{cls.name}: corrupt() modified its input"
                assert a.shape == mask.shape and a.dtype == mask.dtype, (
                    f"{cls.name}: returned {a.shape} {a.dtype}, expected {mask.shape} {mask.dtype}"
                )
                assert a.min() >= 0 and a.max() < num_classes, f"{cls.name}: labels out of range"
                assert np.array_equal(a, b), f"{cls.name}: not deterministic for a fixed generator"


def _split_of(masks: np.ndarray, num_classes: int) -> Split:
    """A split of noisy images that show ``masks`` (for :func:`check_noise_model`).

    Shape:
        masks - (N, *spatial); the images (N, 1, *spatial) float32
    """
    rng = np.random.default_rng(len(masks))
    noise = rng.normal(size=(len(masks), 1, *masks.shape[1:]))
    images = masks[:, None] / max(num_classes - 1, 1) + 0.2 * noise
    return Split(images.astype(np.float32), masks)


def check_dataset(cls: type[Dataset], options: dict[str, Any] | None = None) -> None:
    """Splits of matching shapes, labels in range, identical when loaded twice."""
    from noisyseg.data import check_splits

    dataset = cls(cls.Options.model_validate(options or {}))
    a, b = dataset.load(0), dataset.load(0)
    check_splits(a, cls.name)
    for name in ("train", "meta", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.images.dtype == np.float32 and sa.masks.dtype in (np.int64, np.uint8), (
            f"{cls.name}: {name} split must be float32 images and int64 (or uint8) masks"
        )
        assert np.array_equal(sa.images, sb.images) and np.array_equal(sa.masks, sb.masks), (
            f"{cls.name}: {name} split differs between two loads with the same seed"
        )


def cpu_run_context(num_classes: int = 2) -> RunContext:
    """A RunContext for exercising a component outside a run: CPU, SGD, a tiny model factory,
    and known clean labels of 8 training images of 16x16 (steps index into them)."""
    return RunContext(
        build_model=lambda: _tiny_model(num_classes),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        loss_fn=per_pixel_loss,
        device=torch.device("cpu"),
        num_classes=num_classes,
        noise_rate=0.4,
        epochs=2,
        steps_per_epoch=2,
        seed=0,
        pixel_noise_rate=0.1,
        clean_labels=torch.from_numpy(random_masks(8, 16, num_classes, seed=1)),
    )


def _tiny_model(num_classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, out_channels(num_classes), 3, padding=1),
    )


def _batch(cls: type[Reweighter], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           run: RunContext, seed: int) -> StepContext:
    """A step context of 4 images of 16x16 from ``seed``, through ``model``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 16, 16, generator=generator)
    y = torch.from_numpy(random_masks(4, 16, 2, seed=seed))
    logits = model(x)
    index = torch.arange(4) + 4 * (seed % 2)
    return StepContext(
        model=model, optimizer=optimizer, images=x, labels=y, logits=logits,
        loss_map=per_pixel_loss(logits, y), step=seed, epoch=0,
        meta_images=x[:2].clone() if cls.needs_meta_batch else None,
        meta_labels=y[:2].clone() if cls.needs_meta_batch else None,
        index=index, clean_labels=run.clean_labels[index],
    )


def _reweighter(cls: type[Reweighter], options: dict[str, Any] | None,
                seed: int) -> tuple[Reweighter, torch.nn.Module, torch.optim.Optimizer, RunContext]:
    torch.manual_seed(seed)
    reweighter = cls(cls.Options.model_validate(options or {}))
    model = _tiny_model(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = cpu_run_context(2)
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


def saved_and_loaded(state: Any) -> Any:
    """``state`` through torch.save and torch.load, as a checkpoint carries it (no tensor shared
    with the original)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


def check_reweighter(cls: type[Reweighter], options: dict[str, Any] | None = None) -> None:
    """Weights (N, H, W), finite, non-negative, the same for the same seed; ``preview`` gives
    None or valid weights and learns nothing; the state survives a round trip into a fresh
    instance: after two steps, a fresh reweighter loaded with the state weighs a third batch
    exactly as the original does."""
    w = _weights_once(cls, options, seed=0)
    _valid(cls, w, "weights")
    assert torch.equal(w, _weights_once(cls, options, seed=0)), f"{cls.name}: not deterministic"

    trained, model, optimizer, run = _reweighter(cls, options, seed=1)
    for seed in (1, 2):  # two steps: a reweighter that learns has something to remember
        trained.weigh(_batch(cls, model, optimizer, run, seed))
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
        for key in KINDS:  # every component the stage picks exists, with valid options
            section = getattr(config, key)
            registry.build(key, section.name, section.options)
        previous = Finished(config, {"steps": 100})


#: kind key -> its contract check (from the table of kinds)
CHECKS = {key: kind.check for key, kind in KINDS.items()}
