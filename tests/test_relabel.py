"""relabel: pixels with a low average weight and a confident, different prediction are relabelled."""

from __future__ import annotations

import torch

import noisyseg
from noisyseg import Registry, build_plugin_manager
from noisyseg.testing import cpu_run_context


def corrector(**options: object) -> noisyseg.LabelCorrector:
    return Registry(build_plugin_manager()).build("corrector", "relabel", dict(options))


def test_both_signals_must_agree_and_only_after_the_warm_up() -> None:
    c = corrector(warmup_epochs=1, momentum=0.5, threshold=0.3, confidence=0.6)
    labels = torch.zeros(1, 2, 3, dtype=torch.int64)
    labels[0, 0] = 1  # top row labelled foreground
    c.setup(labels, cpu_run_context(2))
    index = torch.tensor([0])
    weights = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 1.0, 1.0]]])
    fg = torch.tensor([[[0.1, 0.45, 0.1], [0.9, 0.5, 0.5]]])  # prediction: bg, unsure, bg / fg, -, -
    probs = torch.stack([1 - fg, fg], dim=1)
    for epoch in range(2):
        c.observe_weights(index, weights)  # average after two epochs: 0.25 where the weight is 0
        c.observe(index, probs)
        out = c.end_epoch(epoch)
        if epoch == 0:
            assert out["relabel_changed"] == 0  # warm-up
    new = c.labels(index)[0]
    # (0,0): low weight, confident bg -> relabelled; (0,1): low weight, unsure -> kept;
    # (0,2): high weight -> kept; (1,0): low weight, confident fg -> relabelled
    assert new.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert out["relabel_changed"] == 2
    assert c.weight[0, 0, 0] == 1.0  # a relabelled pixel's average starts again


def test_state_round_trips() -> None:
    c = corrector()
    labels = torch.ones(2, 4, 4, dtype=torch.int64)
    c.setup(labels, cpu_run_context(2))
    c.observe_weights(torch.tensor([1]), torch.zeros(1, 4, 4))
    fresh = corrector()
    fresh.setup(labels, cpu_run_context(2))
    fresh.load_state_dict(c.state_dict())
    assert torch.equal(fresh.weight, c.weight) and torch.equal(fresh.store, c.store)
