"""The baselines: the ``none`` reweighter (every pixel weighs 1) and the ``none`` corrector
(the noisy labels are used as they are)."""

from __future__ import annotations

import torch

from noisyseg import LabelCorrector, Reweighter, StepContext, hookimpl


class NoneReweighter(Reweighter):
    """Plain training: every pixel has weight 1."""

    name = "none"

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Shape: returns (N, H, W) ones like ``ctx.loss_map``."""
        return torch.ones_like(ctx.loss_map)


class NoneCorrector(LabelCorrector):
    """No correction: the labels stay as given."""

    name = "none"
    changes_labels = False


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [NoneReweighter]


@hookimpl
def register_label_correctors() -> list[type[LabelCorrector]]:
    return [NoneCorrector]
