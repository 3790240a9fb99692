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
    python benchmarks/step_time.py --precision bf16 --device cuda

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

``--precision bf16`` (or ``fp16``) times every step in that ``train.precision`` (autocast; fp16
with its gradient scaler) and, in the same rounds, the plain fp32 step as well: each line then
ends with ``fp32=<ratio>``, the step's time over the plain fp32 step's, and the preset gains
``-bf16`` (``-fp16``), so the rows of one precision are never taken for another's. Methods that
cannot run in fp16 (the meta reweighters) are left out of an fp16 run, with a line saying so;
fp16 computes no cosines.
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
from noisyseg.precision import Precision, upcast
from noisyseg.reweighting.virtual_step import meta_pixel_gradient
from noisyseg.step import Batch, train_step
from noisyseg.testing import cpu_run_context

HERE = Path(__file__).resolve().parent
BENCHMARK = "step_time"
EXACT = "+reweighter.options.interval_max=null"  # a meta step at every iteration (the papers')
#: the fast option of the last line: an adaptive interval 1 -> 30
FAST = "mcpm+reweighter.options.interval_max=30"
#: the key of the plain fp32 step timed beside the steps of another precision (not a method)
FP32_PLAIN = "none@fp32"
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


def make(registry, base, label: str, device: torch.device, schedule: int = 4,
         precision: str = "fp32"):
    """Model, optimiser, reweighter and train.precision (its own gradient scaler, for fp16) of
    the method ``label`` for a run of ``schedule`` steps (an adaptive interval spreads its meta
    steps over them)."""
    reweighter_name, options = reweighter_of(label)
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    reweighter = registry.build("reweighter", reweighter_name, options)
    ctx = cpu_run_context(2)
    ctx.device, ctx.loss_fn = device, per_pixel_loss
    ctx.epochs, ctx.steps_per_epoch = 1, schedule
    ctx.precision = Precision(precision, device)
    reweighter.setup(ctx)
    return model, optimizer, reweighter, ctx.precision


def one(state, x, y, meta, step: int, device: torch.device) -> float:
    model, optimizer, reweighter, precision = state
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_step(model, optimizer, reweighter,
               Batch(x, y, meta if reweighter.needs_meta_batch else None), step, 0, device,
               precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def peak_memory(label: str, device: str, batch: int, precision: str = "fp32") -> float:
    """Peak memory (MB) of 5 iterations of one method, in a fresh process."""
    code = (
        f"import json,sys,torch;sys.path.insert(0,{str(HERE)!r});import step_time as s;"
        f"torch.set_num_threads(2);d=s.resolve_device({device!r});"
        f"r,b,x,y,m=s.setup(d,{batch});st=s.make(r,b,{label!r},d,4,{precision!r});"
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
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="train.precision of the timed steps (bf16, fp16: the plain fp32 step "
                        "is timed as well, for the ratio)")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    methods = list(dict.fromkeys(["none", *args.methods]))
    for label in methods:  # an unknown name fails here, before any timing
        reweighter_of(label)
    methods = runnable(methods, args.precision)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    preset = f"{device.type}-b{args.batch}" + (f"-r{args.rounds}" if args.rounds != 40 else "") + (
        f"-t{args.threads}" if args.threads != 2 else "") + (
        f"-{args.precision}" if args.precision != "fp32" else "")
    registry, base, x, y, meta = setup(device, args.batch)
    # the timed rounds are a whole run: step 0 to rounds - 1 (warm-up rounds repeat step 0)
    states = {label: make(registry, base, label, device, args.rounds, args.precision)
              for label in methods}
    if args.precision != "fp32":  # the plain fp32 step, timed in the same rounds
        states[FP32_PLAIN] = make(registry, base, "none", device, args.rounds)
    times: dict[str, list[float]] = {label: [] for label in states}
    for r in range(args.warmup + args.rounds):
        for label in states:
            ms = one(states[label], x, y, meta, max(0, r - args.warmup), device)
            if r >= args.warmup:
                times[label].append(ms)
    plain = statistics.mean(times["none"])
    fp32 = statistics.mean(times[FP32_PLAIN]) if FP32_PLAIN in times else None
    print(f"# device={device} threads={args.threads} batch={args.batch} rounds={args.rounds} "
          f"precision={args.precision} (mean ms; ratio to the plain step of the same round set"
          + ("; fp32=: to the plain fp32 step)" if fp32 is not None else ")"))
    settings = {"rounds": args.rounds, "warmup": args.warmup, "threads": args.threads,
                "batch": args.batch, "precision": args.precision}
    for label in methods:
        ms = statistics.mean(times[label])
        peak = None if args.no_memory else peak_memory(label, args.device, args.batch, args.precision)
        mem = "" if peak is None else f" {peak:.0f}MB"
        versus = {} if fp32 is None else {"fp32_plain_ms": round(fp32, 3),
                                          "ratio_to_fp32": round(ms / fp32, 3)}
        print(f"{label} {ms:.1f} {ms / plain:.2f}{mem}"
              + (f" fp32={ms / fp32:.2f}" if fp32 is not None else ""), flush=True)
        store.record(benchmark=BENCHMARK, preset=preset, method=label, device=str(device),
                     metrics={"ms": round(ms, 3), "ratio": round(ms / plain, 3),
                              "peak_mb": None if peak is None else round(peak, 1), **versus,
                              **settings})
    if args.precision == "fp16":
        return  # no meta reweighter runs in fp16: no meta-gradients to compare
    cosines = {k: cosine(registry, base, x, y, meta, device, k, args.precision)
               for k in (1, 3, 6, 12, 24)}
    for k, c in cosines.items():
        print(f"meta_layers={k} cosine={c:.3f}")

    def ratio(label: str) -> float:
        return statistics.mean(times[label]) / plain if label in times else math.nan

    # the fast option: the exact meta-gradient at 12% of the steps (interval 1 -> 30); its
    # cosine with the exact meta-gradient is 1 on the steps that take one
    fast_cosine = cosine(registry, base, x, y, meta, device,
                         reweighter_of(FAST)[1].get("meta_layers"), args.precision)
    print(f"mcpm_ratio={ratio('mcpm'):.2f} fast_ratio={ratio(FAST):.2f} "
          f"fast_cosine={fast_cosine:.3f}")
    extra = {}
    if args.precision != "fp32":  # how far the meta-gradient in this precision is from fp32's
        extra["fp32_cosine"] = round(cosine(registry, base, x, y, meta, device, None,
                                            args.precision, reference="fp32"), 4)
        print(f"{args.precision}_vs_fp32_cosine={extra['fp32_cosine']:.4f}")
    store.record(benchmark=BENCHMARK, preset=preset, device=str(device),
                 note="the meta-gradient cosines and the last line",
                 metrics={"mcpm_ratio": round(ratio("mcpm"), 3), "fast_ratio": round(ratio(FAST), 3),
                          "fast_cosine": round(fast_cosine, 4), "fast": FAST,
                          "cosine_by_meta_layers": {str(k): round(c, 4) for k, c in cosines.items()},
                          **extra, **settings})


def runnable(methods: list[str], precision: str) -> list[str]:
    """The methods that can run in ``precision``: in fp16 not the meta reweighters (each left
    out with a line saying why)."""
    if precision != "fp16":
        return methods
    registry = Registry(build_plugin_manager())
    kept = []
    for label in methods:
        name = reweighter_of(label)[0]
        if registry.get("reweighter", name).supports_fp16:
            kept.append(label)
        else:
            print(f"# {label}: left out, reweighter '{name}' cannot run in fp16 (use bf16)")
    return kept


def cosine(registry, base, x, y, meta, device: torch.device, layers: int | None,
           precision: str = "fp32", reference: str | None = None) -> float:
    """Cosine similarity of dL^/dR with ``meta_layers = layers`` and the exact one (weights 1),
    both in ``precision``; with ``reference``, of the exact one in ``precision`` and the exact
    one in ``reference`` (``layers`` then unused)."""
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
    pairs = [(None, precision), (layers, precision)] if reference is None else [
        (None, precision), (None, reference)]
    grads = []
    for k, name in pairs:
        p = Precision(name, device)
        with p.autocast():
            logits = model(x)
        loss = per_pixel_loss(upcast(logits), y)
        grads.append(meta_pixel_gradient(model, x, y, loss, w, mx, my, per_pixel_loss, 0.01,
                                         layers=k, precision=p)[1].flatten())
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))


if __name__ == "__main__":
    main()
