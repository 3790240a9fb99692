"""``l2rw``: learning to reweight examples.

Reference: Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018,
Algorithm 1: weights eps = 0 (per pixel by default, or per image) enter a virtual step
W' = W - alpha * grad_W mean(eps * L) (Eq. 4); g = grad_eps of the clean meta loss at W' (Eq. 5);
w = max(-g, 0) (Eq. 6), normalised to sum to the number of weights (Eq. 7, rescaled so the mean
weight is 1; all-zero stays zero). No weighting network: nothing is learned across steps.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisyseg import Reweighter, RunContext, StepContext, hookimpl, mean_one
from noisyseg.reweighting.virtual_step import meta_gradient, meta_pixel_gradient


class L2RWOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1e-2, gt=0, description="learning rate of the virtual step")
    per: Literal["pixel", "image"] = Field("pixel", description="one weight per pixel or per image")
    virtual: Literal["sgd", "adam"] = Field(
        "sgd", description="virtual step: plain SGD (Algorithm 1) or differentiable Adam")
    method: Literal["auto", "higher", "jvp"] = Field(
        "auto", description="meta-gradient: higher (double backward) or jvp (forward-mode AD, "
        "SGD virtual step only); auto picks jvp when it applies")
    meta_layers: int | None = Field(
        None, ge=1, description="jvp method only: the virtual step in the parameters of the last k "
        "modules alone, the rest fixed (cheaper, approximate; null: every parameter, exact)")

    @model_validator(mode="after")
    def _check(self) -> L2RWOptions:
        if self.method == "jvp" and self.virtual != "sgd":
            raise ValueError("method 'jvp' needs virtual = 'sgd'")
        if self.meta_layers is not None and (self.method == "higher" or self.virtual != "sgd"):
            raise ValueError("meta_layers needs the jvp method (virtual = 'sgd')")
        return self


class L2RWReweighter(Reweighter):
    """Learning to reweight: weights from the meta-gradient sign of each pixel (or image)."""

    name = "l2rw"
    Options = L2RWOptions
    options: L2RWOptions
    needs_meta_batch = True
    #: the virtual step's gradients are not scaled by fp16's gradient scaler (bf16 works)
    supports_fp16 = False

    def setup(self, run: RunContext) -> None:
        self.run = run

    def eps_gradient(self, ctx: StepContext) -> torch.Tensor:
        """d meta loss / d eps at eps = 0.

        Shape:
            returns (N, H, W) per pixel, (N, 1, 1) per image; for volumes (N, D, H, W) and
            (N, 1, 1, 1)
        """
        assert ctx.meta_images is not None and ctx.meta_labels is not None
        o = self.options
        loss = ctx.loss_map
        spatial = tuple(range(1, loss.ndim))
        if o.method == "jvp" or (o.method == "auto" and o.virtual == "sgd"):
            _, g = meta_pixel_gradient(
                ctx.model, ctx.images, ctx.labels, loss, torch.zeros_like(loss),
                ctx.meta_images, ctx.meta_labels, self.run.loss_fn, o.alpha, layers=o.meta_layers,
                precision=self.run.precision)
            return g.sum(dim=spatial, keepdim=True) if o.per == "image" else g
        shape = (loss.shape[0], *(1 for _ in spatial)) if o.per == "image" else loss.shape
        eps = torch.zeros(shape, device=loss.device, dtype=loss.dtype, requires_grad=True)
        _, (g,) = meta_gradient(ctx.model, loss, eps.expand_as(loss), ctx.meta_images,
                                ctx.meta_labels, [eps], self.run.loss_fn, o.alpha, o.virtual,
                                ctx.optimizer, precision=self.run.precision)
        return g

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        w = mean_one(torch.clamp(-self.eps_gradient(ctx), min=0))
        return w.expand_as(ctx.loss_map).detach()

    def preview(self, ctx: StepContext) -> torch.Tensor:
        return self.weigh(ctx)  # nothing is learned across steps


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [L2RWReweighter]
