"""Contract checks of the kinds a run's data and network come from: :func:`check_dataset`,
:func:`check_noise_model` and :func:`check_backbone` (exported by :mod:`noisyseg.testing`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from noisyseg.components import Backbone, Dataset, NoiseModel, Split, Splits
from noisyseg.fixtures import random_masks
from noisyseg.outputs import out_channels, per_pixel_loss
from noisyseg.split_checks import check_splits


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
