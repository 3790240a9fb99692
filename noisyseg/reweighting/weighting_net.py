"""A base for reweighters that learn a weighting network through the virtual step
(:mod:`noisyseg.reweighting.virtual_step`): subclasses supply the network; this class runs the iteration

    1. L = loss map at W_t;  R_t = G(L; Theta_t)
    2. W'(Theta) = W_t - alpha * grad_W mean(R_t * L)                     (virtual step)
    3. Theta_{t+1} = Theta_t - beta * grad_Theta mean CE(F(X^; W'), Y^)    (meta step)
    4. R_{t+1} = G(L; Theta_{t+1}) without grad: the weights of the real step

(Wang et al. 2020, Eqs. 3-5; Shu et al. 2019, Eqs. 4-6). Step 4 reuses the loss map of step 1:
the training batch is forwarded once. With ``interval`` k > 1 the meta step runs every k-th
iteration and the network is only applied in between.

Among several processes (:mod:`noisyseg.distributed`) steps 1, 2 and 4 are local: each process
makes the virtual step from its own share of the batch and scores the meta loss on its own share
of the meta batch; the gradients of step 3 are averaged over the processes before the Adam step,
so every process holds the same weighting net.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from noisyseg.components import Reweighter, RunContext, StepContext
from noisyseg.reweighting.virtual_step import meta_gradient, meta_pixel_gradient


class MetaNetOptions(BaseModel):
    """Settings shared by the reweighters that learn a weighting network."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1e-2, gt=0, description="learning rate of the virtual step")
    meta_lr: float = Field(1e-3, gt=0, description="Adam learning rate (beta) of the weighting net")
    interval: int = Field(1, ge=1, description="meta step every k-th iteration")
    interval_max: int | None = Field(
        None, ge=1, description="adaptive interval: it grows linearly from `interval` at the first "
        "step to this at the last (meta steps often while the net learns, rarely later); null: fixed")
    virtual: Literal["sgd", "adam"] = Field(
        "sgd", description="virtual step: plain SGD (the paper's Eq. 3) or differentiable Adam")
    method: Literal["auto", "higher", "jvp"] = Field(
        "auto", description="meta-gradient: higher (double backward through the virtual step) or "
        "jvp (forward-mode AD, same result, SGD virtual step only); auto picks jvp when it applies")
    first_order: bool = Field(
        False, description="jvp method only: take the meta gradient at W instead of W' (one "
        "backward pass less, error O(alpha))")
    meta_layers: int | None = Field(
        None, ge=1, description="jvp method only: the virtual step in the parameters of the last k "
        "modules alone, the rest fixed (cheaper, approximate; null: every parameter, exact)")
    normalize: bool = Field(
        True, description="scale the weights to mean 1 per batch (without it the net learns to "
        "raise every weight, most on the corrupted high-loss pixels; see docs/methods/index.md)")
    normalize_per: Literal["batch", "class"] = Field(
        "batch", description="with normalize: mean 1 over the whole batch, or within each label "
        "class of the batch (weight then moves among the pixels of one class, never between "
        "classes: the class balance stays the labels')")
    warmup_epochs: int = Field(0, ge=0, description="plain training (weights 1) for these epochs")
    init_bias: float = Field(0.0, description="initial bias of the net's output (sigmoid input)")
    temperature: float = Field(
        1.0, gt=0, description="the weight is sigmoid(logit / temperature): below 1 the same "
        "logits give sharper weights (nearer 0 and 1), in the meta step and the real step alike")

    @model_validator(mode="after")
    def _check(self) -> MetaNetOptions:
        if self.method == "jvp" and self.virtual != "sgd":
            raise ValueError("method 'jvp' needs virtual = 'sgd'")
        if self.first_order and (self.method == "higher" or self.virtual != "sgd"):
            raise ValueError("first_order needs the jvp method (virtual = 'sgd')")
        if self.interval_max is not None and self.interval_max < self.interval:
            raise ValueError(f"interval_max ({self.interval_max}) must be >= interval "
                             f"({self.interval}); set interval_max=null for a fixed interval")
        if self.meta_layers is not None and (self.method == "higher" or self.virtual != "sgd"):
            raise ValueError("meta_layers needs the jvp method (virtual = 'sgd')")
        return self


def takes_meta_step(step: int, total: int, first: int, last: int | None) -> bool:
    """Whether ``step`` (from 0) takes a meta step: every ``first``-th step, or with ``last``, an
    interval that grows linearly from ``first`` at step 0 to ``last`` at step ``total``. Then
    phi(s) = T / (b - a) * ln(1 + (b - a) s / (a T)) meta steps are due by step s (the integral of
    1 / interval), and a step takes one when floor(phi) moves on: a function of the step alone,
    so a resumed run takes the same meta steps; about T ln(b / a) / (b - a) in all."""
    if last is None or last == first or total <= 0:
        return step % first == 0
    a, b, t = float(first), float(last), float(total)

    def due(s: int) -> int:
        return math.floor(t / (b - a) * math.log1p((b - a) * s / (a * t)))

    return step == 0 or due(step) > due(step - 1)


def per_class_mean_one(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scale the weights of each label class to mean 1 (a class whose weights are all zero stays
    zero): differentiable in ``weights``.

    Shape:
        weights, labels - the same shape; returns that shape
    """
    scale = torch.zeros_like(weights)
    for c in labels.unique():
        member = labels == c
        mean = weights[member].mean()
        scale = torch.where(member, 1.0 / mean.clamp_min(1e-12), scale)
    return weights * scale


class MetaNetReweighter(Reweighter):
    """Learns a weighting net G(loss map) on a clean meta set (subclasses give the net)."""

    needs_meta_batch = True
    #: the virtual step's gradients are not scaled by fp16's gradient scaler (bf16 works)
    supports_fp16 = False
    Options = MetaNetOptions
    options: MetaNetOptions

    def build_net(self) -> nn.Module:
        """The weighting network: (N, 1, H, W) detached loss map -> (N, 1, H, W) or (N, 1, 1, 1)
        logits (the sigmoid is applied here). Called in :meth:`setup` with ``self.run`` set: for
        volumes (``self.run.spatial_dims == 3``) it maps (N, 1, D, H, W) to (N, 1, D, H, W) or
        (N, 1, 1, 1, 1)."""
        raise NotImplementedError

    def setup(self, run: RunContext) -> None:
        self.run = run
        generator_state = torch.get_rng_state()
        torch.manual_seed(run.seed + 7919)   # the net's init does not shift the model's RNG stream
        self.net = self.build_net().to(run.device)
        torch.set_rng_state(generator_state)
        run.world.broadcast_module(self.net)
        self.net_optimizer = torch.optim.Adam(self.net.parameters(), lr=self.options.meta_lr)
        self.last_meta_loss = float("nan")

    def net_input(self, loss_map: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """What the weighting net reads: the detached loss map as one channel (a subclass may
        add channels).

        Shape:
            loss_map, labels - (N, H, W) or (N, D, H, W); returns (N, C, H, W) or (N, C, D, H, W)
        """
        return loss_map.detach().unsqueeze(1)

    def weights(self, loss_map: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """R = G(L): the detached loss map (and the labels, for ``normalize_per = class`` or a
        net that reads them) -> weights (differentiable in Theta).

        Shape:
            loss_map, labels - (N, H, W) or, for volumes, (N, D, H, W); returns the same shape
        """
        logits = self.net(self.net_input(loss_map, labels))
        r = torch.sigmoid(logits / self.options.temperature).squeeze(1)
        r = r.expand_as(loss_map)
        if self.options.normalize:
            if self.options.normalize_per == "class" and labels is not None:
                r = per_class_mean_one(r, labels)
            else:
                r = r / r.mean().clamp_min(1e-12)
        return r

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        o = self.options
        if ctx.epoch < o.warmup_epochs:
            return torch.ones_like(ctx.loss_map)
        if takes_meta_step(ctx.step, self.run.epochs * self.run.steps_per_epoch, o.interval,
                           o.interval_max):
            self.meta_step(ctx)
        with torch.no_grad():
            return self.weights(ctx.loss_map, ctx.labels)

    def preview(self, ctx: StepContext) -> torch.Tensor:
        with torch.no_grad():
            return self.weights(ctx.loss_map, ctx.labels)

    def meta_step(self, ctx: StepContext) -> None:
        """Steps 1-3: one Adam step of the weighting net on the meta loss at W'."""
        assert ctx.meta_images is not None and ctx.meta_labels is not None
        o = self.options
        r = self.weights(ctx.loss_map, ctx.labels)
        self.net_optimizer.zero_grad(set_to_none=True)
        if self.use_pixel_path:
            meta_loss, d_r = meta_pixel_gradient(
                ctx.model, ctx.images, ctx.labels, ctx.loss_map, r, ctx.meta_images,
                ctx.meta_labels, self.run.loss_fn, o.alpha, o.first_order, o.meta_layers,
                precision=self.run.precision)
            r.backward(d_r)
        else:
            params = list(self.net.parameters())
            meta_loss, grads = meta_gradient(
                ctx.model, ctx.loss_map, r, ctx.meta_images, ctx.meta_labels, params,
                self.run.loss_fn, o.alpha, o.virtual, ctx.optimizer, precision=self.run.precision)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        self.run.world.average_gradients(self.net.parameters())  # one net in every process
        self.net_optimizer.step()
        self.last_meta_loss = float(meta_loss)

    @property
    def use_pixel_path(self) -> bool:
        """Whether dL^/dR comes from :func:`meta_pixel_gradient` (jvp), not higher."""
        return self.options.method == "jvp" or (
            self.options.method == "auto" and self.options.virtual == "sgd")

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.net_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net_optimizer.load_state_dict(state["optimizer"])
