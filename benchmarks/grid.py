"""The MCPM paper's experiments (Tables 1 and 2) on data that works offline: methods x noise x r x
seeds x datasets from one config file, with Markdown tables and PNG plots from the results store.

    python benchmarks/grid.py --preset cpu               # about an hour on a 2-core CPU
    python benchmarks/grid.py --preset paper             # the paper's protocol, for a GPU
    python benchmarks/grid.py --config my-grid.yaml      # your own grid (see benchmarks/grids/)
    python benchmarks/grid.py --preset cpu --summary     # tables and plots from the store
    python benchmarks/grid.py --executor local --workers 4     # 4 runs at a time on this machine
    python benchmarks/grid.py --executor ray --ray-address auto  # one Ray task per run

Methods are labels as every benchmark reads them (benchmarks/protocol.py): a recipe, a
component's name (``mcpm``, ``mcpm+plc``), settings after ``+`` (``plc+corrector.options.
warmup_epochs=2``), ``clean`` for the clean-label ceiling. A method that trains on the clean meta
images alone (``train.meta_only=true``) and ``clean`` run once per dataset and seed, whatever the
noise and r. Every run goes to the results store (benchmarks/results/results.sqlite), with
``grid-<name>`` as its preset; a grid that is stopped and started again skips the runs the store
holds for this commit and resumes an interrupted run from its checkpoint. A failed run is
reported, written to failures.log, and does not stop the grid. The summary's last line is
``mcpm_r04_dice=<x> none_r04_dice=<y> clean_dice=<z>`` (synthetic data, dilation noise).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import protocol
import store
import yaml
from protocol import Spec
from pydantic import BaseModel, ConfigDict, Field

HERE = Path(__file__).resolve().parent
BENCHMARK = "grid"
#: (title, key in the stored metrics, digits) of the summary's tables
METRICS = (("Dice", "dice", 3), ("mIoU", "iou", 3), ("HD95 (px)", "hd95", 2),
           ("noise-detection AUROC of 1 - weight", "weight_auroc", 2))


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    datasets: dict[str, dict[str, Any]]
    noises: list[str] = Field(min_length=1)
    rates: list[float] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)

    @property
    def preset(self) -> dict[str, Any]:
        """The grid as a preset of benchmarks/protocol.py: its datasets and base config."""
        return {"datasets": self.datasets, "base": self.base}


def load_grid(path: Path) -> GridConfig:
    grid = GridConfig.model_validate(yaml.safe_load(path.read_text()))
    for method in grid.methods:  # an unknown name fails here, naming the choices
        if method != "clean":
            protocol.method_config(method)
    unknown = sorted(set(grid.noises) - set(protocol.NOISES))
    if unknown:
        raise SystemExit(f"{path}: unknown noise(s) {unknown}; choose from {sorted(protocol.NOISES)}")
    if any(not 0 < r <= 1 for r in grid.rates):
        raise SystemExit(f"{path}: rates must lie in (0, 1]; the r = 0 run is the 'clean' method")
    return grid


def independent_of_noise(method: str) -> bool:
    """``clean``, and a method that trains on the clean meta images alone: one run per dataset
    and seed, whatever the noise and r."""
    return method == "clean" or bool(
        protocol.method_config(method).get("train", {}).get("meta_only"))


def plan(grid: GridConfig) -> list[Spec]:
    """Every run of the grid: noise-independent methods once per dataset and seed."""
    runs = []
    for dataset in grid.datasets:
        for seed in grid.seeds:
            for method in grid.methods:
                if method == "clean":
                    runs.append(protocol.clean_spec(dataset, seed))
                elif independent_of_noise(method):
                    runs.append(Spec(dataset, "none", 0.0, method, seed))
                else:
                    runs += [Spec(dataset, noise, rate, method, seed)
                             for noise in grid.noises for rate in grid.rates]
    return runs


def execute(grid: GridConfig, spec: Spec, runs: Path) -> dict[str, Any]:
    """One run (or its row in the store): the row."""
    return protocol.run_one(BENCHMARK, f"grid-{grid.name}", grid.preset, spec, runs)


def stored(grid: GridConfig) -> list[dict[str, Any]]:
    """The store's runs of this grid (preset ``grid-<name>``)."""
    return store.rows(preset=f"grid-{grid.name}", seed=grid.seeds)


def _init_worker(threads: int, gpus: Any = None) -> None:
    """A worker process shares the CPU cores fairly with the others; with ``gpus`` (a queue of
    the parent's visible GPUs, as CUDA_VISIBLE_DEVICES names them) it takes one GPU of its own,
    before torch first looks at CUDA."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    import torch

    torch.set_num_threads(threads)


def gpu_workers(workers: int, grid: GridConfig, gpu_count: int) -> int:
    """How many local workers to start: one run per GPU when the grid's runs go to CUDA (several
    runs on one GPU each ran about 8x slower than alone: no gain in throughput); one when the
    grid names a single GPU (``cuda:1``)."""
    device = str(grid.base.get("device", "auto"))
    if gpu_count == 0 or device == "cpu":
        return workers
    return 1 if ":" in device else min(workers, gpu_count)


def visible_gpus(count: int) -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES names them (numbers or UUIDs)."""
    names = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return names[:count] if names else [str(i) for i in range(count)]


def _execute_in_worker(grid_data: dict[str, Any], spec: Spec, runs: str,
                       threads: int) -> dict[str, Any]:
    _init_worker(threads)
    return execute(GridConfig.model_validate(grid_data), spec, Path(runs))


class _Executor:
    """Runs grid runs somewhere and hands back concurrent.futures.Future objects.

    local, 1 worker: one thread of this process (runs one after the other, as before);
    local, n workers: a pool of n processes, each with cores / n torch threads;
    ray: one Ray task per run (num_cpus = threads, num_gpus = 1 when CUDA is there), on a local
    Ray instance or on the cluster at ``ray_address``.
    """

    def __init__(self, kind: str, workers: int, ray_address: str | None,
                 gpus: list[str] | None = None) -> None:
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // workers)
        self.kind = kind
        if kind == "ray":
            try:
                import ray
            except ImportError:
                raise SystemExit(
                    "the ray executor needs Ray: pip install -e '.[ray]' (in the noisyseg checkout)"
                ) from None
            ray.init(address=ray_address, num_cpus=None if ray_address else cores,
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
            for module in (sys.modules[__name__], protocol, store):  # the workers import none
                if module.__name__ != "__main__":  # of benchmarks/: ship their code
                    ray.cloudpickle.register_pickle_by_value(module)
            gpus = 1 if _cuda_available() else 0
            self.remote = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_retries=0)(
                _execute_in_worker)
        elif workers > 1:
            if str(HERE) not in sys.path:  # spawned workers import this module by name from here
                sys.path.append(str(HERE))
            context = multiprocessing.get_context("spawn")
            queue = None
            if gpus:  # worker i takes the i-th visible GPU
                queue = context.Queue()
                for gpu in gpus[:workers]:
                    queue.put(gpu)
            self.pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker,
                initargs=(self.threads, queue))
        else:
            self.pool = concurrent.futures.ThreadPoolExecutor(1)

    def submit(self, grid: GridConfig, spec: Spec, runs: Path) -> concurrent.futures.Future:
        if self.kind == "ray":
            return self.remote.remote(grid.model_dump(), spec, str(runs), self.threads).future()
        if isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
            return self.pool.submit(execute, grid, spec, runs)
        return self.pool.submit(_execute_in_worker, grid.model_dump(), spec, str(runs), self.threads)

    def close(self) -> None:
        if self.kind == "ray":
            import ray

            ray.shutdown()
        else:
            self.pool.shutdown(cancel_futures=True)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_grid(grid: GridConfig, out: Path, executor: str = "local", workers: int = 1,
             ray_address: str | None = None) -> tuple[int, int]:
    """Run what the store does not hold for this commit (run directories under ``out``); a
    failed run is retried once, then logged to failures.log, and never stops the grid. Returns
    (runs finished, runs failed)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    specs = plan(grid)
    todo = [s for s in specs
            if store.done(store.digest(protocol.spec_config(grid.preset, s, runs / s.name))) is None]
    gpus: list[str] = []
    if executor == "local" and workers > 1 and _cuda_available():
        import torch

        asked, workers = workers, gpu_workers(workers, grid, torch.cuda.device_count())
        if workers < asked:
            print(f"one run per GPU: {workers} worker(s) instead of {asked}, each on its own GPU",
                  flush=True)
        gpus = visible_gpus(torch.cuda.device_count()) if workers > 1 else []
    print(f"grid '{grid.name}': {len(specs) - len(todo)} runs done, {len(todo)} to go -> "
          f"{store.store_path()} ({executor}, {workers} worker(s))", flush=True)
    started, finished, failed = time.perf_counter(), 0, 0
    runner = _Executor(executor, workers, ray_address, gpus)
    tries: dict[str, int] = {}
    try:
        pending = {runner.submit(grid, s, runs): s for s in todo}
        while pending:
            complete, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in complete:
                spec = pending.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # one failed run must not stop the grid
                    tries[spec.name] = tries.get(spec.name, 0) + 1
                    if tries[spec.name] < 2:
                        print(f"{spec.name} failed ({exc}); retrying once", file=sys.stderr, flush=True)
                        pending[runner.submit(grid, spec, runs)] = spec
                        continue
                    failed += 1
                    with open(out / "failures.log", "a") as fh:
                        fh.write(f"{spec.name}\n{''.join(traceback.format_exception(exc))}\n")
                    print(f"{spec.name} FAILED twice: {exc}", file=sys.stderr, flush=True)
                    continue
                finished += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / (finished + failed) * (len(todo) - finished - failed)
                print(f"[{finished + failed}/{len(todo)}] {spec.name} dice={row['dice']:.4f} "
                      f"({row['seconds']:.0f} s, eta {eta / 60:.0f} min)", flush=True)
    finally:
        runner.close()
    print(f"grid done in {(time.perf_counter() - started) / 60:.1f} min, {failed} failed", flush=True)
    return finished, failed


def aggregate(rows: list[dict[str, Any]], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(dataset, noise, rate, method) -> (mean, sample sd, n) over seeds (the newest row of each
    seed); a metric a run does not have (the AUROC of plain training) is left out."""
    newest: dict[tuple, float] = {}
    for r in rows:
        value = r["metrics"].get(metric)
        if value is None or (metric == "weight_auroc" and r["method"] in ("none", "plc")):
            continue
        newest[(r["dataset"], r["noise"], float(r["rate"]), r["method"], r["seed"])] = float(value)
    groups: dict[tuple, list[float]] = {}
    for (*key, _seed), value in newest.items():
        groups.setdefault(tuple(key), []).append(value)
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
            for k, v in groups.items()}


def _cell(stats: tuple[float, float, int] | None, digits: int) -> str:
    if stats is None:
        return "—"
    mean, sd, _ = stats
    return f"{mean:.{digits}f}" + ("" if sd != sd else f" ± {sd:.{digits}f}")


def _flat(agg: dict[tuple, Any], dataset: str, noise: str, rate: float, method: str) -> Any:
    if method == "clean":
        return agg.get((dataset, "none", 0.0, "none"))
    if independent_of_noise(method):
        return agg.get((dataset, "none", 0.0, method))
    return agg.get((dataset, noise, rate, method))


def markdown(rows: list[dict[str, Any]], grid: GridConfig) -> str:
    lines = []
    for title, metric, digits in METRICS:
        agg = aggregate(rows, metric)
        for dataset in grid.datasets:
            for noise in grid.noises:
                methods = [m for m in grid.methods if metric != "weight_auroc" or
                           any(k[3] == m and k[0] == dataset for k in agg)]
                if not methods:
                    continue
                lines += [f"**{title} — {dataset}, {noise}** (mean ± sd over seeds; clean and "
                          "methods on the meta images alone do not depend on r)", "",
                          "| method | " + " | ".join(f"r = {r:g}" for r in grid.rates) + " |",
                          "|---|" + "---|" * len(grid.rates)]
                for m in methods:
                    cells = [_cell(_flat(agg, dataset, noise, r, m), digits) for r in grid.rates]
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], grid: GridConfig, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows, "dice")
    paths = []
    for dataset in grid.datasets:
        fig, axes = plt.subplots(1, len(grid.noises), figsize=(5.5 * len(grid.noises), 4.2), squeeze=False)
        for ax, noise in zip(axes[0], grid.noises, strict=True):
            for m in grid.methods:
                points = [(r, _flat(agg, dataset, noise, r, m)) for r in grid.rates]
                points = [(r, s) for r, s in points if s is not None]
                if not points:
                    continue
                xs, means = [p[0] for p in points], [p[1][0] for p in points]
                sds = [0.0 if p[1][1] != p[1][1] else p[1][1] for p in points]
                style = "--" if independent_of_noise(m) else "-"
                ax.errorbar(xs, means, yerr=sds, ls=style, marker="o", ms=3, capsize=2, label=m)
            ax.set_title(f"{dataset}, {noise} noise")
            ax.set_xlabel("r (fraction of training masks corrupted)")
            ax.set_ylabel("test Dice")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8, loc="lower left")
        fig.suptitle(f"Dice vs r per method — grid '{grid.name}' (dashed: independent of r)")
        fig.tight_layout()
        path = out / f"dice_vs_r_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def summary(grid: GridConfig, out: Path) -> None:
    """Tables and plots from the store's runs of this grid."""
    rows = stored(grid)
    if not rows:
        raise SystemExit(f"no results of grid '{grid.name}' in {store.store_path()}; run the grid first")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, grid)
    (out / "summary.md").write_text(table + "\n")
    plots = plot(rows, grid, out)
    seconds = sum(float(r["seconds"] or 0) for r in rows)
    commits = sorted({r["git_commit"][:10] for r in rows})
    print(table)
    print(f"{len(rows)} stored runs of {len(plan(grid))} (commits {', '.join(commits)}), "
          f"{seconds / 60:.1f} min of training; wrote {out / 'summary.md'} and "
          f"{', '.join(str(p) for p in plots)}")
    agg = aggregate(rows, "dice")
    pick = lambda m, r: agg.get(("synthetic", "dilation", r, m), (math.nan,))[0]  # noqa: E731
    clean = agg.get(("synthetic", "none", 0.0, "none"), (math.nan,))[0]
    print(f"mcpm_r04_dice={pick('mcpm', 0.4):.4f} none_r04_dice={pick('none', 0.4):.4f} "
          f"clean_dice={clean:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(p.stem for p in (HERE / "grids").glob("*.yaml")),
                       default="cpu")
    which.add_argument("--config", type=Path, help="a grid file like benchmarks/grids/cpu.yaml")
    parser.add_argument("--out", type=Path, help="run directories and summary (default: runs/grid-<name>)")
    parser.add_argument("--summary", action="store_true", help="only tables and plots from the store")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: this machine; ray: one Ray task per run")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at a time (local: processes; ray: sizes each task's CPU share)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    args = parser.parse_args()
    grid = load_grid(args.config or HERE / "grids" / f"{args.preset}.yaml")
    out = args.out or Path("runs") / f"grid-{grid.name}"
    if not args.summary:
        run_grid(grid, out, args.executor, args.workers, args.ray_address)
    summary(grid, out)


if __name__ == "__main__":
    main()
