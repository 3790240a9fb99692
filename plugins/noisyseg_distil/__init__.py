"""``distil``: pixel- and image-level supervision distilled from noisy labels.

Reference: Shi & Wu, "Distilling effective supervision for robust medical image segmentation with
noisy labels", MICCAI 2021 (arXiv 2106.11099); its image-level part is the same authors' Pick-and-
Learn (Zhu, Shi & Wu, "Pick-and-Learn: Automatic Quality Evaluation for Noisy-Labeled Image
Segmentation", MICCAI 2019). The paper's equations were not available here; what is the paper's
and what is this implementation's choice is listed below and in docs/methods/distil.md.

The paper's parts:

- **pixel-wise noise estimation**: the uncertainty of every pixel is the estimate of its label
  noise (:func:`uncertainty`);
- **pixel-wise robust learning**: every pixel learns from its original (noisy) label and from a
  pseudo label, the two weighted by that uncertainty (:func:`pixel_loss`, the loss written out):

      l_i = q_n (1 - r u_i) L(p_i, y_i) + r u_i L(p_i, y^_i)

  with y the noisy label, y^ the pseudo label, u in [0, 1] the uncertainty and r the ramp-up;
- **image-level robust learning** (Pick-and-Learn): a small VGG-like quality network sees each
  image with its mask and gives one score s_n; z_n = 2 lambda sigmoid(s_n) is bounded, so after
  q = softmax_n(z) over the batch the largest weight is at most e^{2 lambda} times the smallest
  (:func:`image_weights`). The quality net is trained jointly, on the same weighted loss
  sum_n q_n L_n (Pick-and-Learn's training: it learns to weight down the images whose masks the
  segmentation net finds hard to fit).

Choices of this implementation (the paper leaves them open here, or they could not be read):

- the pseudo label and the uncertainty come from a mean teacher (Tarvainen & Valpola, NeurIPS
  2017): an exponential moving average of the network's parameters, alpha_t = min(1 - 1/(t + 1),
  ema) (:func:`update_teacher`), its BatchNorm on each batch's statistics (as the mean teacher
  and UA-MT run theirs; its running statistics are never updated); the uncertainty is the
  normalised entropy of the teacher's mean prediction over ``passes`` forward passes with
  Gaussian input noise (as in UA-MT, Yu et al., MICCAI 2019), the pseudo label its argmax;
- r = exp(-5 (1 - t / T_r)^2), t in epochs, T_r = ``rampup_epochs`` (the mean teacher's ramp-up):
  an untrained teacher is uncertain everywhere and its pseudo labels are noise;
- the image weight q_n scales the original-label term only: the quality net judges the original
  mask, not the teacher's pseudo label; q is scaled by the batch size, so its mean is 1;
- the quality net: three blocks of 3x3 convolutions and ReLU (``width``, 2x ``width``, 4x
  ``width`` channels; max pooling after the first two), global average pooling and a linear
  score; its input is the image and the one-hot mask the loop trains on; Adam at ``quality_lr``;
- volumes get 3-D convolutions in the quality net (the teacher is the run's own network);
- the image-level part is off by default (``image_weights = false``): with it the noise suite
  collapsed on one seed in three (the quality net's self-confirming loop), without it distil
  is above plain training on the meta images' validation share (docs/methods/distil.md).

How it fits the interfaces: a reweighter's weights multiply the loss map of the labels the loop
trains on, so they carry the original-label term (the weights returned are q_n (1 - r u_i)). The
pseudo-label term needs another target: its gradient with respect to the step's logits,
d/dz mean(r u L(z, y^)), is added to the loop's backward pass by a hook on ``ctx.logits``
(:meth:`DistilReweighter.weigh`). The total gradient is exactly that of mean(l_i); the logged
training loss is the original-label term alone. Among several processes the teacher stays the
same in every process (an average of identical weights), the quality net starts from rank 0's
weights and its gradients are averaged, and the image weights are soft-maxed over each
process's own share of the batch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from noisyseg import Reweighter, RunContext, StepContext, hookimpl
from noisyseg.outputs import class_probs


class DistilOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ema: float = Field(0.99, ge=0, lt=1, description="decay of the mean teacher's moving average")
    passes: int = Field(4, ge=1, description="teacher forward passes averaged for the uncertainty")
    input_noise: float = Field(0.1, ge=0, description="std of the Gaussian noise added to the "
                                                      "teacher's input in each pass (clipped at 2 std)")
    rampup_epochs: float = Field(3.0, ge=0, description="epochs over which the pseudo-label share "
                                                        "ramps up to the uncertainty (0: at once)")
    estimate: Literal["entropy", "mutual_info", "disagreement"] = Field(
        "mutual_info", description="the pixel-wise noise estimate u: the epistemic part of the "
        "teacher's uncertainty (mutual information over its passes; chosen on the meta images' "
        "validation share), its whole normalised entropy, or its probability that the label is "
        "wrong")
    pseudo: bool = Field(True, description="learn from the teacher's pseudo labels where uncertain "
                                           "(false: the uncertainty only lowers the weights)")
    image_weights: bool = Field(False, description="weight whole images by the quality net "
                                                   "(Pick-and-Learn; off by default: chosen on "
                                                   "the meta images' validation share)")
    lam: float = Field(1.0, gt=0, description="lambda: the largest image weight is at most e^(2 lambda) "
                                              "times the smallest")
    width: int = Field(16, ge=1, description="channels of the quality net's first block")
    quality_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the quality net")


def update_teacher(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """The mean teacher's step: theta' <- decay theta' + (1 - decay) theta for every parameter
    (decay 0 copies the student). Buffers are the teacher's own: it runs on batch statistics."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - decay)


def uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """The pixel-wise noise estimate: entropy of the mean class probabilities over log K, in [0, 1].

    Shape:
        probs - (N, K, H, W) (or (N, K, D, H, W)) class probabilities, K >= 2; returns (N, H, W)
    """
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    return (entropy / math.log(probs.shape[1])).clamp(0.0, 1.0)


def noise_estimate(kind: str, passes: list[torch.Tensor], mean: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """The pixel-wise noise estimate u in [0, 1] from the teacher's passes (``estimate``):

    - ``entropy``: the normalised entropy of the mean prediction (:func:`uncertainty`), high
      wherever the teacher is unsure, whatever the label says;
    - ``mutual_info``: its epistemic part, the entropy of the mean less the mean entropy of the
      passes (BALD), over log K: high only where the passes disagree;
    - ``disagreement``: the teacher's mean probability that the label trained on is wrong,
      1 - p(y): high where the teacher confidently contradicts the label, 0.5 where it is unsure.

    Shape:
        passes - each (N, K, H, W); mean - (N, K, H, W); labels - (N, H, W); returns (N, H, W)
    """
    if kind == "entropy":
        return uncertainty(mean)
    if kind == "mutual_info":
        each = torch.stack([uncertainty(p) for p in passes]).mean(0)
        return (uncertainty(mean) - each).clamp(0.0, 1.0)
    return 1.0 - mean.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def image_weights(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """Pick-and-Learn's bounded image weights: softmax over the batch of 2 lambda sigmoid(s), so
    max / min <= e^(2 lambda) and the weights sum to 1.

    Shape:
        scores - (N,); returns (N,)
    """
    return torch.softmax(2.0 * lam * torch.sigmoid(scores), dim=0)


def pixel_loss(noisy_loss: torch.Tensor, pseudo_loss: torch.Tensor, u: torch.Tensor,
               image_weight: torch.Tensor, ramp: float) -> torch.Tensor:
    """The per-pixel objective l_i = q_n (1 - r u_i) L(p_i, y_i) + r u_i L(p_i, y^_i), written
    out (the reweighter computes its gradient in two parts; tests compare them).

    Shape:
        noisy_loss, pseudo_loss, u - (N, H, W); image_weight - (N,) (mean 1); returns (N, H, W)
    """
    q = image_weight.view(-1, *(1,) * (u.dim() - 1))
    return q * (1 - ramp * u) * noisy_loss + ramp * u * pseudo_loss


def rampup(epoch: float, epochs: float) -> float:
    """r = exp(-5 (1 - t / T)^2) for t < T, else 1 (T = 0: 1 from the start)."""
    if epochs <= 0 or epoch >= epochs:
        return 1.0
    return math.exp(-5.0 * (1.0 - epoch / epochs) ** 2)


class QualityNet(nn.Module):
    """Pick-and-Learn's quality net: the image and its one-hot mask -> one score per pair.

    Shape:
        input - (N, C + K, H, W) (or (N, C + K, D, H, W) with ``dims = 3``); returns (N,)
    """

    def __init__(self, in_channels: int, width: int = 16, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
        w = [width, 2 * width, 4 * width]
        self.features = nn.Sequential(
            conv(in_channels, w[0], 3, padding=1), nn.ReLU(), conv(w[0], w[0], 3, padding=1), nn.ReLU(),
            pool(2, ceil_mode=True),
            conv(w[0], w[1], 3, padding=1), nn.ReLU(), conv(w[1], w[1], 3, padding=1), nn.ReLU(),
            pool(2, ceil_mode=True),
            conv(w[1], w[2], 3, padding=1), nn.ReLU(),
        )
        self.score = nn.Linear(w[2], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x).flatten(2).mean(2)).squeeze(1)


class DistilReweighter(Reweighter):
    """Distil: mean-teacher uncertainty and pseudo labels per pixel, Pick-and-Learn weights per image."""

    name = "distil"
    Options = DistilOptions
    options: DistilOptions

    def setup(self, run: RunContext) -> None:
        self.run = run
        with torch.random.fork_rng(devices=[]):  # a plain run's random stream stays as it was
            torch.manual_seed(run.seed)
            self.teacher = run.build_model()  # its weights are the student's at the first step
        self.teacher.train()  # BatchNorm on the batch's statistics, its running ones left alone
        for module in self.teacher.modules():  # (so every process holds the same teacher)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(run.seed + 7919)
        self.steps = 0  # teacher updates so far
        self.quality: QualityNet | None = None  # image_weights: built at the first step (its input channels)
        self.quality_optimizer: torch.optim.Optimizer | None = None
        self.in_channels = 0
        #: this epoch's sums for metrics(): teacher uncertainty, pseudo label != training label,
        #: pseudo label == clean label (where the run knows it), pixels, pixels with a clean label
        self._sums: torch.Tensor | None = None

    # ------------------------------------------------------------------ parts
    def _build_quality(self, in_channels: int) -> None:
        self.in_channels = in_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.run.seed + 1)
            self.quality = QualityNet(in_channels + self.run.num_classes, self.options.width,
                                      self.run.spatial_dims).to(self.run.device)
        self.run.world.broadcast_module(self.quality)
        self.quality_optimizer = torch.optim.Adam(self.quality.parameters(), lr=self.options.quality_lr)

    def _ramp(self, step: int) -> float:
        return rampup(step / max(1, self.run.steps_per_epoch), self.options.rampup_epochs)

    @torch.no_grad()
    def _teacher(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise estimate (``estimate``) and pseudo labels from ``passes`` teacher passes
        with input noise.

        Shape:
            images - (N, C, H, W) (or (N, C, D, H, W)); labels - (N, H, W) the labels trained on;
            returns u (N, H, W) in [0, 1] and the pseudo labels (N, H, W) int64
        """
        sigma = self.options.input_noise
        passes = []
        for _ in range(self.options.passes):
            noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
            noisy = images + (noise * sigma).clamp(-2 * sigma, 2 * sigma).to(images.device)
            passes.append(class_probs(self.teacher(noisy)))
        mean = torch.stack(passes).mean(0)
        return noise_estimate(self.options.estimate, passes, mean, labels), mean.argmax(1)

    def _scores(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Quality scores of the images with their masks (one-hot).

        Shape:
            images - (N, C, H, W) (or (N, C, D, H, W)); labels - (N, H, W); returns (N,)
        """
        assert self.quality is not None
        onehot = F.one_hot(labels, self.run.num_classes).movedim(-1, 1).to(images.dtype)
        return self.quality(torch.cat([images, onehot], dim=1))

    # ------------------------------------------------------------------ the step
    def weigh(self, ctx: StepContext) -> torch.Tensor:
        """Step the teacher and the quality net; add the pseudo-label term's gradient to the
        step's backward; return the original-label term's weights q_n (1 - r u_i).

        Shape:
            ctx.images - (N, C, H, W); ctx.loss_map - (N, H, W); returns (N, H, W)
        """
        if self.options.image_weights and self.quality is None:
            self._build_quality(ctx.images.shape[1])
        decay = min(1.0 - 1.0 / (self.steps + 1), self.options.ema)  # 0 at first: the student's copy
        update_teacher(self.teacher, ctx.model, decay)
        self.steps += 1
        u, pseudo = self._teacher(ctx.images, ctx.labels, self.generator)
        ramp = self._ramp(ctx.step)
        keep = 1.0 - ramp * u                                          # (N, H, W)
        n = ctx.loss_map.shape[0]
        if self.options.image_weights:
            q = image_weights(self._scores(ctx.images, ctx.labels), self.options.lam)   # (N,), sum 1
            per_image = (keep * ctx.loss_map.detach()).flatten(1).mean(1)               # L_n
            assert self.quality_optimizer is not None and self.quality is not None
            self.quality_optimizer.zero_grad(set_to_none=True)
            (q * per_image).sum().backward()
            self.run.world.average_gradients(self.quality.parameters())
            self.quality_optimizer.step()
            q = q.detach() * n                                                          # mean 1
        else:
            q = torch.ones(n, device=u.device, dtype=u.dtype)
        if self.options.pseudo and ctx.logits.requires_grad:
            self._add_pseudo_gradient(ctx.logits, pseudo, ramp * u)
        self._count(u, pseudo, ctx.labels, ctx.clean_labels)
        return q.view(-1, *(1,) * (u.dim() - 1)) * keep

    def _add_pseudo_gradient(self, logits: torch.Tensor, pseudo: torch.Tensor, share: torch.Tensor) -> None:
        """Make the loop's backward pass carry d/dz mean(share * L(z, pseudo)) as well.

        Shape:
            logits - (N, K, H, W); pseudo, share - (N, H, W)
        """
        z = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            term = (share.to(z.dtype) * self.run.loss_fn(z, pseudo)).sum() / share.numel()
            (extra,) = torch.autograd.grad(term, z)
        scaler = self.run.precision.scaler  # train.precision = fp16: the step's loss is scaled,
        if scaler is not None:              # so is the gradient this adds to
            extra = scaler.scale(extra)
        logits.register_hook(lambda grad: grad + extra)

    @torch.no_grad()
    def _count(self, u: torch.Tensor, pseudo: torch.Tensor, labels: torch.Tensor,
               clean: torch.Tensor | None) -> None:
        """Add a step's numbers to the epoch's sums (on the device: nothing waits for it)."""
        n = float(u.numel())
        right = (pseudo == clean).sum() if clean is not None else u.new_zeros(())
        step = torch.stack([u.sum(), (pseudo != labels).sum().to(u.dtype), right.to(u.dtype),
                            u.new_tensor(n), u.new_tensor(n if clean is not None else 0.0)]).double()
        self._sums = step if self._sums is None else self._sums + step

    def metrics(self) -> dict[str, float]:
        """The epoch's mean teacher uncertainty (``distil_uncertainty``), share of pixels whose
        pseudo label differs from the label trained on (``distil_pseudo_differs``) and, where the
        run knows the clean masks, share of pixels whose pseudo label is the clean one
        (``distil_pseudo_right``; compare with 1 - label_error)."""
        if self._sums is None:
            return {}
        u, differs, right, n, known = self._sums.tolist()
        self._sums = None
        out = {"distil_uncertainty": u / n, "distil_pseudo_differs": differs / n}
        if known:
            out["distil_pseudo_right"] = right / known
        return out

    @torch.no_grad()
    def preview(self, ctx: StepContext) -> torch.Tensor | None:
        """The weights q_n (1 - r u_i) now, with no teacher, quality-net or noise-generator step."""
        if self.steps == 0:
            return None
        generator = torch.Generator().set_state(self.generator.get_state())
        u, _ = self._teacher(ctx.images, ctx.labels, generator)
        keep = 1.0 - self._ramp(ctx.step) * u
        if not self.options.image_weights:
            return keep
        q = image_weights(self._scores(ctx.images, ctx.labels), self.options.lam) * len(u)
        return q.view(-1, *(1,) * (u.dim() - 1)) * keep

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"teacher": self.teacher.state_dict(), "steps": self.steps,
                                 "generator": self.generator.get_state(), "in_channels": self.in_channels}
        if self.quality is not None and self.quality_optimizer is not None:
            state["quality"] = self.quality.state_dict()
            state["quality_optimizer"] = self.quality_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        if "quality" in state:
            self._build_quality(int(state["in_channels"]))
            assert self.quality is not None and self.quality_optimizer is not None
            self.quality.load_state_dict(state["quality"])
            self.quality_optimizer.load_state_dict(state["quality_optimizer"])


@hookimpl
def register_reweighters() -> list[type[Reweighter]]:
    return [DistilReweighter]
