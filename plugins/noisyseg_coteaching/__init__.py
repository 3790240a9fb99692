"""``coteaching``: co-teaching at pixel level.

Reference: Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
Labels", NeurIPS 2018 (Algorithm 1). Two networks: A is the loop's model (the one evaluated, saved
and drawn), B a peer of the same backbone with its own initialisation and optimiser, owned by this
reweighter. Each step each network ranks the batch's pixels by its own loss and keeps the
(1 - forget_rate(t)) smallest (Alg. 1, steps 4-5); A learns from the pixels B kept (the weight map
returned to the loop) and B from those A kept (stepped here, steps 6-7).
forget_rate(t) = tau * min(t / T_k, 1) with t the epoch: Alg. 1, step 8 keeps R(T) = 1 - forget_rate.

Han et al. set tau to the noise rate, assumed known. Here the noise is per pixel, so tau defaults
to the fraction of training *pixels* the configured noise model changed; the image rate r would
forget far too much (r = 0.4 forgets 40% of all pixels, most of the foreground with them).

The weights are ``kept / fraction kept``, so the loop's ``mean(w * L)`` is the mean loss over the
kept pixels, as in the paper. The peer follows the main optimiser's learning rate (its schedule).

Among several processes each ranks the pixels of its own share of the batch; the peer's gradients
are averaged over the processes (its parameters stay identical; its BatchNorm running statistics
are each process's own and only matter for the pictures).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import ConfigError, Reweighter, RunContext, StepContext, hookimpl


class CoteachingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tau: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="final forget rate (a fraction of pixels); None: the fraction of training pixels "
        "the configured noise model changed",
    )
    num_gradual: int = Field(5, ge=0, description="T_k: epochs over which the forget rate rises to tau")
    rank_within: Literal["batch", "image"] = Field(
        "batch", description="rank the pixels of the whole batch together, or of each image alone"
    )


def forget_rate(epoch: int, tau: float, num_gradual: int) -> float:
    """R(t) = tau * min(t / T_k, 1) (Han et al., Alg. 1); T_k = 0 forgets tau from the start."""
    if num_gradual == 0:
        return tau
    return tau * min(epoch / num_gradual, 1.0)


def small_loss_mask(loss: torch.Tensor, keep: float, per_image: bool = False) -> torch.Tensor:
    """True on the ``round(keep * n)`` smallest losses (at least one), over the batch or per image.

    Shape:
        loss - (N, H, W); returns (N, H, W) bool
    """
    flat = loss.detach().reshape(loss.shape[0], -1) if per_image else loss.detach().reshape(1, -1)
    k = max(1, round(keep * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, torch.topk(flat, k, dim=1, largest=False).indices, True)
    return mask.reshape(loss.shape)


class CoteachingReweighter(Reweighter):
    """Co-teaching: a peer network picks the small-loss pixels this one learns from, and back."""

    name = "coteaching"
    Options = CoteachingOptions

    def setup(self, run: RunContext) -> None:
        self.run = run
        self.tau = self.options.tau if self.options.tau is not None else run.pixel_noise_rate
        if self.options.tau is None and run.pixel_noise_rate == 0:
            raise ConfigError(
                "reweighter 'coteaching': set reweighter.options.tau to the fraction of pixels you "
                "believe mislabelled; it defaults to the fraction the configured noise model changed, "
                "and no noise is configured"
            )
        self.peer = run.build_model()
        run.world.broadcast_module(self.peer)
        self.peer.train()
        self.peer_optimizer = run.make_optimizer(self.peer.parameters())

    def keep_fraction(self, epoch: int) -> float:
        return 1.0 - forget_rate(epoch, self.tau, self.options.num_gradual)

    def _masks(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Pixels kept by the peer (for the main network), the peer's loss map, and the fraction."""
        keep = self.keep_fraction(ctx.epoch)
        peer_loss = self.run.loss_fn(self.peer(ctx.images), ctx.labels)
        kept_by_peer = small_loss_mask(peer_loss, keep, self.options.rank_within == "image")
        return kept_by_peer, peer_loss, kept_by_peer.float().mean().item()

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Train the peer on the pixels the main network kept; return the peer's choice.

        Shape:
            ctx.loss_map - (N, H, W); returns (N, H, W): kept / fraction kept, else 0
        """
        kept_by_peer, peer_loss, fraction = self._masks(ctx)
        kept_by_main = small_loss_mask(
            ctx.loss_map, self.keep_fraction(ctx.epoch), self.options.rank_within == "image"
        )
        for group in self.peer_optimizer.param_groups:  # the peer follows the main lr schedule
            group["lr"] = ctx.optimizer.param_groups[0]["lr"]
        self.peer_optimizer.zero_grad(set_to_none=True)
        (peer_loss * kept_by_main).sum().div(kept_by_main.sum()).backward()
        self.run.world.average_gradients(self.peer.parameters())
        self.peer_optimizer.step()
        return kept_by_peer.to(ctx.loss_map.dtype) / fraction

    @torch.no_grad()
    def preview(self, ctx: StepContext) -> torch.Tensor:
        """The peer's current choice for the main network, without a training step."""
        was_training = self.peer.training
        self.peer.eval()
        try:
            kept_by_peer, _, fraction = self._masks(ctx)
        finally:
            self.peer.train(was_training)
        return kept_by_peer.to(ctx.loss_map.dtype) / fraction

    def state_dict(self) -> dict[str, Any]:
        return {"peer": self.peer.state_dict(), "peer_optimizer": self.peer_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [CoteachingReweighter]
