"""ADELE: the end of early learning from the IoU curve, the correction rule, a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from noisyseg_adele import early_learning_ended

import noisyseg
from noisyseg import Registry, build_plugin_manager
from noisyseg.testing import cpu_run_context


def test_a_plateau_ends_early_learning_and_a_steady_rise_does_not() -> None:
    plateau = [0.5, 0.75, 0.85, 0.88, 0.89, 0.895]
    assert early_learning_ended(plateau, 0.9, 20)
    assert not early_learning_ended([0.1 * i for i in range(1, 7)], 0.9, 20)
    assert not early_learning_ended([0.5, 0.75], 0.9, 20)  # too few points to fit


def corrector(**options: object) -> noisyseg.LabelCorrector:
    return Registry(build_plugin_manager()).build("corrector", "adele", dict(options))


def test_confident_predictions_replace_labels_once_the_class_plateaus() -> None:
    c = corrector(tau_fg=0.7, tau_bg=0.7)
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[0, 2:6, 2:6] = 1  # a dilated square: its rim 2:6 minus 3:5 is wrong
    c.setup(labels, cpu_run_context(2))
    c.total_epochs = 20
    fg = torch.zeros(2, 8, 8)
    fg[0, 3:5, 3:5] = 0.95  # the network is sure of the true core
    fg[0, 2, 2] = 0.6  # ... and unsure of one rim pixel
    probs = torch.stack([1 - fg, fg], dim=1)
    c.iou[1] = [0.5, 0.75, 0.85, 0.88]  # history: a plateau
    c.observe(torch.arange(2), probs)
    out = c.end_epoch(4)
    new = c.labels(torch.arange(2))
    assert out["adele_classes_corrected"] == 1.0 and c.detected[1] == 4
    assert new[0, 3:5, 3:5].eq(1).all()
    assert new[0, 2, 2] == 1  # not confident enough to be background: kept
    assert new[0, 2, 3] == 0 and new[0, 5, 5] == 0  # confident background rim: corrected
    assert new[1].eq(0).all()  # an image without the class is left alone
    assert out["adele_changed"] == 16 - 4 - 1


def test_no_correction_before_the_plateau_and_state_round_trips(tmp_path: Path) -> None:
    c = corrector()
    labels = torch.ones(1, 4, 4, dtype=torch.int64)
    c.setup(labels, cpu_run_context(2))
    probs = torch.stack([torch.ones(1, 4, 4), torch.zeros(1, 4, 4)], dim=1)  # sure: background
    for epoch in range(2):
        c.observe(torch.arange(1), probs)
        assert c.end_epoch(epoch)["adele_changed"] == 0
    fresh = corrector()
    fresh.setup(labels, cpu_run_context(2))
    fresh.load_state_dict(c.state_dict())
    assert fresh.iou == c.iou and fresh.detected == c.detected


def test_adele_run_corrects_labels(tmp_path: Path) -> None:
    result = noisyseg.run(
        dataset={"name": "synthetic", "options": {"n_train": 64, "n_meta": 8, "n_test": 8,
                                                  "size": 32, "max_radius": 6.0}},
        backbone={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        noise={"name": "dilation", "rate": 0.8}, corrector={"name": "adele",
                                                            "options": {"correct_every": 1}},
        train={"epochs": 5, "batch_size": 16}, output={"dir": str(tmp_path / "a"), "figure_images": 0},
        progress=False)
    changed = sum(h["labels_changed"] for h in result.history)
    assert changed > 0 and np.isfinite(result.metrics["dice"])
    assert all("adele_iou_class1" in h for h in result.history)
