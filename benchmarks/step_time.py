"""Cost of one training iteration of each reweighter relative to a plain step.

Times, in one process on the same batch (default U-Net, batch 16, 64x64 synthetic patches,
2 threads), a plain training step and one full iteration of each method (forward, weights incl.
the meta step, backward, optimiser step). Methods are timed in interleaved rounds after warm-up
and the mean is reported (a mean, so that a meta step every k-th iteration is counted once per
k iterations; rounds default to a multiple of 5). Peak memory is measured per method in a fresh
subprocess: the growth of the peak resident set over 5 iterations on the CPU, max allocated on
CUDA.

    python benchmarks/step_time.py [--rounds 40] [--device cpu]

One line per method: ``<name> <ms> <ratio-to-plain> <peak MB>`` (the ratios also go to
``benchmarks/results/step_time-<device>.json``, read by ``meta_tradeoff.py``); the timed rounds are one whole
run (steps 0 to rounds - 1), so an adaptive interval is timed over its whole schedule. Then the
cosine similarity between the exact per-pixel meta-gradient dL^/dR and the one with the virtual
step in the last k modules only (``meta_layers = k``), on the default U-Net after 30 plain Adam
steps; last line ``mcpm_ratio=<x> fast_ratio=<y> fast_cosine=<c>``: the default mcpm (interval
1 -> 10), and the fast option ``interval_max = 30``, whose meta-gradients are exact (c = 1) but
taken at 12% of the steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from noisyseg import Registry, build_plugin_manager
from noisyseg.engine import resolve_device
from noisyseg.losses import per_pixel_loss
from noisyseg.reweighting.virtual_step import meta_pixel_gradient
from noisyseg.step import Batch, train_step
from noisyseg.testing import cpu_run_context

EXACT = {"interval_max": None}  # a meta step at every iteration (the papers' schedule)
# name -> (reweighter, options)
METHODS = {
    "plain": ("none", {}),
    "mcpm": ("mcpm", {}),  # the default: interval 1 -> 10 over the run
    "mcpm_every_step": ("mcpm", EXACT),
    "mcpm_k5": ("mcpm", {"interval": 5}),
    "mcpm_adaptive30": ("mcpm", {"interval_max": 30}),
    "mcpm_higher": ("mcpm", {"method": "higher", **EXACT}),
    "mcpm_first_order": ("mcpm", {"first_order": True, **EXACT}),
    "mcpm_head": ("mcpm", {"meta_layers": 1, **EXACT}),
    "mcpm_last12": ("mcpm", {"meta_layers": 12, **EXACT}),
    "mcpm_head_k2": ("mcpm", {"meta_layers": 1, "interval": 2}),
    "mwnet": ("mwnet", {}),
    "mwnet_higher": ("mwnet", {"method": "higher"}),
    "l2rw": ("l2rw", {}),
    "l2rw_head": ("l2rw", {"meta_layers": 1}),
    "l2rw_higher": ("l2rw", {"method": "higher"}),
}


def setup(device: torch.device, batch: int):
    registry = Registry(build_plugin_manager())
    data = registry.build("dataset", "synthetic", {"n_train": batch, "n_meta": batch, "n_test": 1}).load(0)
    torch.manual_seed(0)
    base = registry.build("backbone", "unet").build(1, 1).to(device)
    x, y = torch.from_numpy(data.train.images), torch.from_numpy(data.train.masks)
    meta = (torch.from_numpy(data.meta.images), torch.from_numpy(data.meta.masks))
    return registry, base, x, y, meta


def make(registry, base, name: str, device: torch.device, schedule: int = 4):
    """Model, optimiser and reweighter of method ``name`` for a run of ``schedule`` steps (an
    adaptive interval spreads its meta steps over them)."""
    reweighter_name, options = METHODS[name]
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


def peak_memory(name: str, device: str, batch: int) -> float:
    """Peak memory (MB) of 3 iterations of one method, in a fresh process."""
    code = (
        "import json,sys,torch;sys.path.insert(0,'benchmarks');import step_time as s;"
        f"torch.set_num_threads(2);d=s.resolve_device({device!r});"
        f"r,b,x,y,m=s.setup(d,{batch});st=s.make(r,b,{name!r},d);"
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
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    registry, base, x, y, meta = setup(device, args.batch)
    # the timed rounds are a whole run: step 0 to rounds - 1 (warm-up rounds repeat step 0)
    states = {name: make(registry, base, name, device, args.rounds) for name in args.methods}
    times: dict[str, list[float]] = {name: [] for name in args.methods}
    for r in range(args.warmup + args.rounds):
        for name in args.methods:
            ms = one(states[name], x, y, meta, max(0, r - args.warmup), device)
            if r >= args.warmup:
                times[name].append(ms)
    plain = statistics.mean(times["plain"])
    print(f"# device={device} threads={args.threads} batch={args.batch} rounds={args.rounds} "
          f"(mean ms; ratio to the plain step of the same round set)")
    ratios = {}
    for name in args.methods:
        ms = statistics.mean(times[name])
        ratios[name] = round(ms / plain, 3)
        mem = "" if args.no_memory else f" {peak_memory(name, args.device, args.batch):.0f}MB"
        print(f"{name} {ms:.1f} {ms / plain:.2f}{mem}", flush=True)
    saved = Path(__file__).parent / "results" / f"step_time-{device.type}.json"
    if set(ratios) == set(METHODS):  # a partial run (--methods) leaves the saved ratios alone
        saved.write_text(json.dumps({"device": str(device), "batch": args.batch,
                                     "rounds": args.rounds, "ratio_to_plain": ratios},
                                    indent=1) + "\n")
    cosines = {k: cosine(registry, base, x, y, meta, device, k) for k in (1, 3, 6, 12, 24)}
    for k, c in cosines.items():
        print(f"meta_layers={k} cosine={c:.3f}")
    # the fast option: the exact meta-gradient at 12% of the steps (interval 1 -> 30); its
    # cosine with the exact meta-gradient is 1 on the steps that take one
    fast = (f"{statistics.mean(times['mcpm_adaptive30']) / plain:.2f}"
            if "mcpm_adaptive30" in times else "nan")
    fast_cosine = cosine(registry, base, x, y, meta, device, METHODS["mcpm_adaptive30"][1].get(
        "meta_layers"))
    print(f"mcpm_ratio={statistics.mean(times['mcpm']) / plain:.2f} fast_ratio={fast} "
          f"fast_cosine={fast_cosine:.3f}")


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
