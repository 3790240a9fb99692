"""PLC on hand-built predictions: exactly the confident disagreeing pixels flip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from noisyseg_plc import PLCOptions, plc_delta

from noisyseg import ConfigError, Registry
from noisyseg.testing import cpu_run_context


def _plc(registry: Registry, labels: torch.Tensor, num_classes: int = 2, **options: object):
    corrector = registry.build("corrector", "plc", {"warmup_epochs": 0, **options})
    corrector.setup(labels, cpu_run_context(num_classes))
    return corrector


def _probs(predicted: torch.Tensor, confidence: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K, H, W) probabilities with the given argmax and its probability."""
    rest = (1 - confidence) / (num_classes - 1)
    probs = rest.unsqueeze(1).repeat(1, num_classes, 1, 1)
    return probs.scatter(1, predicted.unsqueeze(1), confidence.unsqueeze(1))


def test_flips_exactly_the_confident_disagreeing_pixels(registry: Registry) -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # (1, 2, 4)
    predicted = torch.tensor([[[1, 1, 1, 0], [0, 1, 0, 1]]])
    confidence = torch.tensor([[[0.97, 0.90, 0.99, 0.96], [0.99, 0.951, 0.949, 0.6]]])
    plc = _plc(registry, labels)
    plc.observe(torch.tensor([0]), _probs(predicted, confidence, 2))
    assert torch.equal(plc.labels(torch.tensor([0])), labels), "flips wait for the epoch's end"
    metrics = plc.end_epoch(0)
    expected = torch.tensor([[[1, 0, 1, 0], [0, 1, 1, 1]]])
    assert torch.equal(plc.labels(torch.tensor([0])), expected)
    assert metrics == {"plc_delta": 0.95, "plc_flipped": 3.0}


def test_multiclass_flips_to_the_predicted_class(registry: Registry) -> None:
    labels = torch.tensor([[[0, 1, 2]]])
    predicted = torch.tensor([[[2, 0, 2]]])
    plc = _plc(registry, labels, num_classes=3)
    plc.observe(torch.tensor([0]), _probs(predicted, torch.full((1, 1, 3), 0.98), 3))
    plc.end_epoch(0)
    assert plc.labels(torch.tensor([0])).tolist() == [[[2, 0, 2]]]


def test_warmup_and_threshold_schedule(registry: Registry) -> None:
    options = PLCOptions(warmup_epochs=2)
    deltas = [plc_delta(e, options) for e in range(20)]
    assert deltas[:3] == [0.95, 0.95, 0.95]
    assert deltas[3] == pytest.approx(0.95 * 0.99) and deltas[4] == pytest.approx(0.95 * 0.99**2)
    assert min(deltas) == 0.85 and deltas[-1] == 0.85
    assert all(a >= b for a, b in zip(deltas, deltas[1:], strict=False))

    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    plc = _plc(registry, labels, warmup_epochs=2)
    sure = _probs(torch.ones(1, 1, 2, dtype=torch.long), torch.full((1, 1, 2), 0.99), 2)
    for epoch in range(2):  # warm-up: predictions are ignored
        plc.observe(torch.tensor([0]), sure)
        assert plc.end_epoch(epoch)["plc_flipped"] == 0
    plc.observe(torch.tensor([0]), sure)
    assert plc.end_epoch(2)["plc_flipped"] == 2


def test_a_pixel_flips_once_delta_has_decayed_below_its_confidence(registry: Registry) -> None:
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    plc = _plc(registry, labels)
    probs = _probs(torch.ones(1, 1, 1, dtype=torch.long), torch.full((1, 1, 1), 0.9), 2)
    flipped_at = None
    for epoch in range(10):
        plc.observe(torch.tensor([0]), probs)
        if plc.end_epoch(epoch)["plc_flipped"]:
            flipped_at = epoch
            break
    # 0.95 * 0.99^e < 0.9 first for e = 6
    assert flipped_at == 6


def test_every_steps_applies_flips_during_the_epoch(registry: Registry) -> None:
    labels = torch.zeros(2, 1, 2, dtype=torch.long)
    plc = _plc(registry, labels, every_steps=1)
    sure = _probs(torch.ones(1, 1, 2, dtype=torch.long), torch.full((1, 1, 2), 0.99), 2)
    plc.observe(torch.tensor([1]), sure)
    assert plc.labels(torch.tensor([0, 1])).tolist() == [[[0, 0]], [[1, 1]]]
    assert plc.end_epoch(0)["plc_flipped"] == 2


@pytest.mark.parametrize("store", ["memory", "memmap"])
def test_label_store_survives_save_and_load(registry: Registry, tmp_path: Path, store: str) -> None:
    labels = torch.randint(0, 2, (3, 8, 8))
    options = {"store": store, "store_dir": str(tmp_path / "a")}
    plc = _plc(registry, labels, **options)
    torch.manual_seed(0)
    plc.observe(torch.tensor([0, 2]), torch.softmax(4 * torch.randn(2, 2, 8, 8), dim=1))
    plc.end_epoch(0)
    corrected = plc.labels(torch.arange(3))
    assert not torch.equal(corrected, labels)
    torch.save(plc.state_dict(), tmp_path / "state.pt")
    fresh = _plc(registry, labels, **{**options, "store_dir": str(tmp_path / "b")})
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert torch.equal(fresh.labels(torch.arange(3)), corrected)
    assert fresh.delta == plc.delta


def test_bad_options_name_the_field(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="delta_min"):
        registry.build("corrector", "plc", {"delta": 0.9, "delta_min": 0.95})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        registry.build("corrector", "plc", {"warmup_epochs": -1})
