"""Are the processes of one run in step? Train a config in several processes and compare what
each holds at the end (tests/test_distributed.py, benchmarks/scale_check.py). The check kit for
plugin authors is :mod:`noisyseg.testing`."""

from __future__ import annotations

from typing import Any

import torch


def run_in_processes(nproc: int, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Train ``config`` in ``nproc`` processes (CPU, gloo) and return what each process holds at
    the end, in rank order: the model's ``params`` (its BatchNorm statistics are each process's
    own after the last step; DDP hands rank 0's to all at every forward), the ``reweighter``'s
    state dict, the corrector's ``labels``, the ``history`` and the ``metrics`` (rank 0 only).
    For checking that the processes stay in step."""
    from noisyseg.distributed import spawn

    return spawn(nproc, _process_state, config)


def bare(model: Any) -> Any:
    """The network without calibration offsets (rank 0 returns it wrapped with train.calibrate)."""
    from noisyseg.calibration import Calibrated

    return model.net if isinstance(model, Calibrated) else model


def _process_state(config: dict[str, Any]) -> dict[str, Any]:
    from noisyseg.engine import run

    result = run(config, progress=False)
    assert result.reweighter is not None and result.corrector is not None
    return {
        "params": {k: p.detach().clone() for k, p in bare(result.model).named_parameters()},
        "reweighter": result.reweighter.state_dict(),
        "labels": result.corrector.store.clone(),
        "metrics": result.metrics,
        "history": result.history,
    }


def process_differences(states: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What differs between rank 0 and any other process in the states :func:`run_in_processes`
    returned: for ``model`` (parameters), ``reweighter`` (every tensor of its state, its
    optimiser's included) and ``labels``, the names of the tensors that differ (all lists empty:
    the processes are in step). BatchNorm statistics are left out: each process keeps its own."""

    def parts(state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"model": state["params"],
                "reweighter": {k: v for k, v in _tensors(state["reweighter"]).items()
                               if "running_" not in k and "num_batches_tracked" not in k},
                "labels": {"labels": state["labels"]}}

    first = parts(states[0])
    out: dict[str, list[str]] = {part: [] for part in first}
    for other in map(parts, states[1:]):
        for part, tensors in first.items():
            out[part] += [k for k, t in tensors.items()
                          if k not in other[part] or not torch.equal(t, other[part][k])]
    return out


def _tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts and lists, by its path (``net.fuse.weight``)."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(
        state, (list, tuple)) else []
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found
