"""The sections of the config, as pydantic models: a component picked by name with its options
(:class:`ComponentSpec`, :class:`NoiseSpec` for the noise), the training (:class:`TrainConfig`),
the augmentation (:class:`AugmentConfig`), the output (:class:`OutputConfig`) and the run's own
fields. :mod:`noisyseg.config` puts them together into ``Config`` (and re-exports them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentSpec(_Section):
    """A component picked by name, with its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class NoiseSpec(ComponentSpec):
    """The noise model and the fraction ``rate`` of training images it corrupts."""

    rate: float = Field(0.4, ge=0.0, le=1.0, description="fraction r of corrupted training images")


class TrainConfig(_Section):
    """Optimisation settings of the one training loop."""

    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps in all")
    steps: int | None = Field(
        None, ge=1,
        description="the run's length in optimiser steps instead of epochs: train.epochs becomes "
        "steps / steps per epoch, rounded, at least 1 (config.yaml records both)",
    )
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine",
        description="cosine: anneal lr to 0 over the epochs; step: multiply it by lr_decay_factor "
        "at lr_decay_epochs; constant",
    )
    lr_decay_epochs: list[int] = Field(
        default_factory=list, description="step schedule: multiply lr by lr_decay_factor at these epochs"
    )
    lr_decay_factor: float = Field(0.1, gt=0, le=1)
    train_on_meta: bool | None = Field(
        None,
        description="add the clean meta images to the training set; default: yes unless the "
        "reweighter learns from the meta set itself and does not ask for them (l2rw and mwnet "
        "keep them out, as in the MCPM paper's baselines; mcpm trains on them too)",
    )
    meta_only: bool = Field(
        False, description="train on the clean meta images alone (the 'few clean labels' baseline)"
    )
    select_on_meta: bool = Field(
        False,
        description="keep the epoch whose Dice on the clean meta split is best (early stopping on "
        "clean labels); needs train_on_meta = false, so the meta images are not trained on, and a "
        "reweighter that does not learn its weights from them (not mcpm, mwnet, l2rw)",
    )
    calibrate: bool = Field(
        False,
        description="after training, add to each class's log-probability the offset that "
        "maximises the Dice of the clean meta split (moves the decision that systematic noise "
        "biases, e.g. masks drawn too large); needs train_on_meta = false, or calibration_share",
    )
    calibration_share: float | None = Field(
        None, gt=0, lt=1,
        description="with calibrate: set this share of the meta split (at least one image, drawn "
        "from the seed) aside for the calibration alone; the rest may then be trained on "
        "(train_on_meta, meta_only, a meta reweighter). Default: calibrate on the whole meta "
        "split, kept out of training",
    )
    init_from: Path | None = Field(
        None,
        description="start from the network weights of this run directory (or checkpoint.pt); "
        "with meta_only: fine-tune a model trained on noisy labels on the clean meta set",
    )
    meta_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    apply_weights: bool = Field(
        True,
        description="train on the reweighted loss; false: the reweighter's weights are computed, "
        "logged and shown to a corrector that observes them, but the loss is not weighted (the "
        "reweighter as a detector only)",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN or infinite loss stops the run, or its batch is skipped"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="floating point of the network's forwards: fp32; bf16 or fp16 run them under "
        "autocast (the loss, the weights and what components see stay fp32); fp16 adds a gradient "
        "scaler and does not work with the meta reweighters (mcpm, mwnet, l2rw): use bf16. On the "
        "CPU bf16 is mostly for testing",
    )
    eval_every: int = Field(
        1, ge=0,
        description="score the test split every N epochs and at the last (the curves, the "
        "progress bar); 0: only once, after training (faster on large test splits)",
    )
    exclude_fold: tuple[int, int] | None = Field(
        None,
        description="[f, K]: leave fold f (0-based) of K out of the training images, after the "
        "noise is applied, so a model can predict them out of sample (noisyseg audit); folds "
        "from a permutation of the training images (or of a dataset's groups) drawn from the seed",
    )

    @model_validator(mode="after")
    def _fold_in_range(self) -> TrainConfig:
        if self.exclude_fold is not None:
            f, k = self.exclude_fold
            if k < 2 or not 0 <= f < k:
                raise ValueError(f"exclude_fold [f, K] needs K >= 2 and 0 <= f < K (got [{f}, {k}])")
        return self

    @model_validator(mode="after")
    def _share_needs_calibrate(self) -> TrainConfig:
        if self.calibration_share is not None and not self.calibrate:
            raise ValueError("calibration_share sets meta images aside for the calibration, but "
                             "calibrate is false: set train.calibrate = true, or drop calibration_share")
        return self


def _p(what: str) -> Any:
    return Field(0.0, ge=0.0, le=1.0, description=f"probability of {what} (0: off)")


class AugmentConfig(_Section):
    """Random transforms of every training image, applied to the image, its training mask, its
    clean mask and the noise region together (albumentations), seeded by (seed, step, image) so a
    run stays reproducible and resumable. Each transform is off until its probability is set.
    Intensity transforms act on each image scaled to its own [min, max] and scaled back."""

    hflip: float = _p("a left-right flip")
    vflip: float = _p("an up-down flip")
    rotate90: float = _p("a rotation by a random multiple of 90 degrees")
    affine: float = _p("a random rotation and scaling (see rotate_limit, scale_limit)")
    rotate_limit: float = Field(15.0, ge=0, le=180, description="affine: largest rotation, degrees")
    scale_limit: float = Field(0.1, ge=0, lt=1, description="affine: largest relative scale change")
    elastic: float = _p("an elastic deformation (see elastic_alpha, elastic_sigma)")
    elastic_alpha: float = Field(30.0, gt=0, description="elastic: displacement scale, pixels")
    elastic_sigma: float = Field(5.0, gt=0, description="elastic: smoothness of the field, pixels")
    brightness_contrast: float = _p("a random brightness and contrast change")
    brightness_limit: float = Field(0.1, ge=0, le=1, description="largest brightness shift "
                                    "(fraction of the image's range)")
    contrast_limit: float = Field(0.1, ge=0, le=1, description="largest relative contrast change")
    gamma: float = _p("a random gamma curve (see gamma_limit)")
    gamma_limit: float = Field(0.2, ge=0, lt=1, description="gamma drawn from [1 - g, 1 + g]")
    noise: float = _p("added Gaussian noise (see noise_std)")
    noise_std: float = Field(0.03, gt=0, le=1, description="largest noise standard deviation "
                             "(fraction of the image's range)")


class OutputConfig(_Section):
    """What the run writes."""

    dir: Path | None = Field(None, description="run directory; default runs/<time>-<names>")
    overwrite: bool = False
    figure_images: int = Field(4, ge=0, le=16, description="images in examples.png (0: none)")
    tracker: Literal["tensorboard", "mlflow"] | None = Field(
        None,
        description="also log the per-epoch metrics, the resolved config and the figures to "
        "tensorboard (event files in <run_dir>/tensorboard) or mlflow (to MLFLOW_TRACKING_URI "
        "when the environment sets it, else to a file store in <run_dir>/mlruns); needs "
        "pip install 'noisyseg[tensorboard]' or 'noisyseg[mlflow]'",
    )


class _Run(_Section):
    """A whole run. Every field has a default: ``Config()`` is the default run."""

    seed: int = 0
    device: str = Field("auto", description='"auto" (CUDA when present), "cpu", "cuda", "cuda:1"...')
    deterministic: bool = Field(
        True, description="on CUDA, deterministic kernels: two runs, and a resumed run, are "
        "identical bit for bit (slower); false lets cuDNN pick the fastest kernels. The CPU is "
        "always deterministic")
