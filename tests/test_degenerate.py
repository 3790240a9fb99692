"""Random and degenerate masks (all background, all foreground, one pixel) through every noise
model, every metric and one training step of every reweighter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noisyseg import Registry, build_plugin_manager
from noisyseg.components import NoiseModel
from noisyseg.metrics import evaluate
from noisyseg.step import Batch, train_step
from noisyseg.testing import cpu_run_context

_REGISTRY = Registry(build_plugin_manager())
SIZE = 12


@st.composite
def masks(draw: st.DrawFn, num_classes: int = 2, size: int = SIZE) -> np.ndarray:
    kind = draw(st.sampled_from(["background", "foreground", "one pixel", "random"]))
    if kind == "background":
        return np.zeros((size, size), np.int64)
    if kind == "foreground":
        return np.full((size, size), draw(st.integers(1, num_classes - 1)), np.int64)
    if kind == "one pixel":
        mask = np.zeros((size, size), np.int64)
        mask[draw(st.integers(0, size - 1)), draw(st.integers(0, size - 1))] = 1
        return mask
    return draw(arrays(np.int64, (size, size), elements=st.integers(0, num_classes - 1)))


#: noise models that corrupt a mask by itself (pseudo labels an image by what prepare() saw)
_MASK_NOISES = [n for n in _REGISTRY.names("noise")
                if type(_REGISTRY.build("noise", n)).corrupt_at is NoiseModel.corrupt_at]


@pytest.mark.parametrize("name", _MASK_NOISES)
@given(mask=masks(num_classes=3), seed=st.integers(0, 2**32 - 1))
def test_every_noise_model_takes_degenerate_masks(name: str, mask: np.ndarray, seed: int) -> None:
    out = _REGISTRY.build("noise", name).corrupt(mask.copy(), np.random.default_rng(seed), 3)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert out.min() >= 0 and out.max() < 3


@given(pred=st.lists(masks(num_classes=3), min_size=2, max_size=2),
       truth=st.lists(masks(num_classes=3), min_size=2, max_size=2))
def test_every_metric_takes_degenerate_masks(pred: list[np.ndarray], truth: list[np.ndarray]) -> None:
    result = evaluate(np.stack(pred), np.stack(truth), 3, distances=True)
    diagonal = math.hypot(SIZE, SIZE)
    for key, value in result.items():
        assert not math.isinf(value), key
        if math.isnan(value):   # nothing to score: the class is in no prediction and no truth
            continue
        if key.startswith(("dice", "iou")):
            assert 0 <= value <= 1, key
        if key.startswith("hd"):
            assert 0 <= value <= diagonal + 1e-9, key


@pytest.mark.parametrize("name", _REGISTRY.names("reweighter"))
@settings(max_examples=8)
@given(batch=st.lists(masks(), min_size=4, max_size=4))
def test_one_training_step_of_every_reweighter(name: str, batch: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    run = cpu_run_context(2)
    model = run.build_model()
    optimizer = run.make_optimizer(model.parameters())
    labels = torch.from_numpy(np.stack(batch))
    run.clean_labels = labels.clone()  # this batch is the training set, its truth (for the oracle)
    reweighter = _REGISTRY.build("reweighter", name)
    reweighter.setup(run)
    images = labels[:, None].float() + 0.1 * torch.randn(4, 1, SIZE, SIZE)
    meta = (images[:2].clone(), labels[:2].clone()) if reweighter.needs_meta_batch else None
    batch = Batch(images, labels, meta, index=torch.arange(4), clean_labels=labels.clone())
    out = train_step(model, optimizer, reweighter, batch, 0, 0, torch.device("cpu"))
    assert math.isfinite(out.loss)
    assert torch.isfinite(out.weights).all() and (out.weights >= 0).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
