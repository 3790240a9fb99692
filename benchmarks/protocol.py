"""What every accuracy benchmark shares: the presets (sizes), the noise settings by label, the
methods by label, one run with the results store, and recovery of the noisy-to-clean gap.

A benchmark is a list of runs, each (dataset, noise, rate, method, seed). A **method** is a recipe
name, optionally followed by ``+`` and component picks or settings, so no benchmark keeps a table
of methods of its own:

- ``finetune_cal``: the recipe (``noisyseg run --recipe finetune_cal``);
- ``mcpm``: a component's name stands for the ``none`` recipe with that component (here the
  reweighter ``mcpm``); ``mcpm+plc`` picks two;
- ``none+train.meta_only=true+train.epochs=63``: any config setting (as ``--set`` takes it);
- ``clean``: the ceiling, ``none`` on the clean labels (rate 0, no noise), once per dataset and
  seed.

Recovery = (Dice(method) - Dice(none)) / (Dice(clean) - Dice(none)): 0 is plain training on the
noisy labels, 1 is training on the clean ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import store

from noisyseg.config import merge, parse_assignment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU: small patches and a small U-Net, 20 epochs: long enough for the noisy baseline
    # to pass its best epoch (synthetic, r = 0.8, 24 epochs: best 0.797 at epoch 9, last 0.723)
    "cpu": {
        "datasets": {
            "synthetic": {"name": "synthetic", "options": {"size": 48, "n_train": 300, "n_meta": 40,
                                                           "n_test": 200}},
            "mni152": {"name": "mni152", "options": {"labels": "wm", "patch": 48, "stride": 40,
                                                     "slice_step": 3, "block": 2}},
        },
        "base": {"device": "cpu", "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
                 "train": {"epochs": 20, "batch_size": 16, "lr": 1e-3, "schedule": "cosine"},
                 "output": {"figure_images": 0}},
    },
    # seconds, for the tests
    "smoke": {
        "datasets": {
            "synthetic": {"name": "synthetic", "options": {"size": 32, "n_train": 48, "n_meta": 16,
                                                           "n_test": 16, "max_radius": 6.0}},
        },
        "base": {"device": "cpu", "backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
                 "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "schedule": "cosine"},
                 "output": {"figure_images": 0}},
    },
    # the MCPM paper's protocol (Sec. 4.1), cut to 50 epochs (its lr is 1e-6 after epoch 40)
    "paper": {
        "datasets": {
            "synthetic": {"name": "synthetic", "options": {"size": 64, "n_train": 1906, "n_meta": 300,
                                                           "n_test": 1385}},
            "mni152": {"name": "mni152", "options": {"labels": "wm"}},
        },
        "base": {"device": "auto", "backbone": {"name": "unet", "options": {"base_channels": 32, "depth": 4}},
                 "train": {"epochs": 50, "batch_size": 128, "lr": 1e-4, "schedule": "step",
                           "lr_decay_epochs": [20, 40]},
                 "output": {"figure_images": 0}},
    },
}

#: noise settings by label: the noise model and its options (the rate comes from the run)
NOISES: dict[str, dict[str, Any]] = {
    "none": {"name": "none"},
    "dilation": {"name": "dilation"},                      # 0-6 px: the MCPM paper's main setting
    "erosion": {"name": "erosion"},
    "elastic": {"name": "elastic"},                        # its defaults: zoom 0.9-1.4, dilation 0-2
    "elastic_nobias": {"name": "elastic", "options": {"zoom": [0.85, 1.15], "dilation": [0, 0]}},
    "dilation_r3": {"name": "dilation", "options": {"max_radius": 3}},   # volumes: a 0-3 voxel ball
    # the literature's protocols (docs/noise.md). alphabeta: T-Loss's settings, alpha sets the
    # share of images (the suite's rate is the same number)
    "alphabeta_a05_b05": {"name": "alphabeta", "options": {"alpha": 0.5, "beta": 0.5}},
    "alphabeta_a07_b07": {"name": "alphabeta", "options": {"alpha": 0.7, "beta": 0.7}},
    # SpatialCorrection's JSRT setting (T 180, theta2 0.05, theta3 0.2) with T scaled by 48/256
    # (48 px patches, 256 px JSRT images: the same drift relative to the image) to 34; the blur
    # (sigma 2) and the flips are per pixel and stay. Masks: Dice 0.80 (grow) / 0.69 (shrink)
    # against the clean ones on the cpu preset's synthetic lesions
    "markov_grow": {"name": "markov", "options": {"steps": 34, "theta1": 0.8}},
    "markov_shrink": {"name": "markov", "options": {"steps": 34, "theta1": 0.2}},
    # PyMIC's radii 6-12 px on 256 px JSRT images, scaled by 48/256 to 1-2 px (Dice 0.81)
    "jsrt": {"name": "jsrt", "options": {"min_radius": 1, "max_radius": 2}},
    "pseudo": {"name": "pseudo"},                          # a weak U-Net on 8 meta images
}


@dataclass(frozen=True)
class Spec:
    """One run of a benchmark."""

    dataset: str
    noise: str
    rate: float
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.noise}-r{self.rate:g}-{self.method}-s{self.seed}"


def clean_spec(dataset: str, seed: int) -> Spec:
    """The clean-label run of a dataset and seed (shared by every noise and rate)."""
    return Spec(dataset, "none", 0.0, "none", seed)


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    from noisyseg.plugins import Registry, build_plugin_manager

    return Registry(build_plugin_manager())


def method_config(label: str) -> dict[str, Any]:
    """The config a method label adds to the preset's base (see the module's docstring)."""
    from noisyseg.kinds import KINDS

    registry = _registry()
    first, *rest = label.split("+")
    if first not in registry.names("recipe"):
        first, rest = "none", [first, *rest]
    config: dict[str, Any] = {"recipe": {"name": first}}
    for token in rest:
        if "=" in token:
            config = merge(config, parse_assignment(token))
            continue
        kinds = [k for k, kind in KINDS.items() if kind.per_stage and k != "recipe"
                 and token in registry.names(k)]
        if len(kinds) != 1:
            recipes = ", ".join(registry.names("recipe"))
            raise SystemExit(f"method {label!r}: {token!r} is not a recipe ({recipes}), nor the "
                             f"name of one loss, reweighter or corrector"
                             + (f" (it names a {' and a '.join(kinds)})" if kinds else ""))
        config = merge(config, {kinds[0]: {"name": token}})
    return config


def method_args(label: str) -> list[str]:
    """The ``noisyseg run`` options of a method label: one ``--set KEY=VALUE`` per setting of
    :func:`method_config` (for the benchmarks that run the command line)."""
    def leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in data.items():
            if isinstance(value, dict) and value:
                out += leaves(value, f"{prefix}{key}.")
            else:
                out += ["--set", f"{prefix}{key}={json.dumps(value)}"]
        return out

    return leaves(method_config(label))


def spec_config(preset: dict[str, Any], spec: Spec, run_dir: Path) -> dict[str, Any]:
    """The whole config of one run."""
    config = merge(preset["base"], method_config(spec.method))
    return merge(config, {
        "seed": spec.seed, "dataset": preset["datasets"][spec.dataset],
        "noise": {**NOISES[spec.noise], "rate": spec.rate},
        "output": {"dir": str(run_dir), "overwrite": True},
    })


def run_one(benchmark: str, preset_name: str, preset: dict[str, Any], spec: Spec, runs: Path,
            reuse: bool = False) -> dict[str, Any]:
    """Run ``spec`` unless the store holds it for this commit (``reuse``: for any commit), record
    it, and return its row. An interrupted run in ``runs`` goes on where it stopped."""
    import noisyseg
    from noisyseg.build import resolve_device
    from noisyseg.metrics import best_epoch_dice
    from noisyseg.recipes import is_recipe_dir

    run_dir = runs / spec.name
    config = spec_config(preset, spec, run_dir)
    key = store.digest(config)
    known = store.done(key) or (_any_commit(key) if reuse else None)
    if known is not None:
        return known
    start = time.perf_counter()
    if (run_dir / "checkpoint.pt").exists() or is_recipe_dir(run_dir):
        if not (run_dir / "metrics.json").exists():
            result = noisyseg.run(resume=run_dir, progress=False)
        else:
            result = noisyseg.run(config, progress=False)
    else:
        result = noisyseg.run(config, progress=False)
    last = result.history[-1].get("stage")  # a recipe: the best epoch of its last stage
    metrics = {**result.metrics,
               "best_dice": best_epoch_dice([h for h in result.history if h.get("stage") == last])}
    return store.record(
        benchmark=benchmark, preset=preset_name, dataset=spec.dataset, noise=spec.noise,
        noise_options=NOISES[spec.noise].get("options", {}), rate=spec.rate, method=spec.method,
        recipe=result.config.recipe.name, seed=spec.seed, metrics=metrics, config=config,
        device=str(resolve_device(result.config.device)),
        seconds=round(time.perf_counter() - start, 1))


def _any_commit(key: str) -> dict[str, Any] | None:
    found = store.rows(config_digest=key)
    return found[-1] if found else None


# --------------------------------------------------------------------------- recovery
def dice_by_seed(rows: list[dict[str, Any]], spec: Spec) -> dict[int, float]:
    """Seed -> final test Dice of the stored runs like ``spec`` (any seed; the newest row of a
    seed when several commits hold it)."""
    out: dict[int, float] = {}
    for r in rows:
        if (r["dataset"], r["noise"], r["method"]) == (spec.dataset, spec.noise, spec.method) and \
                math.isclose(r["rate"], spec.rate) and r["dice"] is not None:
            out[int(r["seed"])] = float(r["dice"])
    return out


def recovery(rows: list[dict[str, Any]], dataset: str, noise: str, rate: float,
             method: str) -> tuple[float, float, int]:
    """(recovery of the seed-mean Dice, sd of the per-seed recoveries, seeds) over the seeds
    that have clean, none and the method."""
    clean = dice_by_seed(rows, clean_spec(dataset, 0))
    none = dice_by_seed(rows, Spec(dataset, noise, rate, "none", 0))
    got = dice_by_seed(rows, Spec(dataset, noise, rate, method, 0))
    seeds = sorted(set(clean) & set(none) & set(got))
    if not seeds:
        return math.nan, math.nan, 0
    mean = lambda d: statistics.mean(d[s] for s in seeds)  # noqa: E731
    gap = mean(clean) - mean(none)
    rec = (mean(got) - mean(none)) / gap if gap else math.nan
    per_seed = [(got[s] - none[s]) / (clean[s] - none[s]) for s in seeds if clean[s] != none[s]]
    return rec, statistics.stdev(per_seed) if len(per_seed) > 1 else math.nan, len(seeds)


def mean_recovery(rows: list[dict[str, Any]], datasets: list[str], noise: str, rate: float,
                  method: str) -> float:
    """Recovery averaged over the datasets that have it (NaN when none has)."""
    vals = [recovery(rows, d, noise, rate, method)[0] for d in datasets]
    vals = [v for v in vals if v == v]
    return statistics.mean(vals) if vals else math.nan


def plan(datasets: list[str], noises: list[str], rates: list[float], seeds: list[int],
         methods: list[str], only_at: dict[str, list[float]] | None = None) -> list[Spec]:
    """Every run: the clean run once per dataset and seed, then per noise and rate ``none`` and
    each method (a method named in ``only_at`` only at those rates)."""
    only_at = only_at or {}
    runs: list[Spec] = []
    for dataset in datasets:
        for seed in seeds:
            if "clean" in methods:
                runs.append(clean_spec(dataset, seed))
            for noise in noises:
                for rate in rates:
                    for m in dict.fromkeys(["none", *[m for m in methods if m != "clean"]]):
                        if any(math.isclose(rate, r) for r in only_at.get(m, [rate])):
                            runs.append(Spec(dataset, noise, rate, m, seed))
    return runs


def run_all(benchmark: str, preset_name: str, specs: list[Spec], runs: Path,
            reuse: bool = False) -> list[dict[str, Any]]:
    """Run (or find in the store) every spec, one at a time, with a line of progress each."""
    preset = PRESETS[preset_name]
    start, rows = time.perf_counter(), []
    for i, spec in enumerate(specs, 1):
        row = run_one(benchmark, preset_name, preset, spec, runs, reuse)
        rows.append(row)
        print(f"[{i}/{len(specs)} {time.perf_counter() - start:.0f} s] {spec.name}: "
              f"Dice {row['dice']:.4f} ({row['seconds']:.0f} s, commit {row['git_commit'][:10]})",
              flush=True)
    return rows


def table(rows: list[dict[str, Any]], datasets: list[str], noises: list[str], rates: list[float],
          methods: list[str]) -> str:
    """Markdown: per dataset, noise and rate, each method's Dice (mean ± sd, seeds) and recovery."""
    lines = ["| dataset | noise | r | method | Dice (mean ± sd) | seeds | recovery (± sd) |",
             "|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for noise in noises:
            for rate in rates:
                for method in ["clean", *[m for m in methods if m != "clean"]]:
                    spec = clean_spec(dataset, 0) if method == "clean" else Spec(
                        dataset, noise, rate, method, 0)
                    d = list(dice_by_seed(rows, spec).values())
                    if not d:
                        continue
                    sd = f" ± {statistics.stdev(d):.4f}" if len(d) > 1 else ""
                    rec, rsd, _ = recovery(rows, dataset, noise, rate, method)
                    shown = "" if method in ("clean", "none") or rec != rec else \
                        f"{rec:+.2f}" + (f" ± {rsd:.2f}" if rsd == rsd else "")
                    lines.append(f"| {dataset} | {noise} | {rate:g} | {method} | "
                                 f"{statistics.mean(d):.4f}{sd} | {len(d)} | {shown} |")
    return "\n".join(lines)


def add_run_options(parser: argparse.ArgumentParser, benchmark: str,
                    methods: Sequence[str] | None = None, reuse: bool = True) -> None:
    """The options of a benchmark that trains runs of this protocol: --preset, --datasets,
    --seeds, --methods (with ``methods``, its default), --runs (default
    runs/benchmarks/<benchmark>-<preset>, see :func:`runs_dir`), --summary and --reuse."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "mni152"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    if methods is not None:
        parser.add_argument("--methods", nargs="+", default=list(methods),
                            help=f"default: {', '.join(methods)}")
    parser.add_argument("--runs", type=Path, default=None,
                        help=f"where the run directories go (default: runs/benchmarks/{benchmark}-<preset>)")
    parser.add_argument("--summary", action="store_true", help="only print the tables of the store")
    if reuse:
        parser.add_argument("--reuse", action="store_true",
                            help="take a run from the store whatever the commit that produced it")


def runs_dir(args: argparse.Namespace, benchmark: str) -> Path:
    """Where the runs of a benchmark with :func:`add_run_options` go."""
    return args.runs or Path("runs") / "benchmarks" / f"{benchmark}-{args.preset}"
