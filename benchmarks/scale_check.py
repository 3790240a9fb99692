"""Both ways out of one process, checked and timed on this machine.

    python benchmarks/scale_check.py                       # tiny grid, then 3 epochs of none and mcpm
    python benchmarks/scale_check.py --workers 4 --nproc 4 --methods mcpm --epochs 5

1. A tiny grid (none, mcpm, clean x 2 seeds, 96 32-px synthetic images, 6 epochs) with the
   local process pool and with Ray (``--workers`` each), each into a results store of its own
   (a temp file: the grid's runs are not kept): wall time, runs that finished, and whether both
   executors stored the same Dice for every run.
2. Processes stay in step: ``--nproc`` gloo processes train mcpm + plc and co-teaching for two
   epochs; the model, mask-net and peer parameters and the PLC label store must be identical in
   every process.
3. Speed: each of ``--methods`` (labels, as accuracy.py reads them) on the default data for
   ``--epochs``, in 1 process and in ``--nproc`` processes with the same global batch
   (``noisyseg run --nproc``): wall time, the training time per epoch summed (metrics.jsonl,
   evaluation excluded), and test Dice.

Last line: ``ray_runs_ok=<n>/<m> ddp_params_equal=<true|false>``. The results store (benchmark
``scale_check``) gets a row per executor of the grid (preset ``grid-<executor>-w<workers>``), per
method of the params check (preset ``params-nproc<n>``) and of the speed check (preset
``speed-e<epochs>-nproc<n>``), and the last line's (preset ``w<workers>-nproc<n>``, no method).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import grid as grid_module  # noqa: E402  (benchmarks/grid.py)
import protocol  # noqa: E402
import store  # noqa: E402

from noisyseg.config import merge  # noqa: E402
from noisyseg.lockstep import process_differences, run_in_processes  # noqa: E402
from noisyseg.testing import tiny_run_config  # noqa: E402

BENCHMARK = "scale_check"

TINY_GRID = {
    "name": "scale-check",
    "datasets": {"synthetic": {"name": "synthetic",
                               "options": {"size": 32, "n_train": 96, "n_meta": 8, "n_test": 32}}},
    "noises": ["dilation"],
    "rates": [0.4],
    "seeds": [0, 1],
    "methods": ["none", "mcpm", "clean"],
    "base": {"backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 2}},
             "train": {"epochs": 6, "batch_size": 8, "lr": 1e-2}, "output": {"figure_images": 0}},
}
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")  # timm, on import
COMMAND = [sys.executable, "-m", "noisyseg", "run", "-q"]
#: the params check's methods: everything learned in a process must be the same in all
PARAMS_METHODS = (
    "mcpm+plc+corrector.options.warmup_epochs=0+corrector.options.delta=0.6"
    "+corrector.options.delta_min=0.6",
    "coteaching",
)


def auto_device() -> str:
    """Where a run with the default device trains (the grid's and the speed check's)."""
    from noisyseg.build import resolve_device

    return str(resolve_device("auto"))


def grid_check(root: Path, workers: int, results: Path) -> tuple[int, int, bool | None]:
    """Tiny grid on the local pool and on Ray, each into a store of its own under ``root``
    (their workers inherit it); returns (Ray runs finished, runs planned, whether both stored
    the same Dice for every run: None unless both ran)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(TINY_GRID))
    grid = grid_module.load_grid(path)
    planned = len(grid_module.plan(grid))
    dice: dict[str, dict[tuple, float]] = {}
    ray_ok = 0
    for executor in ("local", "ray"):
        own = root / executor / "results.sqlite"
        os.environ[store.STORE_ENV] = str(own)
        start = time.perf_counter()
        try:
            finished, failed = grid_module.run_grid(grid, root / executor, executor, workers)
        except SystemExit as exc:  # Ray is not installed
            print(f"grid on {executor}: not run ({exc})")
            continue
        finally:
            os.environ[store.STORE_ENV] = str(results)
        seconds = time.perf_counter() - start
        dice[executor] = {(r["dataset"], r["noise"], r["rate"], r["method"], r["seed"]): r["dice"]
                          for r in store.rows(own)}
        print(f"grid on {executor} ({workers} workers): {finished}/{planned} runs ok, {failed} "
              f"failed, {seconds:.1f} s, {planned / seconds * 60:.1f} runs/min")
        store.record(benchmark=BENCHMARK, preset=f"grid-{executor}-w{workers}", path=results,
                     device=auto_device(), seconds=round(seconds, 1), metrics={
                         "finished": finished, "failed": failed, "planned": planned,
                         "seconds": seconds, "runs_per_min": planned / seconds * 60})
        if executor == "ray":
            ray_ok = finished
    same = dice["local"] == dice["ray"] if len(dice) == 2 else None
    if same is not None:
        print(f"local and ray wrote the same Dice for every run: {same}")
    return ray_ok, planned, same


def params_check(root: Path, nproc: int) -> bool:
    """mcpm + plc and co-teaching in ``nproc`` processes: everything learned (the model, the
    mask net or peer with its optimiser, the label store) is the same in all."""
    all_equal = True
    for i, label in enumerate(PARAMS_METHODS):
        method = protocol.method_config(label)
        config = tiny_run_config(**merge(method, {"train": {"epochs": 2},
                                                  "output": {"dir": str(root / f"method{i}")}}))
        states = run_in_processes(nproc, config)
        differ = process_differences(states)
        changed = sum(h["labels_changed"] for h in states[0]["history"])
        plc = method.get("corrector", {}).get("name") == "plc"
        print(f"{label} in {nproc} processes, identical: "
              + ", ".join(f"{part} {not names}" for part, names in differ.items())
              + f" (reweighter state: {', '.join(states[0]['reweighter'])}"
              + (f"; plc changed {changed:.0f} labels)" if plc else ")"))
        equal = not any(differ.values())
        all_equal = all_equal and equal
        store.record(benchmark=BENCHMARK, preset=f"params-nproc{nproc}", dataset="synthetic",
                     method=label, device="cpu", metrics={
                         "identical": equal, "differ": {k: list(v) for k, v in differ.items()},
                         "labels_changed": changed})
    return all_equal


def speed_check(root: Path, methods: list[str], epochs: int, nproc: int) -> None:
    commands = {method: protocol.method_args(method) for method in methods}  # bad labels fail here
    for i, method in enumerate(methods):
        line = [f"{method}, {epochs} epochs, default data:"]
        figures: dict[str, float] = {}
        for n in (1, nproc):
            out = root / f"method{i}-{n}"
            args = [*commands[method], "--epochs", str(epochs), "--out", str(out)]
            start = time.perf_counter()
            subprocess.run([*COMMAND, *args, *(["--nproc", str(n)] if n > 1 else [])], check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            final = json.loads((out / "metrics.json").read_text())
            line.append(f"{n} process(es) {wall:.1f} s wall, {final['seconds']:.1f} s training, "
                        f"Dice {final['dice']:.4f};")
            which = "1proc" if n == 1 else "nproc"
            figures |= {f"wall_s_{which}": wall, f"train_s_{which}": final["seconds"],
                        f"dice_{which}": final["dice"]}
            if n == 1:
                base_wall, base_train = wall, final["seconds"]
        line.append(f"speed-up {base_wall / wall:.2f}x wall, {base_train / final['seconds']:.2f}x "
                    "training")
        print(" ".join(line), flush=True)
        store.record(benchmark=BENCHMARK, preset=f"speed-e{epochs}-nproc{nproc}", dataset="synthetic",
                     method=method, device=auto_device(), metrics={
                         **figures, "nproc": nproc, "speedup_wall": base_wall / wall,
                         "speedup_train": base_train / final["seconds"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="grid workers (pool and Ray)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--methods", nargs="+", default=["none", "mcpm"],
                        help="the speed check's, labels as accuracy.py reads them")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true", help="only the grid and params checks")
    args = parser.parse_args()
    results = store.store_path()  # the grid check's runs go to stores of their own
    with tempfile.TemporaryDirectory(prefix="noisyseg-scale-") as tmp:
        root = Path(tmp)
        ray_ok, planned, same = grid_check(root / "grid", args.workers, results)
        equal = params_check(root / "params", args.nproc)
        if not args.skip_speed:
            speed_check(root / "speed", args.methods, args.epochs, args.nproc)
    print(f"ray_runs_ok={ray_ok}/{planned} ddp_params_equal={str(equal).lower()}")
    store.record(benchmark=BENCHMARK, preset=f"w{args.workers}-nproc{args.nproc}",
                 device=auto_device(), note="the last line", metrics={
                     "ray_runs_ok": ray_ok, "runs_planned": planned, "ddp_params_equal": equal,
                     "local_ray_same_dice": same})


if __name__ == "__main__":
    main()
