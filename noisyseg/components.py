"""The component interfaces: what a backbone, noise model, dataset, loss, reweighter and label
corrector must provide. Plugins subclass these; the engine only ever talks to these bases. The
table of kinds (:mod:`noisyseg.kinds`) names each base with its hook, config section and check.

Every component class carries a unique ``name`` and an ``Options`` pydantic model holding its
typed settings; the registry validates the user's options against it before building.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from torch import nn

from noisyseg.distributed import World
from noisyseg.scratch import Scratch


class NoOptions(BaseModel):
    """Options of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


class Component:
    """Base of every component: a ``name`` to pick it by and typed ``Options``."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring, for listings."""
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    @classmethod
    def details(cls) -> list[str]:
        """More lines for listings (a recipe's stages); none by default."""
        return []


# --------------------------------------------------------------------------- backbones
class Backbone(Component):
    """Builds a segmentation network."""

    #: the spatial dimensions its networks handle: (2,) images only, (2, 3) images and volumes
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)

    def build(self, in_channels: int, out_channels: int, dims: int = 2) -> nn.Module:
        """Return a module mapping images (or, with ``dims = 3``, volumes) to logits. The engine
        passes ``dims`` only for volumes, and only to a backbone whose ``spatial_dims`` has 3.

        Shape:
            input - (N, in_channels, H, W) or (N, in_channels, D, H, W); output - (N,
            out_channels, H, W) or (N, out_channels, D, H, W)
        """
        raise NotImplementedError

    def build_for(self, in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
        """:meth:`build` for data of ``spatial_dims`` (2 or 3), passing ``dims`` only for volumes,
        so a 2-D backbone's ``build`` need not take it (what the engine and the check kit call)."""
        volumes = {"dims": 3} if spatial_dims == 3 else {}
        return self.build(in_channels, out_channels, **volumes)


# --------------------------------------------------------------------------- noise models
class NoiseModel(Component):
    """Corrupts one clean mask (the truth is kept beside the result).

    The core calls, once per run: :meth:`image_share` (how many training images to corrupt),
    :meth:`prepare` (when any is), then :meth:`corrupt_at` for each chosen image, which calls
    :meth:`corrupt` unless a model overrides it. Most models implement :meth:`corrupt` alone.
    """

    #: the mask dimensions it corrupts: (2,) images only, (2, 3) images and volumes
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Return a corrupted copy of ``mask``: same shape and dtype, labels in [0, num_classes).

        Shape:
            mask - (H, W) integer labels, or (D, H, W) for a volume; returns the same shape
        """
        raise NotImplementedError

    def image_share(self, rate: float) -> float:
        """The share of training images to corrupt, given the config's ``noise.rate``: ``rate``
        itself by default; a protocol that sets its own share (``alphabeta``'s alpha) returns
        that. The core corrupts the first round(share * N) images of a permutation drawn from
        the seed, so the images of a smaller share are among those of a larger one."""
        return rate

    def prepare(self, splits: Splits, seed: int) -> None:
        """Called once by the core before any mask is corrupted (and only when some will be),
        with the splits as the dataset gave them (before meta images are set aside for
        calibration) and the run's seed, for a model that needs the images or the whole data set
        (``pseudo`` trains a network on the meta split). Must not change ``splits``; may be
        called again with the same arguments (an audit does). Does nothing by default.

        Shape:
            splits - see :class:`Splits`: images (N, C, H, W) or (N, C, D, H, W), masks without C
        """

    def corrupt_at(self, mask: np.ndarray, index: int, rng: np.random.Generator,
                   num_classes: int) -> np.ndarray:
        """The corrupted copy of the mask of training image ``index`` (its position in the train
        split given to :meth:`prepare`): what the core calls. By default ``corrupt(mask, rng,
        num_classes)``; a model that labels images by what :meth:`prepare` saw overrides it.

        Shape:
            mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype
        """
        return self.corrupt(mask, rng, num_classes)


# --------------------------------------------------------------------------- datasets
@dataclass
class Split:
    """Images and masks of one split: 2-D images, or volumes.

    Shape:
        images - (N, C, H, W) float32; masks - (N, H, W) int64 labels in [0, num_classes);
        volumes: images (N, C, D, H, W), masks (N, D, H, W); names - N strings or None;
        groups - (N,) integers or None
    """

    images: np.ndarray
    masks: np.ndarray
    #: each sample's name as a person finds it (a file: ``masks/case01.png``; a volume's slice:
    #: ``masks/brain.nii.gz:12``), or None (the audit then says ``train-00042``)
    names: list[str] | None = None
    #: samples with the same group (a file's slices, a block of neighbouring slices) are near
    #: copies: they go to the same fold of the audit; None: every sample is its own group
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Splits:
    """The three splits a dataset provides; ``meta`` holds the few clean images."""

    train: Split
    meta: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    #: the size of a pixel (voxel) along each spatial axis, in mm, e.g. (2.0, 2.0, 2.0); None:
    #: unknown, distances are then in pixels
    spacing: tuple[float, ...] | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return int(self.train.masks.ndim - 1)


class Dataset(Component):
    """Loads train / meta / test splits, deterministically for a seed."""

    #: True: the splits are computed from the options (and the seed) alone, reading no files that
    #: may change; runs then cache them on disk (:mod:`noisyseg.datacache`)
    generated: ClassVar[bool] = False
    #: False: the run's seed does not change the splits (one cache entry for every seed)
    seeded: ClassVar[bool] = True

    def load(self, seed: int) -> Splits:
        raise NotImplementedError

    def mask_writer(self, folder: Path) -> MaskWriter | None:
        """A writer of train-split masks into ``folder`` in this dataset's own file format (the
        suggested masks of ``noisyseg audit``), for splits this instance has loaded; None (the
        default): PNG files named by each sample's name."""
        return None


class MaskWriter:
    """Writes masks of the train split as files, one sample at a time in the split's order
    (so a volume's slices arrive together), then :meth:`close`.

    Shape:
        mask - (H, W) integer class labels
    """

    def write(self, name: str, mask: np.ndarray) -> None:
        """Write (or keep, until its volume is whole) the mask of the sample called ``name``
        (:attr:`Split.names`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Write what is still held."""


# --------------------------------------------------------------------------- losses
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Loss(Component):
    """Turns the network's logits and the training labels into a per-pixel loss map.

    The loop trains on ``mean(w * loss_map)`` with ``w`` from the reweighter, so every loss
    composes with every reweighter and corrector. The meta reweighters' virtual steps and the
    clean meta objective use the same loss (:attr:`RunContext.loss_fn`).
    """

    def setup(self, run: RunContext) -> None:
        """Called once before training, before the reweighter's and corrector's setup."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-pixel loss, differentiable in ``logits`` (and in :meth:`parameters`).

        Shape:
            logits - (N, K, H, W) with K = 1 (binary) or K = num_classes; labels - (N, H, W)
            int64; returns (N, H, W), finite
        """
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the loss learns with the network (the run's optimiser steps them, in a
        group of their own without weight decay, and checkpoints keep them)."""
        return []

    def metrics(self) -> dict[str, float]:
        """What to log at the end of each epoch (e.g. a learned parameter), keys prefixed with
        ``loss_``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {f"param{i}": p.detach().clone() for i, p in enumerate(self.parameters())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(state[f"param{i}"])


# --------------------------------------------------------------------------- reweighters


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


class Reweighter(Component):
    """Turns the step's per-pixel loss map into a non-negative weight map."""

    #: the loop feeds a clean meta batch in every StepContext when True
    needs_meta_batch: ClassVar[bool] = False

    def setup(self, run: RunContext) -> None:
        """Called once before training (build extra networks and optimisers here)."""

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Return the weights of this step.

        Shape:
            returns (N, H, W), finite and >= 0; the loop detaches it
        """
        raise NotImplementedError

    def preview(self, ctx: StepContext) -> torch.Tensor | None:
        """Weights this reweighter would give now, without learning anything (for pictures).

        Shape:
            returns (N, H, W), or None when the reweighter has nothing to show
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def mean_one(weights: torch.Tensor) -> torch.Tensor:
    """Scale non-negative weights to mean 1 (all zero stays zero): a reweighter that drops or
    down-weights pixels then does not also lower the learning rate.

    Shape:
        weights - any shape; returns the same shape
    """
    total = weights.sum()
    return weights * (weights.numel() / total) if total > 0 else weights


# --------------------------------------------------------------------------- label correctors
class LabelCorrector(Component):
    """Owns the current training labels; the loop always trains on :meth:`labels`.

    The base class keeps the labels unchanged, so it is a complete 'none' corrector.
    """

    #: the loop calls :meth:`observe` with each batch's class probabilities when True; read on
    #: the instance at every step after :meth:`setup`, so it may be a property (the same value
    #: in every process), e.g. True only in the epochs that need the probabilities
    observes_predictions: ClassVar[bool] = False
    #: the loop calls :meth:`observe_weights` with each batch's reweighter weights when True
    observes_weights: ClassVar[bool] = False
    #: False when the labels never change: the loop then keeps no copy of them to count changes
    changes_labels: ClassVar[bool] = True
    #: the current training labels (N, H, W), integers, on the CPU (in memory, or in mapped files
    #: for a dataset that streams): :meth:`setup` makes it; the loop reads it at the end of each
    #: epoch (label error, what changed) and a checkpoint saves it through :meth:`state_dict`
    store: torch.Tensor

    def setup(self, labels: torch.Tensor, run: RunContext) -> None:
        """Take the noisy training labels (N, H, W), integers (int64, or uint8 from a dataset
        that streams from disk), on the CPU; keep them in ``self.store`` (the base copies them
        to ``run.scratch``)."""
        self.store = run.scratch.clone(labels)

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """Current labels of the samples ``index``: (B,) -> (B, H, W) int64."""
        return self.store[index].long()

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """See the model's class probabilities (B, K, H, W) for the samples ``index``."""

    def observe_weights(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        """See the weights (B, H, W) the reweighter gave the samples ``index`` this step (called
        before :meth:`observe`)."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Update labels at the end of ``epoch``; return metrics to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        compact = self.store.numel() == 0 or int(self.store.max()) < 256  # 8x smaller checkpoints
        return {"labels": self.store.to(torch.uint8) if compact else self.store.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the labels into the store :meth:`setup` made (its type and place kept)."""
        labels = state["labels"]
        if not hasattr(self, "store") or self.store.shape != labels.shape:
            self.store = labels.to(torch.int64)
        else:
            self.store.copy_(labels)


# --------------------------------------------------------------------------- recipes
class Stage(BaseModel):
    """One stage of a recipe: a config overlay plus rules relative to the stage before it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="names the stage's run directory")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="config overlay, nested as in a config file, e.g. {'loss': {'name': 'confusion'}}")
    start_from_previous: bool = Field(
        False, description="start from the network weights the previous stage ended with")
    meta_only: bool = Field(False, description="train on the clean meta images alone")
    lr_factor: float | None = Field(
        None, gt=0, description="learning rate: the previous stage's times this")
    step_share: float | None = Field(
        None, gt=0, description="optimiser steps: this share of the previous stage's, rounded to "
        "whole epochs (at least one)")

    def rules(self) -> list[str]:
        """The stage's overlay and rules in few words, for listings."""
        said = _leaves(self.set)
        said += ["from the previous stage's weights"] * self.start_from_previous
        said += ["meta images only"] * self.meta_only
        if self.lr_factor is not None:
            said.append(f"lr x{self.lr_factor:g}")
        if self.step_share is not None:
            said.append(f"{self.step_share:.0%} of its steps")
        return said


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    """``{'loss': {'name': 'confusion'}}`` -> ``['loss=confusion']``."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix.removesuffix('.') if key == 'name' else prefix + key}={value}")
    return out


_STAGES = "the stages, run in order"
_SHARE = ("set this share of the meta images aside in every stage (the same images: same seed "
          "and dataset) and calibrate each stage on them (train.calibrate)")


class RecipeOptions(BaseModel):
    """What every recipe's ``Options`` holds; :meth:`defaults` makes a recipe's own."""

    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="train")], min_length=1,
                                description=_STAGES)
    calibration_share: float | None = Field(None, gt=0, lt=1, description=_SHARE)

    @classmethod
    def defaults(cls, stages: list[Stage], calibration_share: float | None = None) -> type[RecipeOptions]:
        """The options class of a recipe whose defaults are these stages and share, e.g.
        ``Options = RecipeOptions.defaults([Stage(name="train"), FINETUNE], 0.25)``."""
        return create_model(
            "Options", __base__=cls,
            stages=(list[Stage], Field(default_factory=lambda: [s.model_copy(deep=True) for s in stages],
                                       min_length=1, description=_STAGES)),
            calibration_share=(float | None, Field(calibration_share, gt=0, lt=1, description=_SHARE)),
        )

    @model_validator(mode="after")
    def _stages_fit(self) -> RecipeOptions:
        first = self.stages[0]
        if first.start_from_previous or first.lr_factor is not None or first.step_share is not None:
            raise ValueError(f"stage 1 '{first.name}' has no stage before it: it cannot start "
                             "from its weights, scale its lr or share its steps")
        names = [s.name for s in self.stages]
        if len(set(names)) < len(names):
            raise ValueError(f"stage names must differ (got {', '.join(names)})")
        return self


class Recipe(Component):
    """A named sequence of training stages, each a run of its own that may start where the
    stage before it ended (:mod:`noisyseg.recipes` runs them). Its ``Options`` (a subclass of
    :class:`RecipeOptions`) hold the stages, so a config file can change them."""

    Options: ClassVar[type[BaseModel]] = RecipeOptions

    @property
    def stages(self) -> list[Stage]:
        return list(self.options.stages)

    @property
    def plain(self) -> bool:
        """One stage that changes nothing: the run as configured."""
        stage = self.stages[0]
        return (len(self.stages) == 1 and not stage.set and not stage.meta_only
                and self.options.calibration_share is None)

    @classmethod
    def details(cls) -> list[str]:
        """The default stages, one line each."""
        options = cls.Options()
        lines = [f"{i}. {s.name}" + (f" ({', '.join(s.rules())})" if s.rules() else "")
                 for i, s in enumerate(options.stages, 1)]
        if options.calibration_share is not None:
            lines.append(f"every stage: {options.calibration_share:.0%} of the meta images set "
                         "aside, calibrated on")
        return lines


# --------------------------------------------------------------------------- a run's set
class Components:
    """The run's components, one per kind of :data:`noisyseg.kinds.KINDS`, by its key
    (``parts.reweighter``). The annotations below are for readers and type checkers; a kind
    added to the table is here as well."""

    dataset: Dataset
    noise: NoiseModel
    backbone: Backbone
    loss: Loss
    reweighter: Reweighter
    corrector: LabelCorrector
    recipe: Recipe

    def __init__(self, built: dict[str, Any]) -> None:
        self.__dict__.update(built)
