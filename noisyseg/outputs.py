"""What a network's outputs mean: the number of output channels, per-pixel cross-entropy, class
probabilities and labels, for binary (one logit) and multi-class (K logits) nets. (The losses a
run trains with are the ``loss`` kind's plugins; they build on these.)

A binary task (num_classes == 2) uses one output channel and binary cross-entropy; K > 2 classes
use K channels and cross-entropy. Every function works for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def out_channels(num_classes: int) -> int:
    """Output channels of a network for ``num_classes`` labels (1 for a binary task)."""
    return 1 if num_classes == 2 else num_classes


def per_pixel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unreduced cross-entropy.

    Shape:
        logits - (N, K, H, W) with K = 1 (binary) or K = num_classes; labels - (N, H, W) int64;
        returns (N, H, W)
    """
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], labels.to(logits.dtype), reduction="none"
        )
    return F.cross_entropy(logits, labels, reduction="none")


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities.

    Shape:
        logits - (N, K, H, W); returns (N, num_classes, H, W) (two channels for a binary net)
    """
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities, computed stably (log-sigmoid / log-softmax).

    Shape:
        logits - (N, K, H, W); returns (N, num_classes, H, W) (two channels for a binary net)
    """
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return torch.log_softmax(logits, dim=1)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted labels.

    Shape:
        logits - (N, K, H, W); returns (N, H, W) int64
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)
