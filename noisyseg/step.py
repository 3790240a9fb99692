"""One optimiser step on the reweighted per-pixel loss, and prediction: the pieces the training
loop (:mod:`noisyseg.loop`) and the benchmarks share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from noisyseg.components import LossFn, Reweighter, StepContext
from noisyseg.distributed import World
from noisyseg.errors import NoisysegError, NumericalError
from noisyseg.outputs import per_pixel_loss, predict
from noisyseg.precision import FP32, Precision, upcast
from noisyseg.window import sliding_probs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, back in the mode it was in after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def outputs_all(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64,
    apply: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The model's outputs for every image, in eval mode, a batch at a time (64 images or 4
    volumes), on the CPU; ``apply`` maps each batch's outputs first (e.g. to labels), so only
    what it returns is kept. Under autocast (``train.precision``, the caller's context) the
    outputs are cast to float32 first.

    Shape:
        images - (N, C, H, W) or (N, C, D, H, W); returns (N, ...) as the model (or ``apply``) gives
    """
    batch_size = batch_size if images.ndim == 4 else max(1, batch_size // 16)
    with eval_mode(model):
        return torch.cat([(apply or _same)(upcast(model(images[i : i + batch_size].to(device)))).cpu()
                          for i in range(0, len(images), batch_size)])


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def predict_all(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64,
    window: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Predicted labels (N, H, W) for images (N, C, H, W), or (N, D, H, W) for volumes, in eval
    mode. Images larger than ``window`` (the training patch's spatial size) along some axis are
    predicted by a sliding window of that size (:mod:`noisyseg.window`), one image at a time.
    A batch of 64 images, or of 4 volumes."""
    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.int64)
    if window is not None and any(s > w for s, w in zip(images.shape[2:], window, strict=True)):
        with eval_mode(model):
            return np.stack([sliding_probs(model, image.to(device), window).argmax(0).cpu().numpy()
                             for image in images])
    return outputs_all(model, images, device, batch_size, predict).numpy()


@dataclass
class Batch:
    """One training batch as the step takes it (augmented, when the config augments).

    Shape:
        images - (N, C, H, W); labels - (N, H, W), the labels trained on; meta - ((M, C, H, W),
        (M, H, W)) a clean meta batch, or None; index - (N,) the images' positions in the
        training set, or None; clean_labels - (N, H, W) their truth when the run knows it, or None
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: tuple[torch.Tensor, torch.Tensor] | None = None
    index: torch.Tensor | None = None
    clean_labels: torch.Tensor | None = None


@dataclass
class StepOutput:
    #: the step's loss, detached, 0-dim on the step's device (``float()`` reads it; NaN: skipped)
    loss: torch.Tensor
    weights: torch.Tensor = field(repr=False)
    logits: torch.Tensor = field(repr=False)
    skipped: bool = False


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    reweighter: Reweighter,
    batch: Batch,
    step: int,
    epoch: int,
    device: torch.device,
    *,
    grad_clip: float | None = None,
    on_nonfinite: str = "stop",
    apply_weights: bool = True,
    forward: nn.Module | None = None,
    world: World | None = None,
    loss_fn: LossFn = per_pixel_loss,
    precision: Precision = FP32,
    deferred: DeferredChecks | None = None,
) -> StepOutput:
    """One optimiser step on ``mean(w * L)`` with ``w`` from the reweighter.

    A NaN or infinite loss raises :class:`NumericalError`, or with ``on_nonfinite="skip"`` the
    step is not taken and the output's ``skipped`` is True; negative or non-finite weights are
    the reweighter's error (:class:`NoisysegError`). ``apply_weights=False``: the weights are
    computed and returned but the step takes the plain ``mean(L)``. ``forward`` runs the training
    forward (default ``model``; a DistributedDataParallel wrapper among several processes of
    ``world``, which then all stop or skip when the loss of any one is not finite).
    ``loss_fn`` makes the per-pixel loss map (the run's ``loss`` component; cross-entropy by
    default); parameters it learns (its ``parameters()``) get their gradients averaged over
    ``world`` like the network's. ``precision`` (train.precision): the forward runs under its
    autocast (the loss map is float32, see :func:`step_context`); with fp16 its gradient scaler
    scales the loss and steps the optimiser (a step whose gradients overflow is skipped by it).
    ``deferred``: with ``on_nonfinite="stop"`` in one process, the checks are kept there on the
    device instead of read now (no host synchronisation); the caller reads them every few steps
    (:meth:`DeferredChecks.verify`), which raises what this function would have raised.

    Shape:
        returns weights (N, H, W) and detached logits (N, K, H, W)
    """
    ctx = step_context(model, optimizer, batch, step, epoch, device, forward, loss_fn, precision)
    loss_map = ctx.loss_map
    weights = reweighter.weigh(ctx).detach()
    if weights.shape != loss_map.shape:
        raise _shape_error(reweighter, weights, loss_map)
    loss = (weights * loss_map).mean() if apply_weights else loss_map.mean()
    optimizer.zero_grad(set_to_none=True)
    verdict = _verdict(loss, loss_map, weights)
    if deferred is not None and on_nonfinite == "stop" and (world is None or world.size == 1):
        deferred.add(step, epoch, verdict)  # read later: this step does not wait for the device
    elif not _passes(verdict.tolist(), reweighter, step, epoch, on_nonfinite, world):  # one wait
        return StepOutput(loss=torch.full_like(loss, math.nan).detach(), weights=weights,
                          logits=ctx.logits.detach(), skipped=True)
    _backward_and_step(loss, model, optimizer, loss_fn, world, grad_clip, precision.scaler)
    return StepOutput(loss=loss.detach(), weights=weights, logits=ctx.logits.detach())


def _passes(verdict: list[float], reweighter: Reweighter, step: int, epoch: int,
            on_nonfinite: str, world: World | None) -> bool:
    """A step's checks, read from the device (:func:`_verdict`'s values): raise for invalid
    weights or, unless ``on_nonfinite`` is "skip", for a loss that is not finite in some process;
    False: skip it."""
    finite, map_finite, valid, loss, bad, example = verdict
    if not valid and map_finite:  # the reweighter's own fault, not a diverging network's
        raise _weights_error(reweighter, int(bad), example, step, epoch)
    if (world or World()).all_true(bool(finite)):
        return True
    if on_nonfinite == "skip":
        return False
    what = f"loss is {loss}" if not finite else "the loss of another process is not finite"
    raise NumericalError(f"{what} at step {step} (epoch {epoch + 1})")


def _backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                       loss_fn: LossFn, world: World | None, grad_clip: float | None,
                       scaler: torch.amp.GradScaler | None) -> None:
    """Backward, the learned loss parameters' gradients averaged over ``world``, the gradient
    clipped, the optimiser step; with fp16's ``scaler`` the loss scaled, the gradients unscaled
    before clipping, and the step taken (or skipped on overflow) by the scaler."""
    (loss if scaler is None else scaler.scale(loss)).backward()
    learned = list(loss_fn.parameters()) if hasattr(loss_fn, "parameters") else []
    if world is not None:
        world.average_gradients(learned)
    if grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_([*model.parameters(), *learned], grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _shape_error(reweighter: Reweighter, weights: torch.Tensor, loss_map: torch.Tensor) -> NoisysegError:
    """The error of a reweighter whose weights do not have the loss map's shape."""
    return NoisysegError(
        f"reweighter '{reweighter.name}' returned weights of shape {tuple(weights.shape)}, "
        f"expected {tuple(loss_map.shape)}"
    )


def _weights_error(reweighter: Reweighter, bad: int, example: float, step: int,
                   epoch: int) -> NoisysegError:
    """The error of a reweighter that gave ``bad`` weights that are negative or not finite,
    ``example`` one of them."""
    return NoisysegError(
        f"reweighter '{reweighter.name}' returned {bad} negative or non-finite "
        f"weight(s) at step {step} (epoch {epoch + 1}), e.g. {example}; weights must be "
        "finite and >= 0 (a negative weight would reverse the gradient)"
    )


def _verdict(loss: torch.Tensor, loss_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A step's checks in one float64 tensor on its device, made without waiting for it: loss
    finite, loss map finite, weights all valid (each 0/1), the loss, how many weights are not
    valid, and one of them (0 when none)."""
    ok_weights = torch.isfinite(weights) & (weights >= 0)
    bad = ~ok_weights
    flat = weights.detach().reshape(-1)
    example = flat[bad.reshape(-1).int().argmax()] if flat.numel() else flat.new_zeros(())
    return torch.stack([torch.isfinite(loss), torch.isfinite(loss_map).all(), ok_weights.all(),
                        loss.detach(), bad.sum(), example]).double()


class DeferredChecks:
    """The checks of :func:`train_step` (loss finite, weights finite and >= 0) kept on the device
    and read every few steps by :meth:`verify`, so that a step never waits for the device.

    A step whose loss was not finite has been taken by the time it is read; :meth:`verify` then
    raises what the step would have raised, naming that step, and the run stops before its next
    checkpoint (the last one on disk is the last good one).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, torch.Tensor]] = []

    def add(self, step: int, epoch: int, verdict: torch.Tensor) -> None:
        self._pending.append((step, epoch, verdict))

    def verify(self, reweighter: Reweighter) -> None:
        """Read the checks of the steps since the last call (one host synchronisation) and raise
        for the first step that failed."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([v for _, _, v in pending]).tolist()
        for (step, epoch, _), row in zip(pending, rows, strict=True):
            _passes(row, reweighter, step, epoch, "stop", None)  # raises for a bad step


def step_context(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    step: int,
    epoch: int,
    device: torch.device,
    forward: nn.Module | None = None,
    loss_fn: LossFn = per_pixel_loss,
    precision: Precision = FP32,
) -> StepContext:
    """Forward the batch's images (moved to ``device`` with its labels and meta batch) through
    ``forward`` (default ``model``) and wrap the result with ``loss_fn``'s loss map; the context's
    model is always ``model``. The forward runs under ``precision``'s autocast (none for fp32);
    the logits are cast to float32 before the loss, so the loss map, the context's logits and the
    weights made from them are float32 in every precision."""
    x, y = batch.images.to(device), batch.labels.to(device)
    with precision.autocast():
        logits = (forward or model)(x)
    logits = upcast(logits)  # bf16/fp16 -> float32; float32 stays the very same tensor
    meta_x, meta_y = (None, None) if batch.meta is None else (t.to(device) for t in batch.meta)
    return StepContext(
        model=model, optimizer=optimizer, images=x, labels=y, logits=logits,
        loss_map=loss_fn(logits, y), step=step, epoch=epoch,
        meta_images=meta_x, meta_labels=meta_y, index=batch.index,
        clean_labels=None if batch.clean_labels is None else batch.clean_labels.to(device),
    )
