"""``trunc``: ignore the q% largest-loss pixels of each image; ``trunc_finetune``: a recipe that
trains with it, then fine-tunes on the clean meta images.

A truncated loss, the simplest small-loss rule (cf. co-teaching's selection, Han et al. 2018,
without a peer network): pixels whose loss is in the top q% of their image get weight 0, the
others weight 1. It needs no clean meta set and costs one sort per image.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import Recipe, RecipeOptions, Reweighter, Stage, StepContext, hookimpl


class TruncOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: float = Field(10.0, ge=0.0, lt=100.0, description="percent of each image's pixels ignored")
    warmup_epochs: int = Field(1, ge=0, description="epochs with every weight 1 before truncating")


class TruncReweighter(Reweighter):
    """Truncated loss: zero weight on the q% largest-loss pixels of each image."""

    name = "trunc"
    Options = TruncOptions

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Shape: ctx.loss_map - (N, H, W); returns (N, H, W) of 0 and 1."""
        loss = ctx.loss_map.detach()
        n, pixels = loss.shape[0], loss[0].numel()
        drop = int(pixels * self.options.q / 100)
        weights = torch.ones_like(loss)
        if drop == 0 or ctx.epoch < self.options.warmup_epochs:
            return weights
        largest = torch.topk(loss.reshape(n, -1), drop, dim=1).indices
        return weights.reshape(n, -1).scatter(1, largest, 0.0).reshape(loss.shape)


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [TruncReweighter]


class TruncFinetuneRecipe(Recipe):
    """Train with the trunc reweighter, then fine-tune on the clean meta images."""

    name = "trunc_finetune"
    Options = RecipeOptions.defaults([
        Stage(name="train", set={"reweighter": {"name": "trunc"}}),
        Stage(name="finetune", start_from_previous=True, meta_only=True, lr_factor=0.1,
              step_share=0.2),
    ])


@hookimpl
def register_recipes() -> list[type[Recipe]]:
    return [TruncFinetuneRecipe]
