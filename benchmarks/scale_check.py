"""Both ways out of one process, checked and timed on this machine.

    python benchmarks/scale_check.py                       # tiny grid, then 3 epochs of none and mcpm
    python benchmarks/scale_check.py --workers 4 --nproc 4 --methods mcpm --epochs 5

1. A tiny grid (none, mcpm, clean x 2 seeds, 96 32-px synthetic images, 6 epochs) with the local process pool
   and with Ray (``--workers`` each): wall time, runs that finished, and whether both executors
   wrote the same Dice for every run.
2. Processes stay in step: ``--nproc`` gloo processes train mcpm + plc and co-teaching for two
   epochs; the model, mask-net and peer parameters and the PLC label store must be identical in
   every process.
3. Speed: each of ``--methods`` on the default data for ``--epochs``, in 1 process and in
   ``--nproc`` processes with the same global batch (``noisyseg run --nproc``): wall time, the
   training time per epoch summed (metrics.jsonl, evaluation excluded), and test Dice.

Last line: ``ray_runs_ok=<n>/<m> ddp_params_equal=<true|false>``.
"""

from __future__ import annotations

import argparse
import json
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

from noisyseg.lockstep import process_differences, run_in_processes  # noqa: E402
from noisyseg.testing import tiny_run_config  # noqa: E402

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


def grid_check(root: Path, workers: int) -> tuple[int, int]:
    """Tiny grid on the local pool and on Ray; returns (Ray runs finished, runs planned)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(TINY_GRID))
    grid = grid_module.load_grid(path)
    planned = len(grid_module.plan(grid))
    dice: dict[str, dict[str, str]] = {}
    ray_ok = 0
    for executor in ("local", "ray"):
        start = time.perf_counter()
        try:
            finished, failed = grid_module.run_grid(grid, root / executor, executor, workers)
        except SystemExit as exc:  # Ray is not installed
            print(f"grid on {executor}: not run ({exc})")
            continue
        seconds = time.perf_counter() - start
        rows = grid_module.read_rows(root / executor / "results.csv")
        dice[executor] = {grid_module.run_id({**r, "rate": float(r["rate"]), "seed": int(r["seed"])}):
                          r["dice"] for r in rows}
        print(f"grid on {executor} ({workers} workers): {finished}/{planned} runs ok, {failed} "
              f"failed, {seconds:.1f} s, {planned / seconds * 60:.1f} runs/min")
        if executor == "ray":
            ray_ok = finished
    if len(dice) == 2:
        print(f"local and ray wrote the same Dice for every run: {dice['local'] == dice['ray']}")
    return ray_ok, planned


def params_check(root: Path, nproc: int) -> bool:
    """mcpm + plc and co-teaching in ``nproc`` processes: everything learned (the model, the
    mask net or peer with its optimiser, the label store) is the same in all."""
    plc = {"name": "plc", "options": {"warmup_epochs": 0, "delta": 0.6, "delta_min": 0.6}}
    runs = {
        "mcpm+plc": tiny_run_config(reweighter={"name": "mcpm"}, corrector=plc, train={"epochs": 2},
                                    output={"dir": str(root / "mcpm-plc")}),
        "coteaching": tiny_run_config(reweighter={"name": "coteaching"}, train={"epochs": 2},
                                      output={"dir": str(root / "coteaching")}),
    }
    all_equal = True
    for name, config in runs.items():
        states = run_in_processes(nproc, config)
        differ = process_differences(states)
        changed = sum(h["labels_changed"] for h in states[0]["history"])
        print(f"{name} in {nproc} processes, identical: "
              + ", ".join(f"{part} {not names}" for part, names in differ.items())
              + f" (reweighter state: {', '.join(states[0]['reweighter'])}"
              + (f"; plc changed {changed:.0f} labels)" if name == "mcpm+plc" else ")"))
        all_equal = all_equal and not any(differ.values())
    return all_equal


def speed_check(root: Path, methods: list[str], epochs: int, nproc: int) -> None:
    for method in methods:
        line = [f"{method}, {epochs} epochs, default data:"]
        for n in (1, nproc):
            out = root / f"{method}-{n}"
            args = ["--reweighter", method, "--epochs", str(epochs), "--out", str(out)]
            start = time.perf_counter()
            subprocess.run([*COMMAND, *args, *(["--nproc", str(n)] if n > 1 else [])], check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            final = json.loads((out / "metrics.json").read_text())
            line.append(f"{n} process(es) {wall:.1f} s wall, {final['seconds']:.1f} s training, "
                        f"Dice {final['dice']:.4f};")
            if n == 1:
                base_wall, base_train = wall, final["seconds"]
        line.append(f"speed-up {base_wall / wall:.2f}x wall, {base_train / final['seconds']:.2f}x "
                    "training")
        print(" ".join(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="grid workers (pool and Ray)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--methods", nargs="+", default=["none", "mcpm"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true", help="only the grid and params checks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="noisyseg-scale-") as tmp:
        root = Path(tmp)
        ray_ok, planned = grid_check(root / "grid", args.workers)
        equal = params_check(root / "params", args.nproc)
        if not args.skip_speed:
            speed_check(root / "speed", args.methods, args.epochs, args.nproc)
    print(f"ray_runs_ok={ray_ok}/{planned} ddp_params_equal={str(equal).lower()}")


if __name__ == "__main__":
    main()
