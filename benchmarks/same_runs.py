"""Do two checkouts train the same? Runs a few small, fixed configurations (none, mcpm,
l2rw + relabel, the finetune_cal recipe) and writes a fingerprint of each: its final metrics
and a sha256 of every tensor of its checkpoints. Run it before and after a change that should
not change behaviour (a refactor), then compare.

    python benchmarks/same_runs.py --out /tmp/before.json          # on the old checkout
    python benchmarks/same_runs.py --out /tmp/after.json --against /tmp/before.json

Last line: ``identical=<true|false> runs=<n>`` (with --against; without it ``runs=<n>``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import store

import noisyseg
import noisyseg.config
from noisyseg.rundir import TIMINGS

SMALL = {
    "device": "cpu", "seed": 3,
    "dataset": {"name": "synthetic", "options": {"size": 32, "n_train": 64, "n_meta": 16,
                                                 "n_test": 16, "max_radius": 5.0}},
    "backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
    "train": {"epochs": 3, "batch_size": 8}, "output": {"figure_images": 0},
}
RUNS = {
    "none": {},
    # mcpm as it was before its defaults changed (meta_lr 0.01, meta images trained on): the
    # comparison is of the code, which must not change what a given configuration does
    "mcpm": {"reweighter": {"name": "mcpm", "options": {"meta_lr": 1e-3}},
             "train": {"train_on_meta": False}},
    "l2rw+relabel": {"reweighter": {"name": "l2rw"},
                     "corrector": {"name": "relabel", "options": {"warmup_epochs": 1}}},
    "finetune_cal": {"recipe": {"name": "finetune_cal"}},
}


def tensor_digest(value: Any, digest: Any) -> None:
    """Feed every tensor (and plain value) of a checkpoint into ``digest``, in key order."""
    import torch

    if isinstance(value, dict):
        for key in sorted(value, key=str):
            if key in ("config", "history", "rng"):  # paths and timings; the RNG is in the weights
                continue
            digest.update(str(key).encode())
            tensor_digest(value[key], digest)
    elif isinstance(value, (list, tuple)):
        for item in value:
            tensor_digest(item, digest)
    elif isinstance(value, torch.Tensor):
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(repr(value).encode())


def fingerprint(run_dir: Path) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for checkpoint in sorted(run_dir.rglob("checkpoint.pt")):
        digest = hashlib.sha256()
        tensor_digest(torch.load(checkpoint, map_location="cpu", weights_only=False), digest)
        out[str(checkpoint.relative_to(run_dir))] = digest.hexdigest()
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def clean(m: Any) -> Any:
        if isinstance(m, dict):
            return {k: clean(v) for k, v in m.items() if k not in TIMINGS}
        return None if isinstance(m, float) and m != m else m

    return {"metrics": clean(metrics), "checkpoints": out}


def _flat(metrics: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(metrics, dict):
        return {prefix.rstrip("."): metrics}
    return {k: v for key, value in metrics.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _compare(name: str, mine: dict[str, Any], theirs: dict[str, Any] | None) -> bool:
    """Same checkpoints and the same value for every metric both runs report; metrics that
    only one side reports (a metric added by the change) are listed, not counted as different."""
    if theirs is None:
        print(f"{name}: not in the other checkout's fingerprints")
        return False
    a, b = _flat(mine["metrics"]), _flat(theirs["metrics"])
    differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    ok = not differ and mine["checkpoints"] == theirs["checkpoints"]
    print(f"{name}: {'identical' if ok else 'DIFFERENT'} ({len(a.keys() & b.keys())} metrics and "
          f"{len(mine['checkpoints'])} checkpoints compared"
          + (f"; differ: {', '.join(differ)}" if differ else "")
          + (f"; only here: {', '.join(sorted(a.keys() - b.keys()))}" if a.keys() - b.keys() else "")
          + (f"; only there: {', '.join(sorted(b.keys() - a.keys()))}" if b.keys() - a.keys() else "")
          + ")")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="write the fingerprints here")
    parser.add_argument("--against", type=Path, help="fingerprints of the other checkout")
    args = parser.parse_args()
    prints = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in RUNS.items():
            config = noisyseg.config.merge(SMALL, {**extra, "output": {"dir": f"{tmp}/{name}"}})
            noisyseg.run(config, progress=False)
            prints[name] = fingerprint(Path(tmp) / name)
            print(f"{name}: Dice {prints[name]['metrics']['dice']:.6f}", flush=True)
    args.out.write_text(json.dumps(prints, indent=1, sort_keys=True))
    if args.against is None:
        print(f"runs={len(prints)}")
        return
    other = json.loads(args.against.read_text())
    same = {name: _compare(name, prints[name], other.get(name)) for name in prints}
    store.record(benchmark="same_runs", metrics={"identical": all(same.values()), **same,
                 "against": str(args.against)}, device="cpu")
    print(f"identical={str(all(same.values())).lower()} runs={len(prints)}")


if __name__ == "__main__":
    sys.exit(main())
