"""Fixtures for tests and examples: a config of a tiny run, small masks, a run context outside
a run, MONAI's metrics as a reference. The contract kit (:mod:`noisyseg.testing`) uses them and
re-exports them, so ``from noisyseg.testing import tiny_run_config`` keeps working.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch

from noisyseg.contexts import RunContext
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


def cpu_run_context(num_classes: int = 2) -> RunContext:
    """A RunContext for exercising a component outside a run: CPU, SGD, a tiny model factory,
    and known clean labels of 8 training images of 16x16 (steps index into them)."""
    return RunContext(
        build_model=lambda: tiny_model(num_classes),
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


def tiny_model(num_classes: int) -> torch.nn.Module:
    """A tiny network for checks outside a run: two convolutions and a batch norm.

    Shape:
        input - (N, 1, H, W); output - (N, K, H, W) logits, K = 1 for two classes
    """
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, out_channels(num_classes), 3, padding=1),
    )


def saved_and_loaded(state: Any) -> Any:
    """``state`` through torch.save and torch.load, as a checkpoint carries it (no tensor shared
    with the original)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)
