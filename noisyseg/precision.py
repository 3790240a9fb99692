"""The run's floating-point precision (``train.precision``): fp32 (the default), bf16 or fp16.

With bf16 or fp16 every forward of the network (the training step's, the meta reweighters'
virtual-step forwards, evaluation and prediction) runs under :func:`torch.autocast` with that
dtype on the run's device; the logits are cast back to float32 before the loss (:func:`upcast`),
so the per-pixel loss map, the weights and everything a reweighter or corrector sees stay
float32. fp16 also scales the loss of the main step with a gradient scaler
(:class:`torch.amp.GradScaler`), whose state a checkpoint keeps. fp32 enters no autocast
context at all: its code path is the one it always was.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

#: the values of train.precision, and the dtype each runs the network's forwards in
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """train.precision on one device: the autocast context of the network's forwards and, for
    fp16, the gradient scaler of the main optimiser step (None otherwise)."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu") -> None:
        if name not in DTYPES:
            raise ValueError(f"unknown precision {name!r}; choose one of: {', '.join(DTYPES)}")
        self.name = name
        self.device = torch.device(device)
        #: the dtype of the forwards under autocast; None for fp32 (no autocast)
        self.dtype = DTYPES[name]
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device.type) if name == "fp16" else None)

    @property
    def mixed(self) -> bool:
        """True when the forwards run under autocast (bf16, fp16)."""
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context of a network forward: autocast to :attr:`dtype` on the device, or, for
        fp32, a context that does nothing (no autocast is entered)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state (its scale and growth tracker), or None without one."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned (None, or no scaler: nothing to restore)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, {str(self.device)!r})"


#: the default: float32, no autocast, no scaler
FP32 = Precision()


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` as float32 when autocast made them bfloat16 or float16; any other dtype (float32,
    float64) is returned as it is, the very tensor (so fp32 runs are unchanged).

    Shape:
        logits - any; returns the same shape
    """
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
