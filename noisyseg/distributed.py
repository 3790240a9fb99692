"""One run across several processes (torch.distributed, data parallel): who this process is, the
few collective operations the engine and the components need, and a launcher.

Every process holds a full copy of the model, the weighting nets and the label store. Each global
batch is shared out: process r trains on positions r, r + n, r + 2n... of it (the rule of
``DistributedSampler``), DistributedDataParallel averages the model's gradients, and whatever a
component learns besides (a weighting net, a peer network) averages its gradients with
:meth:`World.average_gradients`. Rank 0 alone evaluates and writes the run directory.

A single process is a :class:`World` of size 1 whose operations do nothing, so components call
them unconditionally. Processes come from ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT) or from :func:`spawn` (``noisyseg run --nproc N``).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from noisyseg.errors import ConfigError, NoisysegError


@dataclass(frozen=True)
class World:
    """This process's place among the processes training one model (size 1: alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, writes the run directory and shows progress."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch: positions rank, rank + size, ...

        Shape:
            batch - (B, ...); returns (ceil((B - rank) / size), ...)
        """
        return batch if self.size == 1 else batch[self.rank :: self.size]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module that runs the training forward: ``model`` itself, or its
        DistributedDataParallel wrapper (which averages the gradients in ``backward``)."""
        if self.size == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every parameter's gradient by its mean over the processes (a missing
        gradient counts as zero), so an optimiser step keeps the copies identical."""
        if self.size == 1:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        if self.size == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds in every process (all of them take the same branch)."""
        if self.size == 1:
            return flag
        t = torch.tensor([0 if flag else 1], device=self._device())
        dist.all_reduce(t)
        return int(t.item()) == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (any picklable object), in rank order, in every process."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in rank 0 only and return its result in every process; an error it
        raises (a NoisysegError) is raised in every process, so none waits for the others."""
        if self.size == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except NoisysegError as exc:
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise value
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def env_world() -> World:
    """The world that torchrun (or :func:`spawn`) describes in the environment; size 1 without."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    return World(rank=rank, size=size, local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def join(world: World, device: torch.device) -> bool:
    """Join the process group of ``world`` (gloo on the CPU, NCCL on CUDA) unless already in
    one; True when this call created it (the caller then ends it with :func:`leave`)."""
    if world.size == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_nproc(nproc: int, device: torch.device) -> None:
    """Fail early when ``nproc`` processes cannot run on ``device``."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {nproc})")
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ConfigError(
            f"--nproc {nproc} on CUDA needs one GPU per process, but {torch.cuda.device_count()} "
            "are visible; use fewer processes or --device cpu"
        )


def spawn(nproc: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` new processes forming one world on this machine and
    return their results in rank order (``fn`` and its results must pickle). A NoisysegError
    in a process is raised here; any other failure raises torch's ProcessRaisedException,
    whose message holds the process's traceback."""
    with tempfile.TemporaryDirectory(prefix="noisyseg-spawn-") as tmp:
        try:
            mp.start_processes(_child, args=(nproc, _free_port(), tmp, list(warnings.filters), fn,
                                             args), nprocs=nproc, start_method="spawn")
        except ProcessException:
            for rank in range(nproc):
                error = Path(tmp) / f"error-{rank}.pkl"
                if error.exists():
                    raise pickle.loads(error.read_bytes()) from None
            raise
        return [torch.load(Path(tmp) / f"result-{r}.pt", weights_only=False) for r in range(nproc)]


def _child(rank: int, nproc: int, port: int, tmp: str, filters: list[Any],
           fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    warnings.filters[:] = filters  # the parent's choice of warnings to show
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))  # no oversubscribed cores
    try:
        result = fn(*args)
    except NoisysegError as exc:
        (Path(tmp) / f"error-{rank}.pkl").write_bytes(pickle.dumps(exc))
        raise
    torch.save(result, Path(tmp) / f"result-{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
