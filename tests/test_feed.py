"""The training feed (:mod:`noisyseg.feed`): a training set kept on the device gives the very run
the host-side one gives, and a step on it copies nothing from the host."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import noisyseg
import noisyseg.loop
from noisyseg.data import NoisyTrainSet
from noisyseg.feed import Feed, resident
from noisyseg.method_kinds import LabelCorrector
from noisyseg.rundir import TIMINGS
from noisyseg.testing import tiny_run_config

METHODS = {
    "none": {},  # the labels never change: they are kept on the device too
    "mcpm": {"reweighter": {"name": "mcpm"}},  # a meta step beside the batch; relabel changes labels
    "plc": {"corrector": {"name": "plc", "options": {"warmup_epochs": 1}}},  # labels change
}
#: the methods whose labels never change, so the feed keeps them on the device
FIXED_LABELS = ("none",)


def _train_set(n: int = 6) -> NoisyTrainSet:
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(n, 8, 8, generator=g) > 0.5).long()
    noisy = clean.clone()
    noisy[0] = 1 - noisy[0]
    return NoisyTrainSet(torch.rand(n, 1, 8, 8, generator=g), noisy, clean,
                         torch.tensor([True] + [False] * (n - 1)))


def _run(tmp_path: Path, name: str, method: str) -> noisyseg.RunResult:
    return noisyseg.run(tiny_run_config(seed=3, train={"epochs": 2}, noise={"rate": 0.5},
                                        output={"dir": str(tmp_path / name)}, **METHODS[method]),
                        progress=False)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_resident_feed_trains_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             method: str) -> None:
    """On the CPU "resident" moves nothing, but every resident code path runs: the order moved
    once per epoch, the batch gathered at the moved positions, the labels kept beside the images
    when the corrector never changes them (and read from the corrector when it does: plc, and
    relabel, which mcpm pairs with)."""
    host = _run(tmp_path, "host", method)
    monkeypatch.setattr(noisyseg.loop, "resident", lambda *a: True)
    made: list[Feed] = []
    real_epoch = Feed.epoch

    def epoch(self: Feed, generator: torch.Generator):  # type: ignore[no-untyped-def]
        made.append(self)
        return real_epoch(self, generator)

    monkeypatch.setattr(Feed, "epoch", epoch)
    kept = _run(tmp_path, "resident", method)
    assert made and all(f.on_device for f in made)
    assert (made[0]._labels is not None) == (method in FIXED_LABELS)
    assert kept.metrics["dice"] == host.metrics["dice"]
    assert [{k: v for k, v in h.items() if k not in TIMINGS} for h in kept.history] == \
        [{k: v for k, v in h.items() if k not in TIMINGS} for h in host.history]


def test_the_feed_stays_on_the_host_on_a_cpu_when_augmenting_or_streaming(tmp_path: Path) -> None:
    from noisyseg.scratch import Scratch

    train = _train_set()
    assert not resident(train, torch.device("cpu"), augmenting=False)
    assert not resident(train, torch.device("cuda"), augmenting=True)  # albumentations: CPU
    streaming = NoisyTrainSet(train.images, train.noisy, train.clean, train.corrupted,
                              scratch=Scratch(on_disk=True))  # its set-sized arrays are files
    assert not resident(streaming, torch.device("cuda"), augmenting=False)


def test_a_feed_batch_is_the_training_sets_rows() -> None:
    train = _train_set()
    corrector = LabelCorrector()
    corrector.store = train.noisy.clone()
    feed = Feed(train, corrector, batch_size=4, device=torch.device("cpu"), on_device=True)
    seen = []
    for fed in feed.epoch(torch.Generator().manual_seed(1)):
        assert torch.equal(fed.images, train.images[fed.index])
        assert torch.equal(fed.labels, train.noisy[fed.index])
        assert torch.equal(fed.clean, train.clean[fed.index])
        assert fed.region is not None and torch.equal(fed.region, train.region[fed.index])
        seen.append(fed.index)
    assert len(seen) == 1 and len(seen[0]) == 4  # full batches only


@pytest.mark.cuda
@pytest.mark.parametrize(("method", "per_step"), [("none", 0), ("plc", 1)])
def test_on_cuda_a_step_copies_nothing_from_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     method: str, per_step: int) -> None:
    """With the training set on the GPU, a step of a reweighter-only run sends no tensor from
    the host (the epoch's order crosses once, before its first step); with a corrector that
    changes labels, the batch's labels alone."""
    copies: list[tuple[int, ...]] = []
    real_to, real_step = torch.Tensor.to, noisyseg.loop.Loop._step
    counting = [False]

    def to(self: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_to(self, *args, **kwargs)
        if counting[0] and self.device.type == "cpu" and out.device.type == "cuda":
            copies.append(tuple(self.shape))
        return out

    def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        counting[0] = True
        try:
            return real_step(self, *args, **kwargs)
        finally:
            counting[0] = False

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(noisyseg.loop.Loop, "_step", step)
    result = noisyseg.run(tiny_run_config(seed=3, device="cuda", noise={"rate": 0.5},
                                          output={"dir": str(tmp_path / "run")}, **METHODS[method]),
                          progress=False)
    steps = int(result.metrics["steps"])
    assert steps > 0
    assert len(copies) == per_step * steps and all(len(c) == 3 for c in copies)  # (B, H, W) labels


def test_a_step_with_deferred_checks_reads_nothing_from_the_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """train_step with DeferredChecks never reads a tensor's value (on a GPU each read waits for
    it); verify() reads them all at once and raises for the first bad step."""
    from noisyseg.step import Batch, DeferredChecks, train_step

    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    class Blowup(noisyseg.Reweighter):
        name = "blowup"

        def weigh(self, ctx: noisyseg.StepContext) -> torch.Tensor:
            return torch.full_like(ctx.loss_map, 3e38 if ctx.step == 2 else 1.0)

    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _n=name: reads.append(_n) or _real(self, *a))
    checks = DeferredChecks()
    batch = Batch(torch.rand(2, 1, 6, 6), torch.randint(0, 2, (2, 6, 6)))
    for step in range(4):
        train_step(model, optimizer, Blowup(), batch, step, 0, torch.device("cpu"), deferred=checks)
    assert reads == []
    with pytest.raises(noisyseg.NumericalError, match=r"loss is inf at step 2 \(epoch 1\)"):
        checks.verify(Blowup())
    assert reads == ["tolist"]


def test_an_error_after_an_unread_bad_step_reports_the_bad_step(tmp_path: Path) -> None:
    """A step whose loss overflows is taken before its check is read; when a later step fails
    for another reason (here the reweighter raises), the overflow is what the run reports."""
    from noisyseg import hookimpl
    from noisyseg.plugins import build_plugin_manager

    class LaterFailure(noisyseg.Reweighter):
        name = "laterfailure"

        def weigh(self, ctx: noisyseg.StepContext) -> torch.Tensor:
            if ctx.step == 2:  # in the same epoch: its checks are not read yet
                raise RuntimeError("something else went wrong")
            return torch.full_like(ctx.loss_map, 3e38 if ctx.step == 1 else 1.0)

    class Plugin:
        @hookimpl
        def register_reweighters(self) -> list[type[noisyseg.Reweighter]]:
            return [LaterFailure]

    config = tiny_run_config(reweighter={"name": "laterfailure"}, train={"epochs": 2},
                             output={"dir": str(tmp_path / "run")})
    with pytest.raises(noisyseg.NumericalError, match=r"loss is inf at step 1 \(epoch 1\)"):
        noisyseg.run(config, plugin_manager=build_plugin_manager(plugins=[Plugin()]), progress=False)
