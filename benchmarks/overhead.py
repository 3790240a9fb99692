"""What noisyseg's training loop costs beyond a bare PyTorch loop on the same work.

For each setting, the same network (the same backbone, built with the same seed), the same
training images and noisy labels, batch size, Adam and learning-rate schedule, and the same number
of steps are trained twice:

- **noisyseg**: ``noisyseg.run`` with the ``none`` reweighter, timed from the first step to the
  end of the last epoch (``Loop.train``): the steps with their checks, the weight statistics, the
  label bookkeeping, metrics.jsonl and a checkpoint per epoch. Test scoring per epoch is measured
  on its own (``train.eval_every = 1``, the default) and left out of the ratio
  (``eval_every = 0``), because the bare loop scores nothing;
- **bare**: a loop a user would write: the data on the device, a random permutation per epoch,
  the loss (``F.binary_cross_entropy_with_logits`` for one foreground class), ``zero_grad`` /
  ``backward`` / ``step``, no logging, no host synchronisation.

Settings: ``default`` (the default run: 64x64 synthetic patches, the default U-Net, batch 16; 4
epochs on the CPU, 10 on CUDA) and ``paper`` (the MCPM paper's size: 1906 training patches, U-Net
base 32 depth 4, batch 128; 3 steps on the CPU, where one takes about 15 s, 6 epochs on CUDA).
Each pair is timed ``--repeats`` times, alternating, and the medians compared.

    python benchmarks/overhead.py [--device cpu|cuda] [--settings default,paper] [--repeats 3]

One line per setting, then last ``overhead_cpu=<x>`` (or ``overhead_cuda=<x>``): the larger of
the settings' ratios noisyseg / bare. Each setting is a row of the results store (benchmark
``overhead``, preset the setting, method ``none``, metrics the medians, the ratio and every
timed run), and the last line one more (preset the settings, comma-separated; no method).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import store
import torch
import torch.nn.functional as F

import noisyseg
import noisyseg.loop
from noisyseg import Registry, build_plugin_manager
from noisyseg.config import merge, resolve
from noisyseg.data import build_train_set
from noisyseg.datacache import load_splits
from noisyseg.outputs import out_channels

BENCHMARK = "overhead"

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {"train": {"epochs": 4}},
    "paper": {"dataset": {"name": "synthetic",
                          "options": {"size": 64, "n_train": 1906, "n_meta": 300, "n_test": 1385}},
              "backbone": {"name": "unet", "options": {"base_channels": 32, "depth": 4}},
              "train": {"epochs": 2, "batch_size": 128, "lr": 1e-4}},
}
#: on the CPU a paper-sized step takes about 15 s on 2 cores: 3 steps are enough to time it
CPU = {"default": {}, "paper": {"train": {"epochs": 1, "max_steps": 3}}}
#: more epochs on a GPU, where an epoch takes a second
CUDA = {"default": {"train": {"epochs": 10}}, "paper": {"train": {"epochs": 6}}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_noisyseg(config: dict[str, Any], device: torch.device) -> float:
    """Seconds of ``Loop.train`` in one noisyseg run of ``config``."""
    seconds: list[float] = []
    original = noisyseg.loop.Loop.train

    def timed(self: noisyseg.loop.Loop, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        sync(device)
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            sync(device)
            seconds.append(time.perf_counter() - start)

    noisyseg.loop.Loop.train = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            noisyseg.run(config, output={"dir": str(Path(tmp) / "run"), "figure_images": 0},
                         progress=False)
    finally:
        noisyseg.loop.Loop.train = original  # type: ignore[method-assign]
    return seconds[0]


def time_bare(config: dict[str, Any], device: torch.device) -> float:
    """Seconds of a bare PyTorch loop over the same data, network, batch and optimiser."""
    cfg = resolve(config)
    registry = Registry(build_plugin_manager())
    splits = load_splits(registry.build("dataset", cfg.dataset.name, cfg.dataset.options), cfg.seed)
    noise = registry.build("noise", cfg.noise.name, cfg.noise.options)
    train = build_train_set(splits, noise, cfg.noise.rate, cfg.seed, True, False)
    torch.manual_seed(cfg.seed)
    model = registry.build("backbone", cfg.backbone.name, cfg.backbone.options).build(
        splits.in_channels, out_channels(splits.num_classes)).to(device)
    images = torch.as_tensor(np.asarray(train.images), device=device)
    labels = torch.as_tensor(np.asarray(train.noisy), device=device)
    binary = splits.num_classes == 2  # one output channel and BCE, as noisyseg does
    if binary:
        labels = labels.float()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.train.epochs)
    batch, n = cfg.train.batch_size, len(images)
    steps = cfg.train.max_steps or cfg.train.epochs * (n // batch if n > batch else 1)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model.train()
    sync(device)
    start = time.perf_counter()
    for _ in range(cfg.train.epochs):
        order = torch.randperm(n, generator=generator, device=device)
        for i in range(min(n // batch if n > batch else 1, steps)):
            steps -= 1
            index = order[i * batch:(i + 1) * batch]
            logits = model(images[index])
            loss = (F.binary_cross_entropy_with_logits(logits[:, 0], labels[index]) if binary
                    else F.cross_entropy(logits, labels[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--settings", default="default,paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"# device={device} threads={args.threads} repeats={args.repeats} "
          "(median seconds of training; ratio noisyseg / bare)")
    ratios = []
    for name in args.settings.split(","):
        config = merge(merge(SETTINGS[name], {"device": str(device)}),
                       (CUDA if device.type == "cuda" else CPU)[name])
        quiet = merge(config, {"train": {"eval_every": 0}})
        time_noisyseg(quiet, device)  # warm-up: imports, kernels, the dataset cache
        time_bare(config, device)
        times: dict[str, list[float]] = {"noisyseg": [], "bare": [], "with_eval": []}
        for _ in range(args.repeats):
            times["noisyseg"].append(time_noisyseg(quiet, device))
            times["bare"].append(time_bare(config, device))
        times["with_eval"].append(time_noisyseg(config, device))
        fast, nondeterministic = "", None
        if device.type == "cuda":  # the deterministic setting's cost
            t = nondeterministic = time_noisyseg(merge(quiet, {"deterministic": False}), device)
            fast = f"; deterministic=false {t:.2f} s ({t / statistics.median(times['bare']):.3f})"
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["noisyseg"] / med["bare"]
        ratios.append(ratio)
        store.record(benchmark=BENCHMARK, preset=name, method="none", device=str(device), metrics={
            "noisyseg_s": med["noisyseg"], "bare_s": med["bare"], "ratio": ratio,
            "with_eval_s": med["with_eval"], "with_eval_ratio": med["with_eval"] / med["bare"],
            "nondeterministic_s": nondeterministic, "noisyseg_runs": times["noisyseg"],
            "bare_runs": times["bare"], "repeats": args.repeats, "threads": args.threads})
        print(f"{name}: noisyseg {med['noisyseg']:.2f} s, bare {med['bare']:.2f} s, ratio "
              f"{ratio:.3f}; with test scoring every epoch {med['with_eval']:.2f} s "
              f"({med['with_eval'] / med['bare']:.3f}){fast} | noisyseg runs "
              f"{' '.join(f'{t:.2f}' for t in times['noisyseg'])}, bare "
              f"{' '.join(f'{t:.2f}' for t in times['bare'])}", flush=True)
    print(f"overhead_{device.type}={max(ratios):.3f}")
    store.record(benchmark=BENCHMARK, preset=args.settings, device=str(device),
                 note="the last line: the largest ratio noisyseg / bare",
                 metrics={f"overhead_{device.type}": max(ratios), "repeats": args.repeats,
                          "threads": args.threads})


if __name__ == "__main__":
    main()
