"""Every registered component runs through the same contract checks (timm style)."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisyseg import Registry, build_plugin_manager
from noisyseg.testing import CHECKS
from tests.conftest import write_folder_dataset

_REGISTRY = Registry(build_plugin_manager())

# options that keep a component's check fast; every registered name still runs
FAST_OPTIONS = {
    ("dataset", "synthetic"): {"n_train": 6, "n_meta": 2, "n_test": 3, "size": 32,
                               "max_radius": 6.0},
    ("backbone", "smp"): {"encoder_name": "resnet18"},
    ("noise", "pseudo"): {"images": 2, "epochs": 2, "batch_size": 2, "base_channels": 4, "depth": 1},
}


def _cases() -> list[tuple[str, str]]:
    return [(kind, name) for kind in CHECKS for name in _REGISTRY.names(kind)]


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=lambda v: str(v))
def test_contract(kind: str, name: str, tmp_path: Path) -> None:
    options = dict(FAST_OPTIONS.get((kind, name), {}))
    if (kind, name) == ("dataset", "folder"):
        options["root"] = str(write_folder_dataset(tmp_path / "data"))
    CHECKS[kind](_REGISTRY.get(kind, name), options)


def test_smp_timm_encoder_builds() -> None:
    """A timm `tu-` encoder through smp, on a size that is not a multiple of 32."""
    import torch

    backbone = _REGISTRY.build("backbone", "smp", {"arch": "FPN", "encoder_name": "tu-resnet10t"})
    net = backbone.build(1, 3)
    assert net(torch.randn(1, 1, 48, 40)).shape == (1, 3, 48, 40)
