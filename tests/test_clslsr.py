"""clslsr: confident learning flags what cleanlab flags, and flagged pixels train on a smoothed
label in expectation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cleanlab.filter import find_label_issues
from noisyseg_clslsr import CLSLSRCorrector

from noisyseg.testing import cpu_run_context, random_masks, saved_and_loaded


def _corrector(labels: torch.Tensor, **options: object) -> CLSLSRCorrector:
    corrector = CLSLSRCorrector(CLSLSRCorrector.Options.model_validate(options))
    corrector.setup(labels, cpu_run_context(2))
    return corrector


def _flagged(seed: int = 0) -> tuple[CLSLSRCorrector, torch.Tensor, torch.Tensor, np.ndarray]:
    """A corrector after its detection epoch on noisy labels, probabilities that follow the truth."""
    rng = np.random.default_rng(seed)
    truth = torch.from_numpy(random_masks(8, 16, 2, seed=seed))
    noisy = truth.clone()
    noisy[:4, :, :3] = 1 - noisy[:4, :, :3]                    # a wrong band in half the images
    p1 = np.clip(truth.numpy() * 0.8 + 0.1 + rng.normal(0, 0.05, truth.shape), 0.01, 0.99)
    probs = torch.from_numpy(np.stack([1 - p1, p1], axis=1)).float()
    corrector = _corrector(noisy, detect_epoch=1)
    corrector.observe(torch.arange(8), probs)
    metrics = corrector.end_epoch(0)
    assert set(metrics) >= {"clslsr_flagged"}
    return corrector, noisy, truth, probs.half().float().numpy()


def test_the_flags_are_cleanlabs_and_find_the_wrong_band() -> None:
    corrector, noisy, truth, probs = _flagged()
    flat = probs.transpose(0, 2, 3, 1).reshape(-1, 2)
    flat = flat / flat.sum(axis=1, keepdims=True)
    want = find_label_issues(labels=noisy.reshape(-1).numpy(), pred_probs=flat.astype(np.float64),
                             filter_by="both", n_jobs=1).reshape(noisy.shape)
    assert np.array_equal(corrector.flags.numpy(), want)
    wrong = noisy != truth
    assert (corrector.flags & wrong).sum() / corrector.flags.sum() > 0.9       # precision
    assert (corrector.flags & wrong).sum() / wrong.sum() > 0.5                 # recall (0.71)


def test_flagged_pixels_take_the_other_label_at_rate_eps_and_the_draw_is_reproducible() -> None:
    corrector, noisy, _, _ = _flagged()
    index = torch.arange(8)
    first = corrector.labels(index)
    switched = first != noisy
    assert not (switched & ~corrector.flags).any()
    assert switched.sum() / corrector.flags.sum() == pytest.approx(0.25, abs=0.06)
    assert torch.equal(corrector.labels(index), first)            # the same epoch draws the same
    corrector.end_epoch(1)
    assert not torch.equal(corrector.labels(index), first)        # a new epoch draws anew

    fresh = _corrector(noisy, detect_epoch=1)
    fresh.load_state_dict(saved_and_loaded(corrector.state_dict()))
    assert torch.equal(fresh.labels(index), corrector.labels(index))


def test_three_classes_switch_to_each_other_class_evenly() -> None:
    labels = torch.zeros(4, 32, 32, dtype=torch.int64)
    corrector = _corrector(labels)
    corrector.num_classes = 3
    corrector.flags = torch.ones_like(labels, dtype=torch.bool)
    drawn = corrector.labels(torch.arange(4))
    counts = torch.bincount(drawn.flatten(), minlength=3).float() / drawn.numel()
    assert counts[0] == pytest.approx(0.75, abs=0.03)
    assert counts[1] == pytest.approx(0.125, abs=0.03) and counts[2] == pytest.approx(0.125, abs=0.03)


def test_a_detection_epoch_past_the_run_is_refused() -> None:
    from noisyseg import ConfigError

    with pytest.raises(ConfigError, match="detect_epoch \\(3\\) is past the run's last epoch \\(2\\)"):
        _corrector(torch.zeros(2, 8, 8, dtype=torch.int64), detect_epoch=3)
