"""``oracle``: the ceiling of pixel reweighting. Weight 0 on every pixel whose training label is
wrong, 1 elsewhere, known from the clean masks the noise model corrupted.

It is not a method: real data does not come with its clean masks. It answers "how good can any
reweighter be?": a reweighter that finds the corrupted pixels perfectly can at best train as well
as this. It needs a run whose noise was added on purpose (``noise.rate > 0``); on a dataset's own
labels, whose truth is unknown, it stops with an error.

With a label corrector, the weights compare the labels trained on now (possibly corrected) with
the truth. ``normalise`` scales each batch's weights to mean 1 (as MCPM and L2RW do), so dropping
pixels does not also lower the learning rate. ``balance`` (a diagnostic) scales the kept pixels of
each class c by (pixels truly of class c) / (kept pixels labelled c): dropping the rims of dilated
masks removes background near objects, and this gives the background its weight back.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import ConfigError, NoisysegError, Reweighter, RunContext, StepContext, hookimpl, mean_one


class OracleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normalise: bool = Field(True, description="scale each batch's weights to mean 1")
    balance: bool = Field(False, description="give each class back its true share of the weight "
                                             "(the dropped pixels' classes are up-weighted)")
    per: Literal["pixel", "image"] = Field(
        "pixel", description="drop the wrong pixels (pixel), or every pixel of an image whose mask "
                             "holds any wrong label (image: the ceiling of choosing images)")


class OracleReweighter(Reweighter):
    """Ceiling: weight 0 on the pixels whose label is wrong (needs noise added on purpose)."""

    name = "oracle"
    Options = OracleOptions
    options: OracleOptions

    def setup(self, run: RunContext) -> None:
        if run.clean_labels is None:
            raise ConfigError(
                "reweighter 'oracle' needs the clean training masks, which a run knows only when "
                "its noise model corrupts them on purpose (noise.rate > 0 with a noise model "
                "other than 'none'); a dataset's own labels have no known truth"
            )

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Shape: returns (N, H, W): 0 where ``ctx.labels`` differs from the truth, else 1
        (scaled to mean 1 with ``normalise``)."""
        if ctx.clean_labels is None:
            raise NoisysegError("reweighter 'oracle' needs the batch's clean labels in the step context")
        truth = ctx.clean_labels
        kept = ctx.labels == truth
        if self.options.per == "image":  # a mask with one wrong label is dropped whole
            kept = kept.flatten(1).all(1).view(-1, *[1] * (kept.ndim - 1)).expand_as(kept)
        w = kept.to(ctx.loss_map.dtype)
        if self.options.balance:
            for c in torch.unique(truth).tolist():
                mine = kept & (ctx.labels == c)
                if mine.any():
                    w[mine] = float((truth == c).sum()) / float(mine.sum())
        return mean_one(w) if self.options.normalise else w

    def preview(self, ctx: StepContext) -> torch.Tensor:
        return self.weigh(ctx)


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [OracleReweighter]
