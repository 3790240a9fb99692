"""What a component is told about the run: once at setup (:class:`RunContext`) and at every
training step (:class:`StepContext`), and the type of the run's per-pixel loss (:data:`LossFn`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from noisyseg.distributed import World
from noisyseg.precision import Precision
from noisyseg.scratch import Scratch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RunContext:
    """What a reweighter or corrector may know about the run, given once at setup.

    ``noise_rate`` is the fraction of training images whose mask the noise model corrupted (the
    configured rate r, or the share the model sets: :meth:`NoiseModel.image_share`);
    ``pixel_noise_rate`` the fraction of training pixels it changed (both 0 when no
    noise is added on purpose, i.e. on data whose noise is unknown).
    """

    build_model: Callable[[], nn.Module]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    #: the run's loss (the ``loss`` component): logits (N, K, H, W), labels (N, H, W) -> (N, H, W)
    loss_fn: LossFn
    device: torch.device
    num_classes: int
    noise_rate: float
    epochs: int
    steps_per_epoch: int
    seed: int
    pixel_noise_rate: float = 0.0
    #: the processes training this run together (size 1: this one alone); a component that
    #: learns parameters of its own averages their gradients with ``world.average_gradients``
    world: World = field(default_factory=World)
    #: the true training labels (N, H, W) int64 on the CPU when the run knows them (noise added
    #: on purpose by the noise model), else None. For ceilings and diagnostics only (the
    #: ``oracle`` reweighter): a method that learns from them is not a noisy-label method.
    clean_labels: torch.Tensor | None = None
    #: 2 for images, 3 for volumes: label maps are (N, H, W) or (N, D, H, W), and so are the
    #: loss maps and weights (every "(N, H, W)" in these docs reads "(N, D, H, W)" for volumes)
    spatial_dims: int = 2
    #: where to keep per-pixel state the size of the training set (``scratch.tensor(shape,
    #: dtype)``, ``scratch.clone(t)``): in memory, or in files when the dataset streams from disk
    scratch: Scratch = field(default_factory=Scratch)
    #: train.precision on the run's device: a component that forwards the run's network for the
    #: training step (a meta reweighter's virtual step) does so under ``precision.autocast()``
    #: and casts the logits to float before the loss; with fp16, a gradient the component adds
    #: to the main step's backward is scaled by ``precision.scaler`` (see the distil reweighter)
    precision: Precision = field(default_factory=Precision)


@dataclass
class StepContext:
    """Everything about one training step that a reweighter may use.

    Shape:
        images - (N, C, H, W); labels - (N, H, W); logits - (N, K, H, W);
        loss_map - (N, H, W), still attached to the graph of ``logits``;
        meta_images / meta_labels - (M, C, H, W) / (M, H, W), or None;
        index - (N,) positions of the batch's images in the training set (on the CPU), or None;
        clean_labels - (N, H, W) the batch's true labels, moved and turned with ``labels`` by
        augmentation, when the run knows them (noise added on purpose), else None: for ceilings
        and diagnostics only, like :attr:`RunContext.clean_labels`
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    loss_map: torch.Tensor
    step: int
    epoch: int
    meta_images: torch.Tensor | None = None
    meta_labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    clean_labels: torch.Tensor | None = None
