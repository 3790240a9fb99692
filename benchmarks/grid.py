"""The MCPM paper's experiments (Tables 1 and 2) on data that works offline: methods x noise x r x
seeds x datasets from one config file, with results as CSV, Markdown tables and PNG plots.

    python benchmarks/grid.py --preset cpu               # about an hour on a 2-core CPU
    python benchmarks/grid.py --preset paper             # the paper's protocol, for a GPU
    python benchmarks/grid.py --config my-grid.yaml      # your own grid (see benchmarks/grids/)
    python benchmarks/grid.py --preset cpu --summary     # tables and plots from the stored CSV
    python benchmarks/grid.py --preset cpu --redo mcpm   # run one method again (new options)
    python benchmarks/grid.py --executor local --workers 4     # 4 runs at a time on this machine
    python benchmarks/grid.py --executor ray --ray-address auto  # one Ray task per run

A grid that is stopped and started again skips the runs already in results.csv and resumes an
interrupted run from its checkpoint. A failed run is reported, written to failures.log, and does
not stop the grid. The summary's last line is
``mcpm_r04_dice=<x> none_r04_dice=<y> clean_dice=<z>`` (synthetic data, dilation noise).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

import noisyseg
from noisyseg.config import merge
from noisyseg.metrics import best_epoch_dice

HERE = Path(__file__).resolve().parent
#: method -> (config it adds, whether it depends on the noise and r)
METHODS: dict[str, tuple[dict[str, Any], bool]] = {
    "none": ({}, True),
    "meta_only": ({"train": {"meta_only": True}}, False),
    "clean": ({}, False),
    "mwnet": ({"reweighter": {"name": "mwnet"}}, True),
    "l2rw": ({"reweighter": {"name": "l2rw"}}, True),
    "mcpm": ({"reweighter": {"name": "mcpm"}}, True),
    "plc": ({"corrector": {"name": "plc"}}, True),
    "coteaching": ({"reweighter": {"name": "coteaching"}}, True),
    "mcpm+plc": ({"reweighter": {"name": "mcpm"}, "corrector": {"name": "plc"}}, True),
}
COLUMNS = ["dataset", "noise", "rate", "method", "seed", "dice", "miou", "hd95", "best_dice", "auroc",
           "label_error_initial", "label_error_final", "seconds", "run_dir"]


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    datasets: dict[str, dict[str, Any]]
    noises: list[str] = Field(min_length=1)
    rates: list[float] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_grid(path: Path) -> GridConfig:
    grid = GridConfig.model_validate(yaml.safe_load(path.read_text()))
    unknown = sorted(set(grid.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"{path}: unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if any(not 0 < r <= 1 for r in grid.rates):
        raise SystemExit(f"{path}: rates must lie in (0, 1]; the r = 0 run is the 'clean' method")
    return grid


def plan(grid: GridConfig) -> list[dict[str, Any]]:
    """Every run of the grid: r-independent methods once per dataset and seed."""
    runs = []
    for dataset in grid.datasets:
        for seed in grid.seeds:
            for method in grid.methods:
                if METHODS[method][1]:
                    runs += [{"dataset": dataset, "noise": noise, "rate": rate, "method": method,
                              "seed": seed} for noise in grid.noises for rate in grid.rates]
                else:
                    runs.append({"dataset": dataset, "noise": "none", "rate": 0.0, "method": method,
                                 "seed": seed})
    return runs


def run_id(spec: dict[str, Any]) -> str:
    return f"{spec['dataset']}-{spec['noise']}-r{spec['rate']:g}-{spec['method']}-s{spec['seed']}"


def run_config(grid: GridConfig, spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    config = merge(grid.base, METHODS[spec["method"]][0])
    config = merge(config, grid.method_options.get(spec["method"], {}))
    return merge(config, {
        "seed": spec["seed"],
        "dataset": grid.datasets[spec["dataset"]],
        "noise": {"name": spec["noise"], "rate": spec["rate"]},
        "output": {"dir": str(run_dir), "overwrite": True},
    })


def execute(grid: GridConfig, spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    if (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists():
        result = noisyseg.run(resume=run_dir, progress=False)
    else:
        result = noisyseg.run(run_config(grid, spec, run_dir), progress=False)
    m, last = result.metrics, result.history[-1]
    auroc = last.get("weight_auroc")
    return {
        **spec, "dice": m["dice"], "miou": m["iou"], "hd95": m["hd95"],
        "best_dice": best_epoch_dice(result.history),
        "auroc": "" if auroc is None or auroc != auroc or spec["method"] in ("none", "plc") else auroc,
        "label_error_initial": m["train_label_error_initial"],
        "label_error_final": m["train_label_error_final"],
        "seconds": round(time.perf_counter() - start, 1), "run_dir": str(run_dir),
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def forget(out: Path, methods: list[str]) -> int:
    """Drop the stored results of ``methods`` (to run them again after changing their options)."""
    results = out / "results.csv"
    rows = read_rows(results)
    keep = [r for r in rows if r["method"] not in methods]
    with open(results.with_suffix(".tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(keep)
    results.with_suffix(".tmp").replace(results)
    return len(rows) - len(keep)


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


def _execute_in_worker(grid_data: dict[str, Any], spec: dict[str, Any], run_dir: str,
                       threads: int) -> dict[str, Any]:
    _init_worker(threads)
    return execute(GridConfig.model_validate(grid_data), spec, Path(run_dir))


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
            if __name__ != "__main__":  # imported (tests): ship this module's code to the workers
                ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
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

    def submit(self, grid: GridConfig, spec: dict[str, Any], run_dir: Path) -> concurrent.futures.Future:
        if self.kind == "ray":
            return self.remote.remote(grid.model_dump(), spec, str(run_dir), self.threads).future()
        if isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
            return self.pool.submit(execute, grid, spec, run_dir)
        return self.pool.submit(_execute_in_worker, grid.model_dump(), spec, str(run_dir), self.threads)

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
    """Run what is missing from ``out/results.csv``; a failed run is retried once, then logged
    to failures.log, and never stops the grid. Returns (runs finished, runs failed)."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    done = {run_id({**r, "rate": float(r["rate"]), "seed": int(r["seed"])}) for r in read_rows(results)}
    todo = [s for s in plan(grid) if run_id(s) not in done]
    gpus: list[str] = []
    if executor == "local" and workers > 1 and _cuda_available():
        import torch

        asked, workers = workers, gpu_workers(workers, grid, torch.cuda.device_count())
        if workers < asked:
            print(f"one run per GPU: {workers} worker(s) instead of {asked}, each on its own GPU",
                  flush=True)
        gpus = visible_gpus(torch.cuda.device_count()) if workers > 1 else []
    print(f"grid '{grid.name}': {len(done)} runs done, {len(todo)} to go -> {out} "
          f"({executor}, {workers} worker(s))", flush=True)
    started, finished, failed = time.perf_counter(), 0, 0
    runner = _Executor(executor, workers, ray_address, gpus)
    tries: dict[str, int] = {}
    try:
        pending = {runner.submit(grid, s, out / "runs" / run_id(s)): s for s in todo}
        while pending:
            complete, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in complete:
                spec = pending.pop(future)
                name = run_id(spec)
                try:
                    row = future.result()
                except Exception as exc:  # one failed run must not stop the grid
                    tries[name] = tries.get(name, 0) + 1
                    if tries[name] < 2:
                        print(f"{name} failed ({exc}); retrying once", file=sys.stderr, flush=True)
                        pending[runner.submit(grid, spec, out / "runs" / name)] = spec
                        continue
                    failed += 1
                    with open(out / "failures.log", "a") as fh:
                        fh.write(f"{name}\n{''.join(traceback.format_exception(exc))}\n")
                    print(f"{name} FAILED twice: {exc}", file=sys.stderr, flush=True)
                    continue
                append_row(results, row)
                finished += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / (finished + failed) * (len(todo) - finished - failed)
                print(f"[{finished + failed}/{len(todo)}] {name} dice={row['dice']:.4f} "
                      f"({row['seconds']:.0f} s, eta {eta / 60:.0f} min)", flush=True)
    finally:
        runner.close()
    print(f"grid done in {(time.perf_counter() - started) / 60:.1f} min, {failed} failed", flush=True)
    return finished, failed


def append_row(results: Path, row: dict[str, Any], columns: list[str] = COLUMNS) -> None:
    """Add one row to the results CSV (with its header when the file is new). A file written
    before columns were added to ``columns`` is first rewritten with them, empty in its rows."""
    new = not results.exists() or results.stat().st_size == 0
    if not new:
        with open(results, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != columns:
            if not set(header) <= set(columns):
                raise ValueError(f"{results}: its columns {header} are not among {columns}; "
                                 "write these results to another file (--out)")
            old = read_rows(results)
            tmp = results.with_suffix(".tmp")
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, columns, restval="")
                writer.writeheader()
                writer.writerows(old)
            tmp.replace(results)
    with open(results, "a", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        if new:
            writer.writeheader()
        writer.writerow(row)


def aggregate(rows: list[dict[str, Any]], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(dataset, noise, rate, method) -> (mean, sample sd, n) over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r[metric] in ("", None):
            continue
        key = (r["dataset"], r["noise"], float(r["rate"]), r["method"])
        groups.setdefault(key, []).append(float(r[metric]))
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
            for k, v in groups.items()}


def _cell(stats: tuple[float, float, int] | None, digits: int) -> str:
    if stats is None:
        return "—"
    mean, sd, _ = stats
    return f"{mean:.{digits}f}" + ("" if sd != sd else f" ± {sd:.{digits}f}")


def _flat(agg: dict[tuple, Any], dataset: str, noise: str, rate: float, method: str) -> Any:
    if METHODS[method][1]:
        return agg.get((dataset, noise, rate, method))
    return agg.get((dataset, "none", 0.0, method))


def markdown(rows: list[dict[str, Any]], grid: GridConfig) -> str:
    lines = []
    for metric, title, digits in (("dice", "Dice", 3), ("miou", "mIoU", 3), ("hd95", "HD95 (px)", 2),
                                  ("auroc", "noise-detection AUROC of 1 - weight", 2)):
        agg = aggregate(rows, metric)
        for dataset in grid.datasets:
            for noise in grid.noises:
                methods = [m for m in grid.methods if metric != "auroc" or
                           any(k[3] == m and k[0] == dataset for k in agg)]
                if not methods:
                    continue
                lines += [f"**{title} — {dataset}, {noise}** (mean ± sd over seeds; clean and "
                          "meta_only do not depend on r)", "",
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
                style = "--" if not METHODS[m][1] else "-"
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
    """Tables and plots from ``out/results.csv``, or from the results committed with the
    repository (benchmarks/results/grid-<name>.csv) when this machine has not run the grid."""
    source = out / "results.csv"
    if not source.exists() and (HERE / "results" / f"grid-{grid.name}.csv").exists():
        source = HERE / "results" / f"grid-{grid.name}.csv"
    rows = read_rows(source)
    if not rows:
        raise SystemExit(f"no results in {out / 'results.csv'}; run the grid first")
    out.mkdir(parents=True, exist_ok=True)
    print(f"results from {source}")
    table = markdown(rows, grid)
    (out / "summary.md").write_text(table + "\n")
    plots = plot(rows, grid, out)
    seconds = sum(float(r["seconds"]) for r in rows)
    print(table)
    print(f"{len(rows)} of {len(plan(grid))} runs, {seconds / 60:.1f} min of training; "
          f"wrote {out / 'summary.md'} and {', '.join(str(p) for p in plots)}")
    agg = aggregate(rows, "dice")
    pick = lambda m, r: agg.get(("synthetic", "dilation", r, m), (math.nan,))[0]  # noqa: E731
    clean = agg.get(("synthetic", "none", 0.0, "clean"), (math.nan,))[0]
    print(f"mcpm_r04_dice={pick('mcpm', 0.4):.4f} none_r04_dice={pick('none', 0.4):.4f} "
          f"clean_dice={clean:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(p.stem for p in (HERE / "grids").glob("*.yaml")),
                       default="cpu")
    which.add_argument("--config", type=Path, help="a grid file like benchmarks/grids/cpu.yaml")
    parser.add_argument("--out", type=Path, help="default: runs/grid-<name>")
    parser.add_argument("--summary", action="store_true", help="only tables and plots from the CSV")
    parser.add_argument("--redo", nargs="+", default=[], choices=list(METHODS), metavar="METHOD",
                        help="run these methods again (drops their stored results first)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: this machine; ray: one Ray task per run")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at a time (local: processes; ray: sizes each task's CPU share)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    args = parser.parse_args()
    grid = load_grid(args.config or HERE / "grids" / f"{args.preset}.yaml")
    out = args.out or Path("runs") / f"grid-{grid.name}"
    if args.redo and (out / "results.csv").exists():
        print(f"dropped {forget(out, args.redo)} stored result(s) of {', '.join(args.redo)}")
    if not args.summary:
        run_grid(grid, out, args.executor, args.workers, args.ray_address)
    summary(grid, out)


if __name__ == "__main__":
    main()
