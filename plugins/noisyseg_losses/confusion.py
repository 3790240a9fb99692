"""``confusion``: pixel-wise confusion matrices with trace regularisation (Zhang, Tanno et al.,
"Disentangling Human Error from the Ground Truth in Segmentation of Medical Images", NeurIPS 2020;
the trace regulariser of Tanno et al., CVPR 2019).

The network's softmax is read as the distribution of the *true* label, p(c | x). A second, small
network gives every pixel a K x K confusion matrix A(x), column c the distribution of the
annotator's label given true class c. The noisy label is then predicted as A(x) p(x), and the loss
is its negative log-likelihood plus ``trace_weight`` times the trace of A(x):

    loss(pixel) = -log (sum_c A(x)[y, c] p(c | x)) + trace_weight * trace A(x)

The trace term pushes A away from the identity, so that the noise is explained by the annotator
model rather than learned by the network: among the pairs (A, p) that fit the noisy labels
equally well, it favours the most confident p (the paper's Theorem: the true one, when the
annotator is correct on average at every pixel).

Choices where the paper leaves room (its confusion network shares the segmentation network's
layers, which a loss cannot reach), tested in tests/test_confusion.py:
- the confusion network reads the segmentation network's class log-probabilities, detached (it
  sees where the predicted boundaries are, which is where dilation, erosion and drawing errors
  live, and no gradient runs back through its input): three 3x3 convolutions (dilations 1, 2, 4:
  a 15-pixel field of view) with ReLU, then a 1x1 convolution to K x K values;
- the paper's condition that the annotator is right more often than not (diagonal dominance) is
  built in: column c keeps 1 - f_c on its diagonal, with a flip rate f_c = max_flip * sigmoid(s)
  at most ``max_flip`` (0.5), spread over the other classes by a softmax (the authors' code
  normalises softplus outputs by their column sum, unconstrained: ``max_flip = 1`` comes close).
  Unconstrained, the matrix of a class the network rules out at a pixel is free, and the trace
  term drives it to the opposite label;
- the last convolution starts at zero weight and a bias giving every pixel the flip rate
  ``init_flip`` (0.01): training starts close to plain cross-entropy;
- volumes get 3-D convolutions (a net set up for images applies its 2-D ones slice by slice);
- the likelihood is computed in log space (logsumexp), in float32 or the logits' wider dtype (the
  confusion network itself runs in float32), so no probability underflows.

Only the network's own prediction is used after training (the test Dice, the calibration, the
figures): the confusion matrices exist to absorb the noise during training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from noisyseg import Loss, RunContext
from noisyseg.outputs import class_log_probs


class ConfusionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace_weight: float = Field(0.1, ge=0, description="weight of the mean trace of the confusion "
                                                       "matrices (the authors' code's default)")
    hidden: int = Field(16, ge=1, description="channels of the confusion network's layers")
    max_flip: float = Field(0.5, gt=0, le=1, description="most of a true class's labels the annotator "
                                                         "may get wrong at a pixel (0.5: right more "
                                                         "often than not, the paper's condition)")
    init_flip: float = Field(0.01, gt=0, description="each class's flip rate at the start (below "
                                                     "max_flip)")

    @model_validator(mode="after")
    def _starts_below_the_cap(self) -> ConfusionOptions:
        if self.init_flip >= self.max_flip:
            raise ValueError(f"init_flip ({self.init_flip}) must be below max_flip ({self.max_flip})")
        return self


class ConfusionLoss(Loss):
    """Noisy-label likelihood through learned pixel-wise confusion matrices, trace-regularised."""

    name = "confusion"
    Options = ConfusionOptions
    options: ConfusionOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.net: nn.Sequential | None = None
        self._flip_sum = torch.zeros(())
        self._pixels = 0

    def setup(self, run: RunContext) -> None:
        k = run.num_classes
        conv = nn.Conv3d if run.spatial_dims == 3 else nn.Conv2d
        h = self.options.hidden
        layers: list[nn.Module] = []
        for i, dilation in enumerate((1, 2, 4)):  # replicate padding: borders look like their pixels
            layers += [conv(k if i == 0 else h, h, 3, padding=dilation, dilation=dilation,
                            padding_mode="replicate"), nn.ReLU()]
        last = conv(h, k * k, 1)
        nn.init.zeros_(last.weight)
        share = self.options.init_flip / self.options.max_flip  # sigmoid(bias) on the diagonal
        with torch.no_grad():
            last.bias.copy_(torch.eye(k).flatten() * math.log(share / (1 - share)))
        self.net = nn.Sequential(*layers, last).to(run.device)
        run.world.broadcast_module(self.net)  # every process starts from rank 0's matrices

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters()) if self.net is not None else []

    def metrics(self) -> dict[str, float]:
        """``loss_cm_flip``: the share of labels the matrices say the annotator got wrong, given
        the network's prediction (1 - sum_c p_c A[c, c]), mean over the pixels this process's loss
        saw since the last call (with a meta reweighter its clean meta batches too, with
        co-teaching the peer's)."""
        flip = float(self._flip_sum) / self._pixels if self._pixels else math.nan
        self._flip_sum, self._pixels = torch.zeros(()), 0
        return {"loss_cm_flip": flip}

    def log_matrices(self, log_probs: torch.Tensor) -> torch.Tensor:
        """log A(x) from the class log-probabilities: column c keeps 1 - f_c on its diagonal and
        spreads the flip rate f_c = max_flip * sigmoid(s_cc) over the other classes by a softmax
        of its other scores.

        Shape:
            log_probs - (N, K, ...); returns (N, K_noisy, K_true, ...), each column a log-distribution
        """
        assert self.net is not None, "confusion: setup() was not called"
        n, k, *space = log_probs.shape
        volume_on_2d = len(space) == 3 and isinstance(self.net[0], nn.Conv2d)
        if len(space) == 2 and isinstance(self.net[0], nn.Conv3d):
            raise ValueError("confusion: set up for volumes (spatial_dims = 3), given images")
        x = log_probs.detach().float().clamp(min=-10.0)  # a sure "no" is a sure no, however sure
        if volume_on_2d:  # (N, K, D, H, W) -> slices (N D, K, H, W)
            x = x.transpose(1, 2).reshape(n * space[0], k, *space[1:])
        scores = self.net(x)
        if volume_on_2d:
            scores = scores.reshape(n, space[0], k * k, *space[1:]).transpose(1, 2)
        scores = scores.reshape(n, k, k, *space)                        # [noisy i, true c]
        eye = torch.eye(k, dtype=torch.bool, device=scores.device).view(1, k, k, *(1,) * len(space))
        s_diag = scores.diagonal(dim1=1, dim2=2).movedim(-1, 1).unsqueeze(1)  # (N, 1, K, ...)
        m = self.options.max_flip
        log_flip = math.log(m) + F.logsigmoid(s_diag)
        # log(1 - m sigmoid(s)) = log((1 - m) + e^-s) - log(1 + e^-s): finite, also when m = 1
        floor = s_diag.new_full((), math.log1p(-m) if m < 1 else -math.inf)
        log_keep = torch.logaddexp(floor, -s_diag) - F.softplus(-s_diag)
        log_spread = torch.log_softmax(scores.masked_fill(eye, -torch.inf), dim=1)
        return torch.where(eye, log_keep, log_flip + log_spread.masked_fill(eye, 0.0))

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shape: logits (N, K, H, W) (or (N, K, D, H, W)), labels (N, H, W); returns (N, H, W)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)        # float32 at least
        log_p = class_log_probs(logits.to(dtype))                        # (N, K, ...)
        log_a = self.log_matrices(log_p).to(dtype)                       # (N, K, K, ...)
        log_noisy = torch.logsumexp(log_a + log_p.unsqueeze(1), dim=2)   # (N, K_noisy, ...)
        nll = -log_noisy.gather(1, labels.unsqueeze(1)).squeeze(1)
        diagonal = log_a.diagonal(dim1=1, dim2=2).exp().movedim(-1, 1)  # (N, K, ...)
        kept = (log_p.detach().exp() * diagonal).sum(1)  # the annotator's expected accuracy
        self._flip_sum = self._flip_sum.to(kept.device) + (1 - kept.detach()).sum()
        self._pixels += kept.numel()
        return (nll + self.options.trace_weight * diagonal.sum(1)).to(logits.dtype)
