"""The differentiable virtual step shared by the meta reweighters (MCPM, MWNet, L2RW).

Given the per-pixel training loss map L (still attached to the model's forward graph) and
weights R that depend on some tensors Theta (a weighting net's parameters, or L2RW's eps):

    W'(Theta) = W - alpha * grad_W mean(R(Theta) * L)          (MCPM paper, Eq. 3)
    L^(Theta) = mean CE(F(X^; W'(Theta)), Y^)                  (meta loss on a clean batch)

:func:`meta_gradient` returns dL^/dTheta. It is built with ``higher``: an inner-loop context over
the real model with ``copy_initial_weights=False`` makes the virtual step differentiable, and the
step's gradient is taken from the loss map the training loop already computed, so the training
batch is not forwarded a second time. higher runs the virtual model on copies of the BatchNorm
buffers: the real model's running statistics do not change.

:func:`meta_pixel_gradient` computes the same gradient for a plain-SGD virtual step without any
double backward: with v = grad_W L^(W') (the chain rule through the SGD step),

    dL^/dR_i = -(alpha / P) * <grad_W L_i(W), v>               (P = number of pixels)

and every <grad_W L_i, v> comes out of ONE forward-mode Jacobian-vector product of the loss map
in direction v (``torch.func.jvp`` over ``functional_call``).

Both take the run's precision (``train.precision``): the network's forwards inside them run under
its autocast and their half-precision logits are cast to float32 before the loss, as in the
training step. The forward-mode pass of the jvp runs in float32 in every precision:
``torch.func.jvp`` does not cast a convolution's input under autocast, and forward-mode dual
tensors fail under autocast in eval-mode BatchNorm.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jvp

from noisyseg.components import LossFn
from noisyseg.errors import NoisysegError
from noisyseg.precision import FP32, Precision, upcast

VirtualOptimizer = Literal["sgd", "adam"]


def _import_higher() -> ModuleType:
    """``higher``, imported when ``method = "higher"`` is first used (not at start-up)."""
    with warnings.catch_warnings():
        # higher 0.2.1 uses torch.jit.script (deprecated in torch 2.9) and, compiled without
        # a cache, trips Python 3.12's escape-sequence SyntaxWarning
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        warnings.filterwarnings("ignore", category=SyntaxWarning)
        import higher
    return higher


class SecondOrderError(NoisysegError):
    """The model cannot be differentiated twice (needed by the meta reweighters)."""


def _explain(exc: RuntimeError) -> NoisysegError | RuntimeError:
    text = str(exc)
    if (("derivative for" in text and "not implemented" in text)
            or "double backward" in text.lower() or "once_differentiable" in text):
        return SecondOrderError(
            "this backbone cannot be differentiated twice, which the meta reweighters need "
            f"({text.splitlines()[0]}). Hardswish/Hardsigmoid encoders (e.g. mobilenetv3) and "
            "torch.compile'd models have no second derivative: set reweighter.options.method=jvp "
            "(with virtual=sgd; no double backward), or pick another encoder"
        )
    return exc


def _model_part(real: torch.optim.Adam, model: nn.Module) -> torch.optim.Adam:
    """``real`` itself when it steps the model's parameters alone, else an Adam over the model's
    parameters with the same settings and state (a loss that learns parameters of its own adds a
    param group of them to the run's optimiser, which ``higher`` cannot copy onto the model)."""
    own = {id(p) for p in model.parameters()}
    groups = [g for g in real.param_groups if all(id(p) in own for p in g["params"])]
    if len(groups) == len(real.param_groups):
        return real
    accepted = set(inspect.signature(torch.optim.Adam).parameters) - {"params"}
    copy = torch.optim.Adam([{"params": g["params"], **{k: v for k, v in g.items() if k in accepted}}
                             for g in groups])
    for group in groups:
        for p in group["params"]:
            if p in real.state:
                copy.state[p] = real.state[p]
    return copy


def _inner_optimizer(
    model: nn.Module, alpha: float, virtual: VirtualOptimizer, real: torch.optim.Optimizer | None
) -> torch.optim.Optimizer:
    if virtual == "sgd":
        return torch.optim.SGD(model.parameters(), lr=alpha)
    if virtual == "adam":
        if isinstance(real, torch.optim.Adam):  # a differentiable copy of the real Adam state
            return _model_part(real, model)
        return torch.optim.Adam(model.parameters(), lr=alpha)
    raise ValueError(f"virtual optimiser must be 'sgd' or 'adam', got {virtual!r}")


def meta_gradient(
    model: nn.Module,
    loss_map: torch.Tensor,
    weights: torch.Tensor,
    meta_images: torch.Tensor,
    meta_labels: torch.Tensor,
    wrt: Sequence[torch.Tensor],
    loss_fn: LossFn,
    alpha: float,
    virtual: VirtualOptimizer = "sgd",
    optimizer: torch.optim.Optimizer | None = None,
    precision: Precision = FP32,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Meta loss at the virtual weights and its gradient w.r.t. ``wrt``, through ``higher``.

    Args:
        model: the real model; its parameters W are the starting point of the virtual step.
        loss_map: per-pixel training loss at W, attached to the graph of ``model``'s forward.
        weights: per-pixel weights R, a differentiable function of ``wrt``.
        wrt: the tensors Theta to differentiate the meta loss with respect to.
        alpha: the virtual step's learning rate.
        virtual: "sgd" (plain gradient step, Eq. 3 of the MCPM paper) or "adam" (a differentiable
            copy of the real Adam optimiser, or a fresh Adam when the real one is not Adam).
        precision: the run's train.precision; the meta forward runs under its autocast.

    Shape:
        loss_map, weights - (N, H, W) (weights may also broadcast, e.g. (N, 1, 1));
        meta_images - (M, C, H, W); meta_labels - (M, H, W). For volumes each gains a depth D
        before H: (N, D, H, W), (N, 1, 1, 1), (M, C, D, H, W), (M, D, H, W)

    Returns:
        (meta loss (detached scalar), gradients matching ``wrt``)
    """
    if getattr(model, "_orig_mod", None) is not None:
        raise SecondOrderError(
            "a torch.compile'd model cannot be differentiated twice through higher; use the jvp "
            "method (reweighter.options.method=jvp, with virtual=sgd) or an uncompiled model"
        )
    inner = _inner_optimizer(model, alpha, virtual, optimizer)
    try:
        higher = _import_higher()
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
            if virtual == "adam":
                for group in diffopt.param_groups:
                    group["lr"] = alpha
            diffopt.step((weights * loss_map).mean(), params=list(model.parameters()))
            with precision.autocast():
                meta_logits = fmodel(meta_images)
            meta_loss = loss_fn(upcast(meta_logits), meta_labels).mean()
            grads = torch.autograd.grad(meta_loss, list(wrt), allow_unused=True)
    except RuntimeError as exc:
        raise _explain(exc) from exc
    grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True))
    return meta_loss.detach(), grads


def meta_pixel_gradient(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_map: torch.Tensor,
    weights: torch.Tensor,
    meta_images: torch.Tensor,
    meta_labels: torch.Tensor,
    loss_fn: LossFn,
    alpha: float,
    first_order: bool = False,
    layers: int | None = None,
    precision: Precision = FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL^/dR for every pixel, for a plain-SGD virtual step, without double backward.

    Args:
        images, labels: the training batch whose forward gave ``loss_map``.
        loss_map: per-pixel loss at W, attached to the model's graph (it is retained).
        weights: the current weights R (their values only are used).
        first_order: evaluate the meta gradient v at W instead of W' (drops the virtual step's
            backward pass; the error is O(alpha)). With all-zero weights (L2RW) W' = W and the
            result is exact either way, so the backward pass is always skipped then.
        layers: take the virtual step in the parameters of the last ``layers`` modules only
            (:func:`last_layers`), the rest held fixed: the backward passes stop there and the
            jvp carries tangents through those modules alone. None: every parameter (exact).
        precision: the run's train.precision; the forwards run under its autocast.

    Shape:
        images - (N, C, H, W); labels, loss_map, weights - (N, H, W); for volumes (N, C, D, H, W)
        and (N, D, H, W)

    Returns:
        (meta loss (detached scalar), dL^/dR of the loss map's shape)
    """
    params, fixed = _stepped_and_fixed(model, layers)
    primals = {k: p.detach() for k, p in params.items()}
    if first_order or not bool(weights.detach().any()):
        virtual = {k: p.clone().requires_grad_() for k, p in primals.items()}
    else:
        grads = _grad((weights.detach() * loss_map).mean(), list(params.values()), retain_graph=True)
        virtual = {k: (p - alpha * g).detach().requires_grad_() for (k, p), g in
                   zip(primals.items(), grads, strict=True)}

    def pixel_losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        # the forward-mode pass runs in float32 in every precision: torch.func.jvp fails under
        # autocast, and forward-mode dual tensors fail under autocast in eval-mode BatchNorm
        return loss_fn(_logits(model, {**fixed, **p}, images, FP32), labels)

    with batchnorm_stats_frozen(model):
        meta_logits = _logits(model, {**fixed, **virtual}, meta_images, precision)
        meta_loss = loss_fn(meta_logits, meta_labels).mean()
        v = _grad(meta_loss, list(virtual.values()))
        tangents = dict(zip(virtual.keys(), v, strict=True))
        derivative = jvp(pixel_losses, (primals,), (tangents,))[1]
    return meta_loss.detach(), -(alpha / loss_map.numel()) * derivative.detach()


def _logits(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
            precision: Precision) -> torch.Tensor:
    """``model`` with ``params`` on ``x`` (``functional_call``) under ``precision``'s autocast,
    its logits as float32 when autocast made them half (else the very tensor the model returned)."""
    with precision.autocast():
        logits = functional_call(model, params, (x,))
    return upcast(logits)


def _stepped_and_fixed(model: nn.Module, layers: int | None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The trainable parameters the virtual step moves (those of the last ``layers`` modules, or
    all with None), and the others, detached and held fixed."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if layers is None:
        return params, {}
    chosen = set(last_layers(model, layers))
    fixed = {k: p.detach() for k, p in params.items() if k not in chosen}
    return {k: p for k, p in params.items() if k in chosen}, fixed


def last_layers(model: nn.Module, k: int) -> list[str]:
    """Names of the trainable parameters of the last ``k`` modules that hold parameters of their
    own, in the order the model registers them (for a U-Net: the output convolution first, then
    the last decoder block's layers)."""
    owners: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owners.setdefault(name.rpartition(".")[0], []).append(name)
    return [name for owner in list(owners)[-k:] for name in owners[owner]]


def _grad(output: torch.Tensor, inputs: list[torch.Tensor], **kwargs: bool) -> list[torch.Tensor]:
    """First-order gradients; parameters the output does not use get zeros."""
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]


@contextlib.contextmanager
def batchnorm_stats_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode normalise with batch statistics but do not update
    their running statistics (nor count batches) inside this block."""
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
