"""How the training loop cuts a set into batches: shuffled epochs (:func:`batches`), endless
batches of the meta set (:class:`Cycler`), and warnings about a run too short to mean much.
"""

from __future__ import annotations

from typing import Any

import torch


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch of :func:`batches`: full batches only, at least one."""
    return max(n // batch_size, 1)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (the last, smaller batch is dropped if n > batch)."""
    order = torch.randperm(n, generator=generator)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps_per_epoch(n, batch_size))]


class Cycler:
    """Endless shuffled batches from a fixed set of tensors (used for the meta set)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        self.tensors = tensors
        self.batch_size = min(batch_size, len(tensors[0]))
        self.generator = torch.Generator().manual_seed(seed)
        self._queue: list[torch.Tensor] = []

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if not self._queue:
            self._queue = batches(len(self.tensors[0]), self.batch_size, self.generator)
        index = self._queue.pop(0)
        return tuple(t[index] for t in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        """Where the cycle stands: the generator and the batches left in the current pass."""
        return {"generator": self.generator.get_state(), "queue": [q.clone() for q in self._queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._queue = [q.clone() for q in state["queue"]]


#: fewer optimiser steps than this in a whole run and a U-Net has barely started to segment
MIN_STEPS = 200
#: a meta set smaller than this gives a meta reweighter little to learn from
MIN_META = 10


def size_warnings(n_train: int, n_meta: int, batch_size: int, epochs: int, max_steps: int | None,
                  uses_meta: bool) -> list[str]:
    """What is too small about a run's data for its training to mean much, one message each."""
    messages = []
    per_epoch = steps_per_epoch(n_train, batch_size)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    if steps < MIN_STEPS:
        need = -(-MIN_STEPS // per_epoch)
        messages.append(
            f"this run takes only {steps} optimiser steps ({epochs} epochs of {per_epoch} batches of "
            f"{batch_size} on {n_train} training images); small sets need more steps to learn "
            f"anything: set train.epochs to at least {need} (--epochs {need})"
        )
    if uses_meta and n_meta < MIN_META:
        messages.append(
            f"the meta split holds only {n_meta} image(s), and the reweighter learns from it alone; "
            f"give it at least {MIN_META} clean images"
        )
    return messages
