"""Contract checks every component must pass, exported so that third-party plugin packages can
run them on their own components:

    from noisyseg.testing import check_reweighter
    def test_my_reweighter():
        check_reweighter(MyReweighter)

Each ``check_*`` takes a component class (built with default options unless ``options`` is
given) and raises AssertionError with a readable message when the contract is broken.
:data:`CHECKS` maps each kind of :data:`noisyseg.kinds.KINDS` to its check (the kind's
``check_name``), so a test can run every registered component through its kind's check.

The checks live in :mod:`noisyseg.contract_data` (dataset, noise model, backbone) and
:mod:`noisyseg.contract_methods` (loss, reweighter, label corrector, recipe); the fixtures they
and the tests use (:func:`tiny_run_config`, :func:`cpu_run_context`, :func:`random_masks` ...)
in :mod:`noisyseg.fixtures`. All are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from noisyseg.contract_data import check_backbone, check_dataset, check_noise_model
from noisyseg.contract_methods import check_corrector, check_loss, check_recipe, check_reweighter
from noisyseg.fixtures import (
    cpu_run_context,
    label_fields,
    monai_metrics,
    random_masks,
    saved_and_loaded,
    tiny_model,
    tiny_run_config,
)
from noisyseg.kinds import KINDS

__all__ = [
    "CHECKS", "check_backbone", "check_corrector", "check_dataset", "check_loss", "check_noise_model",
    "check_recipe", "check_reweighter", "cpu_run_context", "label_fields", "monai_metrics",
    "random_masks", "saved_and_loaded", "tiny_model", "tiny_run_config",
]

#: kind key -> its contract check (the function named by the kind's ``check_name``)
CHECKS: dict[str, Callable[..., Any]] = {key: globals()[kind.check_name] for key, kind in KINDS.items()}
