"""Cost of one training iteration of each reweighter relative to a plain step.

Times, in one process on the same batch (default U-Net, batch 16, 64x64 synthetic patches,
2 threads), a plain training step and one full iteration of each method (forward, weights incl.
the meta step, backward, optimiser step). Methods are timed in interleaved rounds after warm-up
and the mean is reported (a mean, so that a meta step every k-th iteration is counted once per
k iterations; rounds default to a multiple of 5). Peak memory is measured per method in a fresh
subprocess: the growth of the peak resident set over 5 iterations on the CPU, max allocated on
CUDA.

    python benchmarks/step_time.py [--rounds 40] [--device cpu]
    python benchmarks/step_time.py --methods none mcpm+reweighter.options.meta_layers=1

Methods are labels, as every benchmark reads them (benchmarks/protocol.py): a reweighter's name
with its options after ``+`` (``mcpm+reweighter.options.interval_max=null``), ``none`` for the
plain step. One line per method: ``<label> <ms> <ratio-to-plain> <peak MB>``, each also a row
of the results store (benchmark ``step_time``, preset ``<device>-b<batch>``, the method's label,
metrics ms, ratio and peak_mb); the timed rounds are one whole run (steps 0 to rounds - 1), so an
adaptive interval is timed over its whole schedule. Then the cosine similarity between the exact
per-pixel meta-gradient dL^/dR and the one with the virtual step in the last k modules only
(``meta_layers = k``), on the default U-Net after 30 plain Adam steps; last line
``mcpm_ratio=<x> fast_ratio=<y> fast_cosine=<c>``: the default mcpm (interval 1 -> 10), and the
fast option ``interval_max = 30``, whose meta-gradients are exact (c = 1) but taken at 12% of
the steps. The cosines and the last line's figures are one more row (no method).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import protocol
import store
import torch

from noisyseg import Registry, build_plugin_manager
from noisyseg.build import resolve_device
from noisyseg.outputs import per_pixel_loss
from noisyseg.reweighting.virtual_step import meta_pixel_gradient
from noisyseg.step import Batch, train_step
from noisyseg.testing import cpu_run_context

HERE = Path(__file__).resolve().parent
BENCHMARK = "step_time"
EXACT = "+reweighter.options.interval_max=null"  # a meta step at every iteration (the papers')
#: the fast option of the last line: an adaptive interval 1 -> 30
FAST = "mcpm+reweighter.options.interval_max=30"
#: what a plain ``python benchmarks/step_time.py`` times (``none``: the plain step)
METHODS = (
    "none",
    "mcpm",  # the default: interval 1 -> 10 over the run
    "mcpm" + EXACT,
    "mcpm+reweighter.options.interval=5",
    FAST,
    "mcpm+reweighter.options.method=higher" + EXACT,
    "mcpm+reweighter.options.first_order=true" + EXACT,
    "mcpm+reweighter.options.meta_layers=1" + EXACT,
    "mcpm+reweighter.options.meta_layers=12" + EXACT,
    "mcpm+reweighter.options.meta_layers=1+reweighter.options.interval=2",
    "mwnet",
    "mwnet+reweighter.options.method=higher",
    "l2rw",
    "l2rw+reweighter.options.meta_layers=1",
    "l2rw+reweighter.options.method=higher",
)


def reweighter_of(label: str) -> tuple[str, dict[str, Any]]:
    """(reweighter, options) of a method label; a label that sets anything else (a recipe, a
    loss, a corrector, a training setting) is refused: a step here times a reweighter only."""
    config = protocol.method_config(label)
    other = sorted(k for k in config if k not in ("recipe", "reweighter"))
    if config["recipe"]["name"] != "none" or other:
        raise SystemExit(f"method {label!r}: step_time.py times reweighters only; it sets "
                         f"{', '.join(other) or 'the recipe ' + config['recipe']['name']}")
    reweighter = config.get("reweighter", {})
    return reweighter.get("name", "none"), reweighter.get("options") or {}


def setup(device: torch.device, batch: int):
    registry = Registry(build_plugin_manager())
    data = registry.build("dataset", "synthetic", {"n_train": batch, "n_meta": batch, "n_test": 1}).load(0)
    torch.manual_seed(0)
    base = registry.build("backbone", "unet").build(1, 1).to(device)
    x, y = torch.from_numpy(data.train.images), torch.from_numpy(data.train.masks)
    meta = (torch.from_numpy(data.meta.images), torch.from_numpy(data.meta.masks))
    return registry, base, x, y, meta


def make(registry, base, label: str, device: torch.device, schedule: int = 4):
    """Model, optimiser and reweighter of the method ``label`` for a run of ``schedule`` steps
    (an adaptive interval spreads its meta steps over them)."""
    reweighter_name, options = reweighter_of(label)
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    reweighter = registry.build("reweighter", reweighter_name, options)
    ctx = cpu_run_context(2)
    ctx.device, ctx.loss_fn = device, per_pixel_loss
    ctx.epochs, ctx.steps_per_epoch = 1, schedule
    reweighter.setup(ctx)
    return model, optimizer, reweighter


def one(state, x, y, meta, step: int, device: torch.device) -> float:
    model, optimizer, reweighter = state
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_step(model, optimizer, reweighter,
               Batch(x, y, meta if reweighter.needs_meta_batch else None), step, 0, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def peak_memory(label: str, device: str, batch: int) -> float:
    """Peak memory (MB) of 5 iterations of one method, in a fresh process."""
    code = (
        f"import json,sys,torch;sys.path.insert(0,{str(HERE)!r});import step_time as s;"
        f"torch.set_num_threads(2);d=s.resolve_device({device!r});"
        f"r,b,x,y,m=s.setup(d,{batch});st=s.make(r,b,{label!r},d);"
        "base=s.rss_mb();open('/proc/self/clear_refs','w').write('5');"
        "[s.one(st,x,y,m,i,d) for i in range(5)];"
        "peak=(torch.cuda.max_memory_allocated()/2**20 if d.type=='cuda' else s.rss_mb('VmHWM')-base);"
        "print(json.dumps(peak))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory (VmRSS) or its peak since the last reset (VmHWM), in MB (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40,
                        help="timed iterations: one whole run of this many steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="labels, as accuracy.py reads them (none, the plain step, is always "
                        "timed)")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    methods = list(dict.fromkeys(["none", *args.methods]))
    for label in methods:  # an unknown name fails here, before any timing
        reweighter_of(label)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    preset = f"{device.type}-b{args.batch}" + (f"-r{args.rounds}" if args.rounds != 40 else "") + (
        f"-t{args.threads}" if args.threads != 2 else "")
    registry, base, x, y, meta = setup(device, args.batch)
    # the timed rounds are a whole run: step 0 to rounds - 1 (warm-up rounds repeat step 0)
    states = {label: make(registry, base, label, device, args.rounds) for label in methods}
    times: dict[str, list[float]] = {label: [] for label in methods}
    for r in range(args.warmup + args.rounds):
        for label in methods:
            ms = one(states[label], x, y, meta, max(0, r - args.warmup), device)
            if r >= args.warmup:
                times[label].append(ms)
    plain = statistics.mean(times["none"])
    print(f"# device={device} threads={args.threads} batch={args.batch} rounds={args.rounds} "
          f"(mean ms; ratio to the plain step of the same round set)")
    settings = {"rounds": args.rounds, "warmup": args.warmup, "threads": args.threads,
                "batch": args.batch}
    for label in methods:
        ms = statistics.mean(times[label])
        peak = None if args.no_memory else peak_memory(label, args.device, args.batch)
        mem = "" if peak is None else f" {peak:.0f}MB"
        print(f"{label} {ms:.1f} {ms / plain:.2f}{mem}", flush=True)
        store.record(benchmark=BENCHMARK, preset=preset, method=label, device=str(device),
                     metrics={"ms": round(ms, 3), "ratio": round(ms / plain, 3),
                              "peak_mb": None if peak is None else round(peak, 1), **settings})
    cosines = {k: cosine(registry, base, x, y, meta, device, k) for k in (1, 3, 6, 12, 24)}
    for k, c in cosines.items():
        print(f"meta_layers={k} cosine={c:.3f}")

    def ratio(label: str) -> float:
        return statistics.mean(times[label]) / plain if label in times else math.nan

    # the fast option: the exact meta-gradient at 12% of the steps (interval 1 -> 30); its
    # cosine with the exact meta-gradient is 1 on the steps that take one
    fast_cosine = cosine(registry, base, x, y, meta, device, reweighter_of(FAST)[1].get("meta_layers"))
    print(f"mcpm_ratio={ratio('mcpm'):.2f} fast_ratio={ratio(FAST):.2f} "
          f"fast_cosine={fast_cosine:.3f}")
    store.record(benchmark=BENCHMARK, preset=preset, device=str(device),
                 note="the meta-gradient cosines and the last line",
                 metrics={"mcpm_ratio": round(ratio("mcpm"), 3), "fast_ratio": round(ratio(FAST), 3),
                          "fast_cosine": round(fast_cosine, 4), "fast": FAST,
                          "cosine_by_meta_layers": {str(k): round(c, 4) for k, c in cosines.items()},
                          **settings})


def cosine(registry, base, x, y, meta, device: torch.device, layers: int | None) -> float:
    """Cosine similarity of dL^/dR with ``meta_layers = layers`` and the exact one (weights 1)."""
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    for _ in range(30):  # past the initialisation, where every gradient looks alike
        optimizer.zero_grad()
        per_pixel_loss(model(x), y).mean().backward()
        optimizer.step()
    mx, my = (t.to(device) for t in meta)
    w = torch.ones(y.shape, device=device)
    grads = []
    for k in (None, layers):
        loss = per_pixel_loss(model(x), y)
        grads.append(meta_pixel_gradient(model, x, y, loss, w, mx, my, per_pixel_loss, 0.01,
                                         layers=k)[1].flatten())
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))


if __name__ == "__main__":
    main()
